"""MQAR at width 64 under Zoology's protocol (best of four learning rates), every recurrence.

Run:  jaxlm sweep experiments/mqar_zoology_w64.py --preset zoology --stack
      (CPU: about two hours on one core; Mamba's token-by-token scan is half of it)

The width-64 column of ``mqar_width.py`` (length 64, 4 key-value pairs, vocab 256, 3000 steps)
with Mamba (S6) added, each model trained at Zoology's four learning rates as one stacked
program and reported at its best rate: the width where Zoology's Figure 2 states the order
attention >= DeltaNet > GLA and Mamba > H3. Mamba and H3 run first, as that pair is the
question the earlier single-rate tables left open.
"""

from jaxlm.runner import grid

import mqar_width

PRESETS = mqar_width.PRESETS
config = mqar_width.config


def sweep() -> list[dict]:
    return grid({"model.pattern": ["mamba", "h3", "attention", "deltanet", "gla", "mamba2"],
                 "model.d_model": [64]})
