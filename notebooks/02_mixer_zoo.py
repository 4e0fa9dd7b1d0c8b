# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxlm/jaxlm/blob/main/notebooks/02_mixer_zoo.ipynb)
#
# # The mixer zoo
#
# Every registered sequence mixer on one probe (MQAR): its parallel form checked against its
# recurrent `step` form, then a table of parameters, accuracy and tokens per second.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("JAXLM_SMOKE", "0") == "1"  # tiny sizes: CI runs every notebook so

# %%
# In Colab, install jaxlm first (elsewhere: `pip install -e .` in a clone).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "git+https://github.com/jaxlm/jaxlm"], check=True)

# %%
import flax
import jax
import jax.numpy as jnp

import jaxlm

print(f"jaxlm {jaxlm.__version__} | jax {jax.__version__} | flax {flax.__version__}")
print("devices:", jax.devices())

# %%
from flax import nnx

from jaxlm.config import Config, apply_overrides
from jaxlm.layers import MIXERS
from jaxlm.models import DecoderLM

mixers = ["attention", "mamba2"] if SMOKE else sorted(MIXERS)
base = apply_overrides(Config(name="zoo"), {
    "model.vocab_size": 64, "model.d_model": 16 if SMOKE else 64, "model.n_layers": 2,
    "data.mqar.vocab_size": 64, "data.mqar.seq_len": 32 if SMOKE else 64,
    "data.mqar.num_kv_pairs": 4, "train.steps": 4 if SMOKE else 1500,
    "train.batch_size": 32, "train.learning_rate": 3e-3, "train.warmup_steps": 2 if SMOKE else 100,
    "train.log_every": 4 if SMOKE else 100, "train.tensorboard": False})
print(len(MIXERS), "registered mixers:", ", ".join(sorted(MIXERS)))

# %% [markdown]
# ## Two faces, one function
#
# The parallel form (`model(tokens)`) and the recurrent form (`prefill` of nothing, then
# `step` one token at a time) give the same logits.

# %%
def step_logits(model, tokens):
    state = model.init_state(tokens.shape[0], max_length=tokens.shape[1])

    def body(state, token):
        logits, state = model.step(token, state)
        return state, logits

    return jnp.swapaxes(jax.lax.scan(body, state, tokens.T)[1], 0, 1)


tokens = jax.random.randint(jax.random.key(0), (2, 24), 0, 64)
for name in mixers:
    config = apply_overrides(base, {"model.pattern": name})
    model = DecoderLM(config.model, rngs=nnx.Rngs(params=0))
    gap = jnp.max(jnp.abs(jax.jit(lambda m, t: m(t))(model, tokens)
                          - jax.jit(step_logits)(model, tokens)))
    print(f"{name:18s} max |parallel - recurrent| = {float(gap):.1e}")

# %% [markdown]
# ## Train each on MQAR

# %%
import tempfile
import time

from jaxlm.data import make_source
from jaxlm.probes import evaluate
from jaxlm.train import train

rows = []
for name in mixers:
    config = apply_overrides(base, {"model.pattern": name})
    result = train(config, tempfile.mkdtemp(), progress=False)
    probe = evaluate(result.model, config.data, num_examples=64 if SMOKE else 1000,
                     batch_size=64, seed=1)
    batch = make_source(config.data).batch(0, 64, "test")["inputs"]
    forward = jax.jit(lambda m, t: m(t))
    jax.block_until_ready(forward(result.model, batch))
    start = time.perf_counter()
    jax.block_until_ready(forward(result.model, batch))
    rows.append({"mixer": name, "params": result.num_params, "accuracy": probe["accuracy"],
                 "tokens/s": batch.size / (time.perf_counter() - start)})

print(f"{'mixer':18s} {'params':>8s} {'accuracy':>9s} {'tokens/s':>10s}")
for row in rows:
    print(f"{row['mixer']:18s} {row['params']:8d} {row['accuracy']:9.3f} {row['tokens/s']:10.0f}")

# %%
import matplotlib.pyplot as plt

plt.figure(figsize=(6, 3))
plt.bar([r["mixer"] for r in rows], [r["accuracy"] for r in rows])
plt.xticks(rotation=45, ha="right")
plt.ylabel("MQAR accuracy")
plt.tight_layout()
plt.show()
