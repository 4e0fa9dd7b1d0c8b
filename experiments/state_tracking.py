"""State tracking (why FlashRNN's nonlinear RNNs matter): the running product of a word over a
finite group, accuracy against length, for the nonlinear RNNs beside attention and the linear
recurrences.

Run:  jaxlm sweep experiments/state_tracking.py      (CPU preset: tiny; see RESULTS.md)
      jaxlm sweep experiments/state_tracking.py --set data.state_tracking.group=s5
Trained on words of length 32 (parity by default; ``group=cyclic|s3|s5`` for modular counting
and permutation composition), probed on held-out words at every length up to 32
(``accuracy@L``) and beyond it at 64 and 128. One layer of width 32, no MLP, 600 steps. The
papers' finding (FlashRNN, xLSTM): LSTM, GRU and sLSTM track the state at every length;
attention and the linear recurrences (Mamba-2, DeltaNet with its delta rule's positive
eigenvalues) do not extrapolate. The ``full`` preset trains 2 layers of width 128 longer.
"""

from jaxlm.config import Config, ProbeConfig, TrainConfig
from jaxlm.data import DataConfig, StateTrackingConfig
from jaxlm.layers import AttentionConfig, DeltaNetConfig, Mamba2Config
from jaxlm.models import ModelConfig
from jaxlm.runner import grid

PRESETS = {"full": {"model.d_model": 128, "model.n_layers": 2, "train.steps": 20_000,
                    "data.state_tracking.seq_len": 64, "probe.lengths": "128,256,512"}}


def config() -> Config:
    return Config(
        name="state_tracking",
        model=ModelConfig(vocab_size=120, d_model=32, n_layers=1, pattern="lstm",
                          attention=AttentionConfig(n_heads=2),
                          deltanet=DeltaNetConfig(n_heads=2, chunk_size=16),
                          mamba2=Mamba2Config(head_dim=16, chunk_size=16)),
        data=DataConfig(task="state_tracking",
                        state_tracking=StateTrackingConfig(group="parity", seq_len=32)),
        train=TrainConfig(steps=600, batch_size=32, learning_rate=3e-3, warmup_steps=50,
                          log_every=100, tensorboard=False),
        probe=ProbeConfig(num_examples=500, lengths="64,128"),
    )


def sweep() -> list[dict]:
    return grid({"model.pattern": ["lstm", "gru", "slstm", "attention", "mamba2", "deltanet"]})
