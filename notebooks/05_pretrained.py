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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxlm/jaxlm/blob/main/notebooks/05_pretrained.ipynb)
#
# # Pretrained checkpoints
#
# Load a Hugging Face checkpoint (Mamba, Mamba-2 or Llama) from a local folder into jaxlm,
# check its logits against transformers' (when torch is installed), and run the passkey probe
# of "Stuffed Mamba" on it. jaxlm downloads nothing: point `CHECKPOINT` at a folder you
# downloaded, e.g. `huggingface-cli download state-spaces/mamba-130m-hf --local-dir mamba-130m`.
# Without one, the notebook makes a tiny random checkpoint (the numbers are then those of an
# untrained model).

# %% tags=["parameters"]
import os

SMOKE = os.environ.get("JAXLM_SMOKE", "0") == "1"  # tiny sizes: CI runs every notebook so
CHECKPOINT = os.environ.get("JAXLM_CHECKPOINT", "")  # a local Hugging Face folder, or ""

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
import numpy as np

import jaxlm

print(f"jaxlm {jaxlm.__version__} | jax {jax.__version__} | flax {flax.__version__}")

# %% [markdown]
# ## A checkpoint
#
# Without `CHECKPOINT`, a tiny random Mamba made by transformers when it is installed (else by
# jaxlm itself, `save_pretrained`), with a byte-level BPE tokenizer trained on a few sentences.

# %%
import tempfile

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jaxlm.models import DecoderLM, ModelConfig, load_pretrained, save_pretrained

try:
    import torch
    import transformers
except ImportError:
    torch = transformers = None


def tiny_tokenizer(vocab_size=300):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    text = "The pass key is 12345. Remember it. The grass is green. The sky is blue. " * 8
    tokenizer.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tokenizer


if not CHECKPOINT:
    CHECKPOINT = tempfile.mkdtemp(prefix="tiny-mamba-")
    d_model, layers = (8, 2) if SMOKE else (64, 4)
    if transformers is not None:
        torch.manual_seed(0)
        hf_config = transformers.MambaConfig(vocab_size=300, hidden_size=d_model,
                                             state_size=8, num_hidden_layers=layers)
        transformers.MambaForCausalLM(hf_config).save_pretrained(CHECKPOINT)
        tiny_tokenizer().save(os.path.join(CHECKPOINT, "tokenizer.json"))
    else:
        config = ModelConfig(vocab_size=300, d_model=d_model, n_layers=layers,
                             pattern="mamba", norm_eps=1e-5)
        save_pretrained(DecoderLM(config, rngs=flax.nnx.Rngs(0)), CHECKPOINT,
                        tokenizer=tiny_tokenizer())
print(sorted(os.listdir(CHECKPOINT)))

# %% [markdown]
# ## Load it, and compare with transformers

# %%
model, tokenizer = load_pretrained(CHECKPOINT)
print(model.config.pattern, model.config.n_layers, "layers, d_model", model.config.d_model)
ids = tokenizer.encode("The pass key is 12345. Remember it.").ids
logits = jax.jit(lambda m, t: m(t))(model, jnp.asarray([ids]))
if transformers is not None:
    hf = transformers.AutoModelForCausalLM.from_pretrained(CHECKPOINT)
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits.numpy()
    print("max |jaxlm - transformers| / max |transformers|:",
          float(np.abs(logits - want).max() / np.abs(want).max()))
else:
    print("transformers is not installed: no comparison")

# %% [markdown]
# ## Passkey retrieval against context length

# %%
import matplotlib.pyplot as plt

from jaxlm.probes.pretrained import passkey_retrieval

lengths = (48, 96) if SMOKE else (256, 512, 1024, 2048)
scores = passkey_retrieval(model, tokenizer, lengths=lengths, trials=1 if SMOKE else 5)
print(scores)
plt.figure(figsize=(4, 3))
plt.plot(lengths, [scores[f"passkey@{n}"] for n in lengths], marker="o")
plt.xscale("log", base=2)
plt.xlabel("context length (tokens)")
plt.ylabel("passkey accuracy")
plt.ylim(-0.05, 1.05)
plt.title(os.path.basename(CHECKPOINT.rstrip("/")))
plt.show()
