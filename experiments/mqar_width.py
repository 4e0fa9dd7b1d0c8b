"""MQAR accuracy against model width per architecture, as Zoology's Figure 2.

Run:  jaxlm sweep experiments/mqar_width.py     (CPU: 73 minutes measured with another job running)
The quickstart's MQAR task (vocab 256, so that length 128 fits) at lengths 64 and 128 (4 and 8 key-value pairs) and
widths 32, 64, 128 for attention, H3 (gated convolution), GLA and DeltaNet. The finding: attention
solves MQAR at every width, H3 falls short at small width and longer sequences, the
input-dependent recurrences sit between. Zoology's numbers (vocab 8192, longer training) are
printed beside ours where they exist.
"""

import dataclasses

from jaxlm.config import apply_overrides
from jaxlm.runner import grid

import quickstart

PRESETS = {"full": {"model.vocab_size": 8192, "data.mqar.vocab_size": 8192,
                    "train.steps": 12_500, "train.batch_size": 512}}


def config():
    base = quickstart.config()
    return apply_overrides(dataclasses.replace(base, name="mqar_width"), {
        "train.steps": 1500, "model.vocab_size": 256, "data.mqar.vocab_size": 256})


def sweep() -> list[dict]:
    return grid({
        "model.pattern": ["attention", "h3", "gla", "deltanet"],
        ("data.mqar.seq_len", "data.mqar.num_kv_pairs"): [(64, 4), (128, 8)],
        "model.d_model": [32, 64, 128],
    })
