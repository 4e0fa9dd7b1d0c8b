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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxlm/jaxlm/blob/main/notebooks/03_in_context_learning.ipynb)
#
# # In-context learning
#
# Linear regression in context ("What Can Transformers Learn In-Context?", Garg et al.) with
# least-squares baselines; the single linear-self-attention layer of "Trained Transformers
# Learn Linear Models In-Context" (Zhang, Frei, Bartlett) beside its closed-form minimum; and
# MQAR accuracy against model width (Zoology).

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

import jaxlm

print(f"jaxlm {jaxlm.__version__} | jax {jax.__version__} | flax {flax.__version__}")
print("devices:", jax.devices())

# %% [markdown]
# ## Linear regression in context
#
# Prompts (x_1, y_1, ..., x_n, y_n, x_query) with x, w ~ N(0, I_d) and y = w.x; the error
# (divided by d) of the prediction at each prompt length, beside least squares, ridge,
# averaging, 3-nearest-neighbours and the zero predictor.

# %%
import tempfile

import matplotlib.pyplot as plt

from jaxlm.config import Config, apply_overrides
from jaxlm.probes import evaluate
from jaxlm.train import train

n_dims = 3 if SMOKE else 5
config = apply_overrides(Config(name="icl"), {
    "data.task": "linear_regression", "data.linear_regression.n_dims": n_dims,
    "data.linear_regression.num_points": 2 * n_dims + 1, "model.d_model": 32 if SMOKE else 64,
    "model.n_layers": 2 if SMOKE else 4, "model.attention.n_heads": 2,
    "train.steps": 10 if SMOKE else 4000, "train.batch_size": 64,
    "train.learning_rate": 1e-3, "train.warmup_steps": 10 if SMOKE else 200,
    "train.log_every": 10 if SMOKE else 200, "train.tensorboard": False})
result = train(config, tempfile.mkdtemp(), progress=not SMOKE)
curves = evaluate(result.model, config.data, num_examples=128 if SMOKE else 2000,
                  batch_size=128, seed=1)["curve"]

plt.figure(figsize=(5, 3.2))
for name, errors in curves.items():
    plt.plot(range(1, len(errors) + 1), errors, label=name,
             linewidth=2.5 if name == "model" else 1)
plt.axvline(n_dims, color="gray", linestyle=":")
plt.ylim(0, 1.5)
plt.xlabel("in-context examples")
plt.ylabel("squared error / d")
plt.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## One linear-self-attention layer against its closed-form optimum

# %%
from jaxlm.probes import LSAConfig, train_lsa

lsa = train_lsa(LSAConfig(n_dims=n_dims, steps=20 if SMOKE else 2000,
                          test_prompts=1000 if SMOKE else 50_000))
for name, value in lsa.items():
    print(f"{name:14s} {value:.4f}")

# %% [markdown]
# ## MQAR accuracy against width

# %%
widths = [16] if SMOKE else [32, 64, 128]
patterns = ["attention"] if SMOKE else ["attention", "deltanet", "mamba2", "h3"]
accuracy = {}
for pattern in patterns:
    for width in widths:
        mqar = apply_overrides(Config(name="width"), {
            "model.pattern": pattern, "model.d_model": width, "model.vocab_size": 64,
            "data.mqar.vocab_size": 64, "data.mqar.seq_len": 32 if SMOKE else 64,
            "train.steps": 10 if SMOKE else 2000, "train.batch_size": 32,
            "train.learning_rate": 3e-3, "train.warmup_steps": 5 if SMOKE else 100,
            "train.log_every": 10 if SMOKE else 200, "train.tensorboard": False})
        run = train(mqar, tempfile.mkdtemp(), progress=False)
        accuracy[pattern, width] = evaluate(run.model, mqar.data, num_examples=64,
                                            batch_size=64, seed=1)["accuracy"]

plt.figure(figsize=(5, 3.2))
for pattern in patterns:
    plt.plot(widths, [accuracy[pattern, w] for w in widths], marker="o", label=pattern)
plt.xscale("log", base=2)
plt.xlabel("d_model")
plt.ylabel("MQAR accuracy")
plt.legend()
plt.show()
