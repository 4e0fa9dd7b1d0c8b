"""In-context language learning trained long enough for attention's transition (Akyurek et al.,
"In-Context Language Learning: Architectures and Algorithms").

Run:  jaxlm sweep experiments/regular_languages_long.py     (CPU: about 100 minutes of training)
``regular_languages.py``'s task and 1500-step sizes, changed where its runs showed the budget
falls short: 2 layers instead of 4 (each step is half the cost), fresh prompts every step
(``data.train_examples=0``: on the fixed 2500 prompts attention memorises them instead), a
constant learning rate after the warm-up (under the cosine decay attention's loss plateau outlasts
the learning rate) and 8000 steps. Attention learns ICLL in an abrupt transition, near step 2500
at this size; before it, it sits near the in-context unigram model.

Measured (RESULTS.md): attention reaches validity 0.79, GLA 0.70 (still in its own slower
transition) and Mamba-2 0.83, so the paper's finding (Transformers far ahead of recurrent models)
does not reproduce at this scale: Mamba-2 learns earlier and stays ahead; attention catches up
most of the gap after its transition.
"""

import dataclasses

from jaxlm.config import apply_overrides
from jaxlm.runner import grid

import regular_languages

PRESETS = regular_languages.PRESETS


def config():
    base = regular_languages.config()
    return apply_overrides(dataclasses.replace(base, name="regular_languages_long"), {
        "model.n_layers": 2, "data.train_examples": 0, "train.schedule": "constant",
        "train.steps": 8000, "train.log_every": 500, "train.eval_every": 1000})


def sweep() -> list[dict]:
    return grid({"model.pattern": ["attention", "gla", "mamba2"]})
