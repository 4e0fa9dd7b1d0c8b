"""Induction heads with length extrapolation (H3 Table 1; Mamba Table 11): train at length 64,
test at 2x, 4x and 8x.

Run:  jaxlm sweep experiments/induction_extrapolation.py     (CPU, about 10 minutes)
Vocab 16, 2-layer models of width 64, 1500 steps of fresh data. The finding: every model that
learns the task in distribution except the selective one (Mamba) loses it at longer lengths.
"""

from jaxlm.config import Config, ProbeConfig, TrainConfig
from jaxlm.data import DataConfig, InductionHeadConfig
from jaxlm.layers import AttentionConfig, H3Config, MambaConfig, S4DConfig
from jaxlm.models import ModelConfig
from jaxlm.runner import grid

PRESETS = {"full": {"data.induction_head.seq_len": 256, "probe.lengths": "512,1024,4096",
                    "train.steps": 200_000, "train.batch_size": 8}}


def config() -> Config:
    return Config(
        name="induction_extrapolation",
        model=ModelConfig(vocab_size=16, d_model=64, n_layers=2, pattern="attention",
                          attention=AttentionConfig(n_heads=2),
                          h3=H3Config(head_dim=1, d_state=64, shift_width=64),
                          mamba=MambaConfig(chunk_size=16), s4d=S4DConfig()),
        data=DataConfig(task="induction_head",
                        induction_head=InductionHeadConfig(vocab_size=16, seq_len=64)),
        train=TrainConfig(steps=1500, batch_size=32, learning_rate=1e-3, warmup_steps=100,
                          log_every=250, tensorboard=False),
        probe=ProbeConfig(num_examples=500, lengths="128,256,512"),
    )


def sweep() -> list[dict]:
    return grid({"model.pattern": ["attention", "h3", "mamba", "s4d"]})
