"""The text probe: bits per byte on held-out documents, for every byte-level model.

bits per byte = (sum of the model's negative log-likelihoods over everything it predicts, in
bits) / (number of UTF-8 bytes among its targets). A byte LM predicts each next byte and each
``EOS``; a word-level model each word's bytes and its ``EOW``. Both sums are code lengths of the
same text, so the numbers compare across models, and with the subword baseline
(``data.text.subword_vocab``), whose targets count the bytes of their pieces.
The same rows are also scored under a per-row substitution cipher of the letters
(``bits_per_byte_cipher``, the probe of "Lexinvariant Language Models"): a standard LM trained
on English loses its letter statistics there, a lexinvariant one is unaffected by construction.

Baselines, scored on the same targets: the unigram model of the training split's tokens
(add-one smoothed; under the cipher, the letters share their mean frequency), and the
in-context unigram model, which knows nothing of the corpus and predicts each token from the
counts of the tokens before it in its document (the Krichevsky-Trofimov estimator, add 1/2).
The second is the same with and without the cipher: the first thing a lexinvariant model can
learn, and the bar it must clear before it has learned anything about language. The third, the
in-context PPM model, predicts from the document so far too, but from the tokens that followed
each of its last ``PPM_ORDER`` tokens before: a classical compressor that is also unchanged by
any relabelling of the vocabulary, so it estimates what a lexinvariant model can reach at the
probe's context length.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxlm.data import IGNORE, DataConfig, make_source
from jaxlm.data.text import BYTE_PIECES, corpus_split, piece_bytes
from jaxlm.probes.decipher import decipher_probe
from jaxlm.train.losses import logits_and_targets

PPM_ORDER = 3


def code_length(outputs, batch, pieces: jax.Array = BYTE_PIECES) -> dict[str, jax.Array]:
    """Sum of negative log-likelihoods (nats) over the counted targets, and how many bytes
    those targets stand for (``pieces`` [vocab]: bytes per id; default the byte tokenizer's)."""
    logits, targets = logits_and_targets(outputs, batch)
    counted = targets != IGNORE
    safe = jnp.where(counted, targets, 0)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    return {"nats": jnp.where(counted, nll, 0.0).sum(),
            "bytes": jnp.where(counted, jnp.asarray(pieces)[safe], 0).sum(),
            "targets": counted.sum(),
            "reduction": (outputs.get("metrics", {}).get("reduction", 1.0)
                          if isinstance(outputs, dict) else 1.0)}


@functools.partial(jax.jit, static_argnums=0)
def _model_code_length(graphdef: nnx.GraphDef, state: nnx.State, batch,
                       pieces: jax.Array) -> dict[str, jax.Array]:
    """``code_length`` of the model ``nnx.merge(graphdef, state)`` on a batch (compiled once per
    model structure and batch shape, so the plain and the ciphered scoring share it)."""
    model = nnx.merge(graphdef, state)
    return code_length(model(batch["inputs"], segment_ids=batch["segment_ids"]), batch, pieces)


def _bytes(targets: np.ndarray, pieces: np.ndarray) -> float:
    counted = targets != IGNORE
    return float(pieces[np.where(counted, targets, 0)][counted].sum())


def unigram_bits(data: DataConfig, batches: list[dict[str, np.ndarray]]) -> float:
    """Bits per byte of the add-one unigram model of the training split on ``batches``."""
    counts = np.bincount(corpus_split(data.text, 0).tokens,
                         minlength=data.text.vocab_size) + 1.0
    if data.text.cipher:
        for first in (ord("a"), ord("A")):
            counts[first:first + 26] = counts[first:first + 26].mean()
    log_p = np.log2(counts / counts.sum())
    pieces = piece_bytes(data.text)
    bits = nbytes = 0.0
    for batch in batches:
        bits -= log_p[batch["targets"][batch["targets"] != IGNORE]].sum()
        nbytes += _bytes(batch["targets"], pieces)
    return bits / max(nbytes, 1)


def in_context_unigram_bits(batches: list[dict[str, np.ndarray]],
                            pieces: np.ndarray = BYTE_PIECES) -> float:
    """Bits per byte of the in-context unigram model (see the module docstring) on ``batches``:
    target t of a row is predicted from the counts of its document's inputs up to t, over a
    vocabulary of ``len(pieces)`` ids (``pieces``: bytes per id)."""
    vocab = len(pieces)
    bits = nbytes = 0.0
    for batch in batches:
        inputs, targets, segments = (np.asarray(batch[k]) for k in
                                     ("inputs", "targets", "segment_ids"))
        batch_size, length = inputs.shape
        counts = np.cumsum(np.eye(vocab, dtype=np.int32)[inputs], axis=1)  # [b, l, v]
        position = np.arange(length)
        new_document = np.concatenate([np.ones((batch_size, 1), bool),
                                       segments[:, 1:] != segments[:, :-1]], 1)
        start = np.maximum.accumulate(np.where(new_document, position, 0), axis=1)
        before = np.where((start > 0)[..., None],
                          np.take_along_axis(counts, np.maximum(start - 1, 0)[..., None], 1), 0)
        counts = counts - before  # counts of this document's inputs up to t
        seen = position - start + 1
        counted = targets != IGNORE
        hits = np.take_along_axis(counts, np.where(counted, targets, 0)[..., None], 2)[..., 0]
        p = (hits + 0.5) / (seen + 0.5 * vocab)
        bits -= np.log2(p)[counted].sum()
        nbytes += _bytes(targets, pieces)
    return bits / max(nbytes, 1)


def in_context_ppm_bits(batches: list[dict[str, np.ndarray]],
                        pieces: np.ndarray = BYTE_PIECES, order: int = PPM_ORDER) -> float:
    """Bits per byte of in-context PPM on ``batches`` ("Data Compression Using Adaptive Coding
    and Partial String Matching", Cleary and Witten; escape method C, blended without
    exclusion): target t is predicted from the tokens that followed each context of its
    last k = order, ..., 0 inputs earlier in its document, each order passing on the share
    distinct / (seen + distinct) to the next shorter one, and order -1 is uniform over
    ``len(pieces)`` ids."""
    bits = nbytes = 0.0
    for batch in batches:
        for inputs, targets, segments in zip(
                *(np.asarray(batch[k]).tolist() for k in ("inputs", "targets", "segment_ids"))):
            bits += _ppm_row_bits(inputs, targets, segments, len(pieces), order)
        nbytes += _bytes(np.asarray(batch["targets"]), pieces)
    return bits / max(nbytes, 1)


def _ppm_row_bits(inputs: list[int], targets: list[int], segments: list[int], vocab: int,
                  order: int) -> float:
    bits = 0.0
    for t, token in enumerate(inputs):
        if t == 0 or segments[t] != segments[t - 1]:
            history, followers = [], {}  # a new document: nothing seen
        history.append(token)
        for k in range(min(order, len(history) - 1) + 1):  # token followed these contexts
            seen = followers.setdefault(tuple(history[len(history) - 1 - k:-1]), {})
            seen[token] = seen.get(token, 0) + 1
        if targets[t] == IGNORE:
            continue
        p, escape = 0.0, 1.0
        for k in range(min(order, len(history)), -1, -1):
            seen = followers.get(tuple(history[len(history) - k:]))
            if seen:
                total, distinct = sum(seen.values()), len(seen)
                p += escape * seen.get(targets[t], 0) / (total + distinct)
                escape *= distinct / (total + distinct)
        bits -= math.log2(p + escape / vocab)
    return bits


def score_text(model: nnx.Module, data: DataConfig, *, num_examples: int, batch_size: int,
               seed: int, in_context_baselines: bool = True) -> dict[str, float]:
    """bits_per_byte, unigram, bytes_per_second (the jitted forward, after compiling) and
    reduction (bytes per backbone position) on up to ``num_examples`` test rows, and with
    ``in_context_baselines`` the in-context unigram and PPM models."""
    split = corpus_split(data.text, 2)
    rows = min(num_examples, split.num_rows(data.text.seq_len))
    source = make_source(dataclasses.replace(data, seed=seed))
    batches = [jax.device_get(source.batch(i, batch_size, "test"))
               for i in range(-(-rows // batch_size))]
    graphdef, state = nnx.split(model)
    pieces = piece_bytes(data.text)
    jax.block_until_ready(_model_code_length(graphdef, state, batches[0], pieces))  # compile
    totals = {"nats": 0.0, "bytes": 0.0, "targets": 0.0, "reduction": 0.0}
    start = time.perf_counter()
    for batch in batches:
        for name, value in jax.device_get(
                _model_code_length(graphdef, state, batch, pieces)).items():
            totals[name] += float(value)
    seconds = time.perf_counter() - start
    metrics = {"bits_per_byte": totals["nats"] / math.log(2) / max(totals["bytes"], 1.0),
               "unigram": unigram_bits(data, batches),
               "bytes_per_second": sum(b["inputs"].size for b in batches) / seconds,
               # bytes per backbone position: the model's own measure, or bytes per subword
               # token
               "reduction": (totals["bytes"] / max(totals["targets"], 1.0)
                             if data.text.subword_vocab else totals["reduction"] / len(batches))}
    if in_context_baselines:
        metrics["in_context_unigram"] = in_context_unigram_bits(batches, pieces)
        metrics["in_context_ppm"] = in_context_ppm_bits(batches, pieces)
    return metrics


def evaluate_text(model: nnx.Module, data: DataConfig, **kwargs) -> dict[str, float]:
    """``score_text`` on the plain rows and, as ``*_cipher``, on the letter-ciphered rows (byte
    tokens only: the cipher permutes bytes), and for models with a hidden state per byte
    (``hidden``: the byte and lexinvariant LMs) the deciphering probe (``decipher_probe``)."""
    plain = dataclasses.replace(data, text=dataclasses.replace(data.text, cipher=False))
    if data.text.subword_vocab:
        return score_text(model, plain, **kwargs)
    ciphered = dataclasses.replace(data, text=dataclasses.replace(data.text, cipher=True))
    metrics = score_text(model, plain, **kwargs)
    # the in-context baselines are unchanged by relabelling letters: scored once, on plain text
    cipher = score_text(model, ciphered, in_context_baselines=False, **kwargs)
    metrics = {**metrics, "bits_per_byte_cipher": cipher["bits_per_byte"],
               "unigram_cipher": cipher["unigram"]}
    if hasattr(model, "hidden"):  # a hidden state per byte: the deciphering probe applies
        metrics.update(decipher_probe(model, plain, **kwargs))
    return metrics
