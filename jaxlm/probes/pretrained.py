"""Probes of a pretrained LM with its own tokenizer (``jaxlm.models.load_pretrained``).

- :func:`text_bits_per_byte`: bits per UTF-8 byte on held-out documents (the test split of a
  text folder, or the built-in corpus): the code length of each document under the model,
  in windows of ``context`` tokens, over its bytes; comparable across tokenizers.
- :func:`passkey_retrieval`: the passkey test of "Stuffed Mamba: State Collapse and State
  Capacity of RNN-Based Long-Context Modeling" (after "Landmark Attention"): a five-digit key
  hidden at a random depth of filler sentences; greedy decoding must reproduce it. Accuracy
  against context length (in tokens).
- :func:`associative_recall`: key-value pairs ("Zoology: Measuring and Improving Recall in
  Efficient Language Models"), then one queried key; with ``repeat=True`` the context is given
  twice before the query, the just-read-twice prompting of "Just read twice: closing the recall
  gap for recurrent language models" (JRT-Prompt).

Tokenizers are ``tokenizers.Tokenizer`` objects (what ``load_pretrained`` returns).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.models.generate import generate

FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again. ")
NAMES = ("apple", "river", "stone", "cloud", "tiger", "paper", "glass", "honey", "maple",
         "ocean", "piano", "robot", "sugar", "tulip", "violet", "window", "yellow", "zebra",
         "anchor", "bridge", "candle", "desert", "engine", "forest")


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text).ids)


def _greedy(model: nnx.Module, prompt: list[int], new_tokens: int) -> list[int]:
    out = _generate(model, jnp.asarray([prompt], jnp.int32), new_tokens)
    return [int(t) for t in np.asarray(out)[0, len(prompt):]]


def _generate(model, prompt, new_tokens):
    graphdef, state = nnx.split(model)
    return _jit_generate(graphdef, state, prompt, new_tokens)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jit_generate(graphdef, state, prompt, new_tokens):
    return generate(nnx.merge(graphdef, state), prompt, max_new_tokens=new_tokens)


def text_bits_per_byte(model: nnx.Module, tokenizer, documents: list[bytes], *,
                       context: int = 512) -> dict[str, float]:
    """Bits per byte of ``documents`` (each scored from its first token, in windows of
    ``context`` tokens that restart the model; the first token of each window is not
    predicted, and its bytes are not counted). Returns bits_per_byte, bytes, tokens."""
    if context < 2:
        raise ValueError(f"text_bits_per_byte: context must be >= 2, got {context}")
    graphdef, state = nnx.split(model)

    @jax.jit
    def nll(state, window):
        logits = nnx.merge(graphdef, state)(window[None, :-1])[0]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.take_along_axis(logp, window[1:, None], axis=-1)[:, 0]

    nats, counted_bytes, tokens = 0.0, 0, 0
    for doc in documents:
        encoding = tokenizer.encode(doc.decode("utf-8", errors="replace"))
        ids, offsets = encoding.ids, encoding.offsets
        text = doc.decode("utf-8", errors="replace")
        for start in range(0, max(len(ids) - 1, 0), context - 1):
            window = ids[start:start + context]
            if len(window) < 2:
                break
            padded = np.zeros(context, np.int32)  # one shape: one compile
            padded[:len(window)] = window
            losses = np.asarray(nll(state, jnp.asarray(padded)))[:len(window) - 1]
            nats += float(losses.sum())
            tokens += len(window) - 1
            first, last = offsets[start + 1][0], offsets[start + len(window) - 1][1]
            counted_bytes += len(text[first:last].encode("utf-8"))
    if not counted_bytes:
        raise ValueError("text_bits_per_byte: the documents give no token to predict")
    return {"bits_per_byte": nats / math.log(2) / counted_bytes, "bytes": counted_bytes,
            "tokens": tokens}


def passkey_prompt(tokenizer, length: int, depth: float, key: str) -> list[int]:
    """A passkey prompt of about ``length`` tokens with the key at relative ``depth``."""
    head = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
            "memorize it. I will quiz you about the important information there. ")
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    tail = "What is the pass key? The pass key is"
    budget = length - len(_ids(tokenizer, head + needle + tail))
    repeats = max(budget // max(len(_ids(tokenizer, FILLER)), 1), 0)
    before = round(repeats * depth)
    text = head + FILLER * before + needle + FILLER * (repeats - before) + tail
    return _ids(tokenizer, text)


def passkey_retrieval(model: nnx.Module, tokenizer, *, lengths=(256, 512, 1024),
                      trials: int = 5, seed: int = 0) -> dict[str, float]:
    """Accuracy of greedy passkey retrieval at each context length (keys of five digits, at
    evenly spaced depths): {"passkey@<length>": fraction of trials whose decoded continuation
    starts with the key}."""
    rng = np.random.default_rng(seed)
    results = {}
    for length in lengths:
        hits = 0
        for trial in range(trials):
            key = str(rng.integers(10_000, 100_000))
            prompt = passkey_prompt(tokenizer, length, (trial + 0.5) / trials, key)
            want = _ids(tokenizer, " " + key)
            got = _greedy(model, prompt, len(want) + 2)
            hits += tokenizer.decode(got).strip().startswith(key)
        results[f"passkey@{length}"] = hits / trials
    return results


def associative_recall(model: nnx.Module, tokenizer, *, num_pairs: int = 8, trials: int = 10,
                       seed: int = 0) -> dict[str, float]:
    """Accuracy of recalling the value of a queried key after ``num_pairs`` pairs "key: value"
    (words to two-digit numbers), with the context once (``recall``) and twice
    (``recall_jrt``, just-read-twice)."""
    if not 1 <= num_pairs <= len(NAMES):
        raise ValueError(f"associative_recall: num_pairs must be in [1, {len(NAMES)}], "
                         f"got {num_pairs}")
    rng = np.random.default_rng(seed)
    hits = {"recall": 0, "recall_jrt": 0}
    for _ in range(trials):
        keys = rng.choice(NAMES, num_pairs, replace=False)
        values = rng.integers(10, 100, num_pairs)
        context = "".join(f"{k}: {v}. " for k, v in zip(keys, values))
        query = int(rng.integers(num_pairs))
        question = f"{keys[query]}:"
        for name, text in (("recall", context), ("recall_jrt", context + context)):
            got = _greedy(model, _ids(tokenizer, text + question), 3)
            hits[name] += tokenizer.decode(got).strip().startswith(str(values[query]))
    return {name: count / trials for name, count in hits.items()}
