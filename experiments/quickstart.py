"""The main job: small models trained on MQAR on CPU in a few minutes, one table row each.

Run:  jaxlm sweep experiments/quickstart.py
Each mixer family adds its row here as it lands.
"""

from jaxlm.config import Config, ProbeConfig, TrainConfig
from jaxlm.data import DataConfig, MQARConfig
from jaxlm.layers import AttentionConfig, WindowAttentionConfig
from jaxlm.models import ModelConfig
from jaxlm.runner import grid

VOCAB = 128


def config() -> Config:
    return Config(
        name="quickstart",
        model=ModelConfig(vocab_size=VOCAB, d_model=64, n_layers=2, pattern="attention",
                          d_ff=0, attention=AttentionConfig(n_heads=2),
                          attention_window=WindowAttentionConfig(n_heads=2, window=8)),
        data=DataConfig(task="mqar", mqar=MQARConfig(vocab_size=VOCAB, seq_len=64,
                                                     num_kv_pairs=4)),
        train=TrainConfig(steps=2000, batch_size=32, learning_rate=3e-3, warmup_steps=100,
                          weight_decay=0.1, log_every=100, tensorboard=False),
        probe=ProbeConfig(num_examples=1000),
    )


def sweep() -> list[dict]:
    return grid({
        "model.pattern": ["attention", "attention_window"],
    })
