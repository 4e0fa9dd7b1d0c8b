"""Two training recipes on a small byte LM: the learning-rate schedules (cosine,
warmup-stable-decay, the power scheduler) and dataset decomposition against packing.

Run:  jaxlm sweep experiments/training_recipes.py      (about 22 minutes on one CPU core)
The token-free experiment's byte LM (2 attention layers of width 64, rows of 256 bytes, 16 rows
a step, 600 steps, peak learning rate 3e-3; the built-in corpus, ``--set data.text.path=DIR``
for your own), one row per recipe, bits per byte on the same held-out packed rows:

- ``train.schedule``: ``cosine`` (the default), ``wsd`` ("MiniCPM: Unveiling the Potential of
  Small Language Models with Scalable Training Strategies": constant, then a linear decay over
  the last 10% of the steps) and ``power`` ("Power Scheduler: A Batch Size and Token Number
  Agnostic Learning Rate Scheduler": lr = min(3e-3, batch · a · n^b) in the tokens seen n,
  n counting bytes, with the paper's b = -0.51 and a = 0.2 in place of its 4: at this batch
  and length the paper's a keeps lr(n) above the 3e-3 cap for about 75,000 steps, so the
  schedule would equal WSD; a = 0.2 meets the cap near step 210 and ends the stable phase at
  about 1.8e-3);
- ``data.text.decomposition`` ("Dataset Decomposition: Faster LLM Pretraining with Variable
  Sequence Length Curriculum"): rows of one document each, of 16-256 bytes by power-of-two
  buckets, the same bytes per step as packing; without and with a short-to-long curriculum over
  the first half of the run.

The papers' claims: WSD reaches cosine's loss and the power scheduler matches or beats both;
dataset decomposition trains faster per token than packing (shorter rows cost less attention)
at the same or better loss.
"""

from jaxlm.config import Config, ProbeConfig, TrainConfig
from jaxlm.data import BYTE_VOCAB, DataConfig, TextConfig
from jaxlm.layers import AttentionConfig
from jaxlm.models import ModelConfig

ROW_BYTES, ROWS = 256, 16


def config() -> Config:
    return Config(
        name="training_recipes",
        model=ModelConfig(vocab_size=BYTE_VOCAB, d_model=64, n_layers=2, d_ff=128,
                          pattern="attention", attention=AttentionConfig(n_heads=4)),
        data=DataConfig(task="text", text=TextConfig(seq_len=ROW_BYTES)),
        train=TrainConfig(steps=600, batch_size=ROWS, learning_rate=3e-3, warmup_steps=50,
                          log_every=100, tensorboard=False),
        probe=ProbeConfig(num_examples=128, batch_size=32),
    )


def sweep() -> list[dict]:
    return [{"train.schedule": "cosine"}, {"train.schedule": "wsd"},
            {"train.schedule": "power", "train.power_tokens_per_step": ROW_BYTES * ROWS,
             "train.power_a": 0.2},
            {"data.text.decomposition": True},
            {"data.text.decomposition": True, "data.text.curriculum_steps": 300}]
