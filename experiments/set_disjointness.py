"""Set disjointness (Just read twice): does it matter which set comes first, and does reading
the context twice (the JRT prompt) help?

Run:  jaxlm sweep experiments/set_disjointness.py     (CPU, about 10 minutes)
|A| = 4 and |B| = 16 in either order (mixed in training), vocab 128, 2-layer models of width
64; linear attention and GLA against attention, with the context read once and twice. The
finding: causal recurrent models do better when the short set comes first, and repeating the
context closes the gap; attention is order-insensitive.
"""

from jaxlm.config import Config, ProbeConfig, TrainConfig
from jaxlm.data import DataConfig, SetDisjointnessConfig
from jaxlm.layers import AttentionConfig, GLAConfig, LinearAttentionConfig
from jaxlm.models import ModelConfig
from jaxlm.runner import grid

PRESETS = {"full": {"model.vocab_size": 2048, "data.set_disjointness.vocab_size": 2048,
                    "train.steps": 20_000}}


def config() -> Config:
    return Config(
        name="set_disjointness",
        model=ModelConfig(vocab_size=128, d_model=64, n_layers=2, pattern="attention",
                          attention=AttentionConfig(n_heads=2),
                          linear_attention=LinearAttentionConfig(n_heads=2, chunk_size=16),
                          gla=GLAConfig(n_heads=2, chunk_size=16)),
        data=DataConfig(task="set_disjointness", set_disjointness=SetDisjointnessConfig(
            vocab_size=128, len_a=4, len_b=16, order="mixed")),
        train=TrainConfig(steps=1500, batch_size=32, learning_rate=2e-3, warmup_steps=100,
                          log_every=250, tensorboard=False),
        probe=ProbeConfig(num_examples=1000),
    )


def sweep() -> list[dict]:
    return grid({"model.pattern": ["attention", "linear_attention", "gla"],
                 "data.set_disjointness.repeats": [1, 2]})
