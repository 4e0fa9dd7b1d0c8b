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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxlm/jaxlm/blob/main/notebooks/04_kernels_and_scale.ipynb)
#
# # Kernels and scale
#
# The Pallas kernels against the XLA forms of the same ops (in Pallas' interpreter on CPU, for
# real on GPU / TPU), then one training run sharded over a device mesh against the same run
# on one device. On a CPU runtime the notebook simulates 8 devices.

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("JAXLM_SMOKE", "0") == "1"  # tiny sizes: CI runs every notebook so
# Simulated devices for CPU runtimes; it must be set before JAX starts (GPU / TPU ignore it).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

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
print("backend:", jax.default_backend(), "| devices:", jax.device_count())

# %% [markdown]
# ## Pallas kernels against the XLA forms
#
# `impl="pallas"` runs the kernel on GPU / TPU; `impl="pallas_interpret"` runs the same kernel
# in Pallas' interpreter anywhere (slowly: it checks the kernel's logic, not its speed).

# %%
import time

from jaxlm.ops import attention, gated_delta_rule, selective_scan

kernel = "pallas_interpret" if jax.default_backend() == "cpu" else "pallas"
length = 64 if SMOKE else 2048
keys = jax.random.split(jax.random.key(0), 8)
q = jax.random.normal(keys[0], (1, length, 2, 32))
k = jax.random.normal(keys[1], (1, length, 2, 32))
k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
v = jax.random.normal(keys[2], (1, length, 2, 32))
beta = jax.nn.sigmoid(jax.random.normal(keys[3], (1, length, 2)))
log_a = -jax.nn.softplus(jax.random.normal(keys[4], (1, length, 2)))
u = jax.random.normal(keys[5], (1, length, 32))
delta = jax.nn.softplus(jax.random.normal(keys[6], (1, length, 32)))
A = -jnp.exp(jax.random.normal(keys[7], (32, 8)))
B = jax.random.normal(keys[0], (1, length, 8))
C = jax.random.normal(keys[1], (1, length, 8))

ops = {
    "attention": lambda impl: attention(q, k, v, impl=impl),
    "gated_delta_rule": lambda impl: gated_delta_rule(q, k, v, beta, log_a, chunk_size=32,
                                                      impl=impl),
    "selective_scan": lambda impl: selective_scan(u, delta, A, B, C, chunk_size=32, impl=impl),
}


def timed(fn):
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted())
    start = time.perf_counter()
    out = jax.block_until_ready(jitted())
    return out, time.perf_counter() - start


print(f"{'op':18s} {'max |kernel - xla|':>18s} {'xla ms':>8s} {kernel + ' ms':>22s}")
for name, op in ops.items():
    fast, xla_s = timed(lambda: op("xla"))
    out, kernel_s = timed(lambda: op(kernel))
    print(f"{name:18s} {float(jnp.max(jnp.abs(out - fast))):18.1e} {1e3 * xla_s:8.2f} "
          f"{1e3 * kernel_s:22.2f}")

# %% [markdown]
# ## A sharded training run
#
# The mesh splits the batch over `data` and the row length over `sequence`. Under the mesh the
# DeltaNet layer runs LASP-2 (each device its chunk, one all-gather of states) and the attention
# layer ring attention with zig-zag chunks (`model.attention.sequence_parallel`: `ring`,
# `zigzag` or `ulysses`); XLA partitions the rest. The loss curve equals the single-device one
# up to float rounding.

# %%
import pathlib
import tempfile

import matplotlib.pyplot as plt

from jaxlm.config import Config, apply_overrides
from jaxlm.train import read_metrics, train

devices = jax.device_count()
data_ways = 2 if devices >= 2 else 1
mesh = {"mesh.data": data_ways, "mesh.sequence": devices // data_ways}
config = apply_overrides(Config(name="mesh"), {
    "model.pattern": "deltanet,attention", "model.n_layers": 2,
    "model.attention.sequence_parallel": "zigzag", "model.d_model": 32, "model.vocab_size": 64,
    "data.mqar.vocab_size": 64, "data.mqar.seq_len": 32, "train.batch_size": 8,
    "train.steps": 10 if SMOKE else 300, "train.log_every": 2 if SMOKE else 10,
    "train.warmup_steps": 5, "train.tensorboard": False})


def losses(run_dir):
    rows = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


root = pathlib.Path(tempfile.mkdtemp())
train(config, root / "one", progress=False)
train(apply_overrides(config, mesh), root / "mesh", progress=False)
steps, one = losses(root / "one")
_, sharded = losses(root / "mesh")
print("mesh:", mesh, "| max loss difference:", max(abs(a - b) for a, b in zip(one, sharded)))

plt.figure(figsize=(5, 3))
plt.plot(steps, one, label="one device")
plt.plot(steps, sharded, "--", label=f"data={mesh['mesh.data']}, "
                                     f"sequence={mesh['mesh.sequence']}")
plt.xlabel("step")
plt.ylabel("training loss")
plt.legend()
plt.show()
