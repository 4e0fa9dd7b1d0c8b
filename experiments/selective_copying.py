"""Selective copying (Mamba Table 1): recall the few data tokens scattered among noise, in order.

Run:  jaxlm sweep experiments/selective_copying.py     (CPU: 25 minutes measured, 16 of them Mamba)
      jaxlm sweep experiments/selective_copying.py --preset zoology --stack
      (Zoology's protocol: each model at four learning rates, trained as one stacked program,
      reported at its best rate)
Rows of 128 positions: 8 data tokens (vocab 16) at random places among 120 noise tokens, then 8
markers where the model must write the data tokens in order. 2-layer models of width 64, 3000
steps of fresh data (at 1500 Mamba was still climbing, at 0.43). The paper's finding: a
time-invariant SSM (S4D) cannot do it (it cannot tell data from noise by content), the gated
H3 partly can, and the selective SSM (Mamba) solves it. Under ``--preset zoology`` here Mamba
solves it (1.000 at lr 1e-2), H3 and S4D reach 0.74 and 0.81 (RESULTS.md). Mamba's paper
uses length 4096 and 16 tokens (the ``full`` preset).
"""

from jaxlm.config import Config, ProbeConfig, TrainConfig
from jaxlm.data import DataConfig, SelectiveCopyConfig
from jaxlm.layers import AttentionConfig, H3Config, MambaConfig, S4DConfig
from jaxlm.models import ModelConfig
from jaxlm.runner import grid

from mqar_width import ZOOLOGY

PRESETS = {"zoology": ZOOLOGY,
           "full": {"data.selective_copy.seq_len": 4096, "data.selective_copy.num_tokens": 16,
                    "train.steps": 400_000, "train.batch_size": 64}}


def config() -> Config:
    return Config(
        name="selective_copying",
        model=ModelConfig(vocab_size=16, d_model=64, n_layers=2, pattern="mamba",
                          attention=AttentionConfig(n_heads=2),
                          h3=H3Config(head_dim=1, d_state=64, shift_width=64),
                          mamba=MambaConfig(chunk_size=16), s4d=S4DConfig()),
        data=DataConfig(task="selective_copy",
                        selective_copy=SelectiveCopyConfig(vocab_size=16, seq_len=128,
                                                           num_tokens=8)),
        train=TrainConfig(steps=3000, batch_size=32, learning_rate=1e-3, warmup_steps=100,
                          log_every=250, tensorboard=False),
        probe=ProbeConfig(num_examples=500),
    )


def sweep() -> list[dict]:
    return grid({"model.pattern": ["s4d", "h3", "mamba", "attention"]})
