"""Needle threading: follow a chain of key -> key -> ... -> value pairs through a haystack of
random key-value pairs ("Needle Threading: Can LLMs Follow Threads through Near-Million-Scale
Haystacks?"), accuracy against the number of hops and the haystack length.

Run:  jaxlm sweep experiments/needle_threading.py      (CPU preset: tiny; see RESULTS.md)
      jaxlm sweep experiments/needle_threading.py --set data.needle_threading.direction=forward
Trained on rows of 64 tokens (31 pairs, threads of 1-3 hops, their pairs at random places),
probed on held-out rows by hops (``hops_h``) and at 128 tokens (``accuracy@128``). Two layers
of width 64, no MLP, 1500 steps; rows for attention, Mamba-2, DeltaNet and GLA. The paper
tests pretrained LLMs (no training): accuracy falls as the haystack grows, and many models
follow several threads at once. At this scale the question is which mixers learn to chain
lookups at all; ``one_hop`` is what a single lookup of the queried key scores. The ``full``
preset trains 4 layers of width 128 on 256-token rows with up to 4 hops.
"""

from jaxlm.config import Config, ProbeConfig, TrainConfig
from jaxlm.data import DataConfig, NeedleThreadingConfig
from jaxlm.layers import AttentionConfig, DeltaNetConfig, GLAConfig, Mamba2Config
from jaxlm.models import ModelConfig
from jaxlm.runner import grid

PRESETS = {"full": {"model.d_model": 128, "model.n_layers": 4, "train.steps": 20_000,
                    "model.vocab_size": 600, "data.needle_threading.vocab_size": 600,
                    "data.needle_threading.seq_len": 256, "data.needle_threading.max_hops": 4,
                    "probe.lengths": "512,1024"}}


def config() -> Config:
    return Config(
        name="needle_threading",
        model=ModelConfig(vocab_size=128, d_model=64, n_layers=2, pattern="attention",
                          attention=AttentionConfig(n_heads=2),
                          deltanet=DeltaNetConfig(n_heads=2, chunk_size=32),
                          gla=GLAConfig(n_heads=2, chunk_size=32),
                          mamba2=Mamba2Config(head_dim=16, chunk_size=32)),
        data=DataConfig(task="needle_threading",
                        needle_threading=NeedleThreadingConfig(vocab_size=128, seq_len=64,
                                                               max_hops=3)),
        train=TrainConfig(steps=1500, batch_size=32, learning_rate=3e-3, warmup_steps=100,
                          log_every=100, tensorboard=False),
        probe=ProbeConfig(num_examples=500, lengths="128"),
    )


def sweep() -> list[dict]:
    return grid({"model.pattern": ["attention", "mamba2", "deltanet", "gla"]})
