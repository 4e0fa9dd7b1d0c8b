"""MEAP: masking a fraction of the input tokens while training next-token prediction, and its
effect on recall ("Mask-Enhanced Autoregressive Prediction: Pay Less Attention to Learn More").

Run:  jaxlm sweep experiments/meap.py --seeds 2      (about 10 minutes on one CPU core)
The quickstart's MQAR (length 64, 4 key-value pairs, 2 layers of width 64, no MLP) with 15% of
the input tokens replaced by a dedicated mask id (``train.input_mask_rate=0.15``; id 128, one
past the task's vocabulary, so the model gets one more embedding row in every row of the
table) or none, for attention and GLA, at 1500 steps: attention is part-way through learning
the task there (0.4 at 1000 steps, 1.0 at 2000), so a change in the speed of learning to
recall shows. The targets are never masked, and the probe reads unmasked rows. The paper's
claim: MEAP improves key-information retrieval (needle in a haystack) over plain next-token
training at the same budget.
"""

import dataclasses

from jaxlm.runner import grid

import quickstart

MASK_ID = quickstart.VOCAB  # a token the task never emits


def config():
    base = quickstart.config()
    return dataclasses.replace(
        base, name="meap",
        model=dataclasses.replace(base.model, vocab_size=quickstart.VOCAB + 1),
        train=dataclasses.replace(base.train, steps=1500, input_mask_token=MASK_ID))


def sweep() -> list[dict]:
    return grid({"model.pattern": ["attention", "gla"], "train.input_mask_rate": [0.0, 0.15]})
