"""MQAR accuracy against model width per architecture, as Zoology's Figure 2.

Run:  jaxlm sweep experiments/mqar_width.py     (CPU: about 80 minutes, the sum of its runs'
      times; Mamba's token-by-token scan is half of it)
      jaxlm sweep experiments/mqar_width.py --preset zoology --stack --only model.d_model=64
      (Zoology's protocol, one width: the best of four learning rates per model)
The quickstart's MQAR task with vocab 256, length 64 (4 key-value pairs), widths 32, 64 and 128
for attention, H3 (gated convolution), GLA, DeltaNet, Mamba-2 and Mamba, 3000 steps each (MQAR is
learned in an abrupt transition: at 1500 steps attention is still at chance). The finding:
attention solves MQAR from a small width, the gated convolution falls short, the
input-dependent recurrences sit between. Zoology's numbers (vocab 8192, longer training) are
printed beside ours where they exist. Longer sequences, which need more width:

    jaxlm sweep experiments/mqar_width.py --out runs/mqar_width_128 \
        --set data.mqar.seq_len=128 data.mqar.num_kv_pairs=8

MQAR is learned in an abrupt transition, so one seed per cell can pass or miss it by chance;
``--seeds 3`` runs each cell three times and reports the mean and range (RESULTS.md has the
GLA and Mamba-2 cells so: Mamba-2's miss at width 128 was one seed of three).
"""

import dataclasses

from jaxlm.config import apply_overrides
from jaxlm.runner import grid

import quickstart

# Zoology's protocol: every (model, width) is trained at the four learning rates
# np.logspace(-4, -2, 4) (here to three digits) and the table reports the best, with its rate
# (``jaxlm sweep experiments/mqar_width.py --preset zoology --stack``: the four rates of a
# cell train as one program).
ZOOLOGY = {"best_of": {"train.learning_rate": [1e-4, 4.64e-4, 2.15e-3, 1e-2]}}
PRESETS = {"zoology": ZOOLOGY,
           "full": {"model.vocab_size": 8192, "data.mqar.vocab_size": 8192,
                    "train.steps": 12_500, "train.batch_size": 512, **ZOOLOGY}}


def config():
    base = quickstart.config()
    return apply_overrides(dataclasses.replace(base, name="mqar_width"), {
        "train.steps": 3000, "model.vocab_size": 256, "data.mqar.vocab_size": 256})


def sweep() -> list[dict]:
    return grid({"model.pattern": ["attention", "h3", "gla", "deltanet", "mamba2", "mamba"],
                 "model.d_model": [32, 64, 128]})
