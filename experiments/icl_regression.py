"""In-context linear regression (Garg et al.): squared error against the number of in-context
examples, beside least squares, ridge, averaging and 3-nearest-neighbours on the same prompts.

Run:  jaxlm sweep experiments/icl_regression.py            (CPU, 30-45 minutes)
      jaxlm sweep experiments/icl_regression.py --preset full   (the paper's d = 20, 41 points)
The CPU preset is the paper's toy setting (d = 5, 11 points): a 4-layer model per mixer,
d_model 64 with an MLP, 4000 steps of 64 fresh prompts (at 2 layers and 3000 steps attention
was still far from least squares: error 0.32 at n = 2d). The finding to reproduce: attention's
error tracks least squares and is near 0 from n = d examples on; recurrent mixers sit between
least squares and averaging.
"""

from jaxlm.config import Config, ProbeConfig, TrainConfig
from jaxlm.data import DataConfig, LinearRegressionConfig
from jaxlm.layers import AttentionConfig, DeltaNetConfig, Mamba2Config
from jaxlm.models import ModelConfig
from jaxlm.runner import grid

PRESETS = {
    "full": {"data.linear_regression.n_dims": 20, "data.linear_regression.num_points": 41,
             "model.d_model": 256, "model.n_layers": 12, "model.d_ff": 1024,
             "model.attention.n_heads": 8, "train.steps": 500_000, "train.learning_rate": 1e-4},
}


def config() -> Config:
    return Config(
        name="icl_regression",
        model=ModelConfig(d_model=64, n_layers=4, d_ff=256, pattern="attention",
                          attention=AttentionConfig(n_heads=4),
                          deltanet=DeltaNetConfig(n_heads=4, chunk_size=8),
                          mamba2=Mamba2Config(head_dim=16, chunk_size=8)),
        data=DataConfig(task="linear_regression",
                        linear_regression=LinearRegressionConfig(n_dims=5, num_points=11)),
        train=TrainConfig(steps=4000, batch_size=64, learning_rate=1e-3, warmup_steps=200,
                          log_every=250, tensorboard=False),
        probe=ProbeConfig(num_examples=2000, batch_size=500),
    )


def sweep() -> list[dict]:
    return grid({"model.pattern": ["attention", "deltanet", "mamba2"]})
