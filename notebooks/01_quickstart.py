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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxlm/jaxlm/blob/main/notebooks/01_quickstart.ipynb)
#
# # jaxlm quickstart
#
# Call an op, build a model from a layer pattern, train it on multi-query associative recall
# (MQAR, from Zoology) for a minute, generate with the recurrent `step` path and plot the loss.

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

# %% [markdown]
# ## Ops: pure functions with a slow exact form and a fast one
#
# Every op in `jaxlm.ops` has a sequential `reference` form and a fast `xla` form (chunked,
# associative scan or blockwise); `impl=` picks one.

# %%
from jaxlm.ops import attention, delta_rule, selective_scan

keys = jax.random.split(jax.random.key(0), 8)
batch, length, heads, dim = 2, 48, 2, 16

q = jax.random.normal(keys[0], (batch, length, heads, dim))
k = jax.random.normal(keys[1], (batch, length, heads, dim))
v = jax.random.normal(keys[2], (batch, length, heads, dim))
k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)  # the delta rule wants unit keys
beta = jax.nn.sigmoid(jax.random.normal(keys[3], (batch, length, heads)))

u = jax.random.normal(keys[4], (batch, length, 8))  # selective scan: [batch, length, channels]
delta = jax.nn.softplus(jax.random.normal(keys[5], (batch, length, 8)))
A = -jnp.exp(jax.random.normal(keys[6], (8, 4)))
B = jax.random.normal(keys[7], (batch, length, 4))
C = jax.random.normal(keys[0], (batch, length, 4))

for name, op in [("attention", lambda impl: attention(q, k, v, impl=impl)),
                 ("delta_rule", lambda impl: delta_rule(q, k, v, beta, chunk_size=16,
                                                        impl=impl)),
                 ("selective_scan", lambda impl: selective_scan(u, delta, A, B, C,
                                                                chunk_size=16, impl=impl))]:
    fast, exact = op("xla"), op("reference")
    print(f"{name:15s} out {tuple(fast.shape)}  max |xla - reference| = "
          f"{float(jnp.max(jnp.abs(fast - exact))):.1e}")

# %% [markdown]
# ## A model from a layer pattern, trained on MQAR

# %%
import pathlib
import tempfile

from jaxlm.config import Config, apply_overrides
from jaxlm.probes import evaluate
from jaxlm.train import read_metrics, train

steps = 10 if SMOKE else 1500
config = apply_overrides(Config(name="notebook"), {
    "model.pattern": "attention" if SMOKE else "deltanet,attention", "model.vocab_size": 128,
    "model.d_model": 32 if SMOKE else 64,
    "model.n_layers": 2, "model.attention.n_heads": 2, "model.deltanet.n_heads": 2,
    "model.deltanet.chunk_size": 16, "data.mqar.vocab_size": 128,
    "data.mqar.seq_len": 32 if SMOKE else 64, "data.mqar.num_kv_pairs": 4,
    "train.steps": steps, "train.batch_size": 32, "train.learning_rate": 3e-3,
    "train.warmup_steps": min(100, steps - 1), "train.log_every": 5 if SMOKE else 50,
    "train.tensorboard": False})
run_dir = pathlib.Path(tempfile.mkdtemp()) / "mqar"
result = train(config, run_dir, progress=not SMOKE)
print(f"{result.num_params} parameters, {result.seconds:.0f} s")
print("probe:", evaluate(result.model, config.data, num_examples=64 if SMOKE else 1000,
                         batch_size=64, seed=1))

# %%
import matplotlib.pyplot as plt

train_log = [row for row in read_metrics(run_dir) if row["split"] == "train"]
plt.figure(figsize=(5, 3))
plt.plot([r["step"] for r in train_log], [r["loss"] for r in train_log])
plt.xlabel("step")
plt.ylabel("training loss")
plt.title(f"{config.model.pattern} on MQAR")
plt.show()

# %% [markdown]
# ## Generation: the prompt is read by the parallel form, new tokens by `step`
#
# Greedy generation must agree with the argmax of the parallel forward pass over the same
# tokens: the two faces of every mixer compute the same function.

# %%
from jaxlm.data import make_source
from jaxlm.models import generate

model = result.model
batch = make_source(config.data).batch(0, 4, "test")
prompt = batch["inputs"][:, :16]
tokens = generate(model, prompt, max_new_tokens=8)
parallel = jnp.argmax(model(tokens[:, :-1]), axis=-1)[:, 15:]
print("generated:", tokens[0, 16:].tolist())
print("step path == parallel argmax on", f"{float(jnp.mean(parallel == tokens[:, 16:])):.0%}", "of the new tokens")
