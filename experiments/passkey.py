"""Passkey retrieval against context length and state size (Stuffed Mamba, token-level
analogue): a 5-digit key hidden at a random depth in repeating filler.

Run:  jaxlm sweep experiments/passkey.py     (CPU, about 15 minutes)
Mamba-2 at state sizes 8 and 32 and attention, trained and tested at lengths 64, 128, 256. The
finding: at a fixed state size the recurrent model's accuracy falls with length; a bigger state
holds on longer; attention does not depend on length.
"""

from jaxlm.config import Config, ProbeConfig, TrainConfig
from jaxlm.data import DataConfig, PasskeyConfig
from jaxlm.layers import AttentionConfig, Mamba2Config
from jaxlm.models import ModelConfig
from jaxlm.runner import grid

PRESETS = {"full": {"train.steps": 20_000}}


def config() -> Config:
    return Config(
        name="passkey",
        model=ModelConfig(vocab_size=32, d_model=64, n_layers=2, pattern="attention",
                          attention=AttentionConfig(n_heads=2),
                          mamba2=Mamba2Config(head_dim=16, chunk_size=16)),
        data=DataConfig(task="passkey", passkey=PasskeyConfig(seq_len=64)),
        train=TrainConfig(steps=1000, batch_size=32, learning_rate=2e-3, warmup_steps=100,
                          log_every=250, tensorboard=False),
        probe=ProbeConfig(num_examples=500),
    )


def sweep() -> list[dict]:
    models = [{"model.pattern": "attention"},
              {"model.pattern": "mamba2", "model.mamba2.d_state": 8},
              {"model.pattern": "mamba2", "model.mamba2.d_state": 32}]
    return [{**m, "data.passkey.seq_len": n} for m in models for n in (64, 128, 256)]
