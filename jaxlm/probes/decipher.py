"""The deciphering probe of "Lexinvariant Language Models" (Huang, Zelikman, Chen, Wu, Valiant,
Liang): does a model work out a substitution cipher in context?

Held-out English goes through the model under a letter cipher drawn fresh for every row. A
linear probe (multinomial logistic regression) on the model's final hidden states learns, on
the validation split, to name the plaintext letter behind each ciphered letter (case folded:
the cipher keeps case), and is scored on the test split by position in the document. A model
that deciphers in context names more letters the more of the document it has read (the
paper's Bayesian in-context deciphering); one that knows only the ciphered letter in front of
it can do no better than guessing the commonest letter. Beside it, the classical attack on the
same positions: frequency analysis, which maps the k-th most frequent letter of the document so
far to the k-th most frequent letter of the training split.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxlm.data import SPLITS, DataConfig, make_source
from jaxlm.data.text import BYTE_VOCAB, corpus_split
from jaxlm.models.lexinvariant import LexinvariantLM, random_tables
from jaxlm.ops.segments import segment_positions

POSITION_EDGES = (64, 256, 1024, 4096)  # buckets [0, 64), [64, 256), ... of document position
_LETTER = np.full(BYTE_VOCAB, -1, np.int64)  # byte -> 0..25 for a..z and A..Z, else -1
_LETTER[ord("a"):ord("z") + 1] = _LETTER[ord("A"):ord("Z") + 1] = np.arange(26)


def letter_index(tokens: np.ndarray) -> np.ndarray:
    """Byte tokens [...] -> 0..25 for letters (case folded), -1 for anything else."""
    tokens = np.asarray(tokens)
    return np.where(tokens < BYTE_VOCAB, _LETTER[np.minimum(tokens, BYTE_VOCAB - 1)], -1)


def frequency_analysis(cipher_letters: np.ndarray, segments: np.ndarray,
                       english_order: np.ndarray) -> np.ndarray:
    """The frequency-analysis guess at every position of one row.

    cipher_letters [length]: 0..25, -1 for non-letters; segments [length]: document ids;
    english_order [26]: letters from most to least frequent. Returns [length] the guessed
    plaintext letter (-1 at non-letters): the current letter's rank among the document's letter
    counts so far (itself included; ties go to the letter seen first) read off english_order.
    """
    guesses = np.full(len(cipher_letters), -1)
    for t, letter in enumerate(cipher_letters):
        if t == 0 or segments[t] != segments[t - 1]:
            counts, first_seen = np.zeros(26, np.int64), np.full(26, np.inf)
        if letter < 0:
            continue
        counts[letter] += 1
        first_seen[letter] = min(first_seen[letter], t)
        ahead = (counts > counts[letter]) | ((counts == counts[letter])
                                             & (first_seen < first_seen[letter]))
        guesses[t] = english_order[ahead.sum()]
    return guesses


@functools.partial(jax.jit, static_argnames="steps")
def fit_linear_probe(features: jax.Array, labels: jax.Array, *, steps: int = 500
                     ) -> tuple[jax.Array, jax.Array]:
    """Multinomial logistic regression: features [n, d], labels [n] in 0..25 -> (weights
    [d, 26], bias [26]) after ``steps`` full-batch Adam steps (features should be
    standardised)."""
    params = (jnp.zeros((features.shape[1], 26)), jnp.zeros(26))
    optimizer = optax.adam(0.05)

    def loss(params):
        logits = features @ params[0] + params[1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def update(_, carry):
        params, opt_state = carry
        updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state)
        return optax.apply_updates(params, updates), opt_state

    return jax.lax.fori_loop(0, steps, update, (params, optimizer.init(params)))[0]


def _hidden_states(model: nnx.Module):
    """A compiled (tokens, segment_ids, key) -> hidden states [batch, length, d] of ``model``.

    A lexinvariant model's evaluation tables are fixed per batch row, so fresh ones are drawn
    from ``key`` here, or the probe could learn each row's (table, cipher) pair instead of
    deciphering."""
    graphdef, state = nnx.split(model)
    fresh_tables = isinstance(model, LexinvariantLM) and model.learned is None

    @jax.jit
    def hidden(state, tokens, segments, key):
        model = nnx.merge(graphdef, state)
        if not fresh_tables:
            return model.hidden(tokens, segment_ids=segments)
        tables = random_tables(key, tokens.shape[0], model.config.vocab_size, model.table_dim)
        return model.hidden(tokens, segment_ids=segments, tables=tables)

    return functools.partial(hidden, state)


def _letters_of_split(hidden, data: DataConfig, split: str, rows: int, batch_size: int,
                      english_order: np.ndarray) -> dict[str, np.ndarray]:
    """At every ciphered letter of ``rows`` rows of ``split``: the hidden state (``hidden``,
    from ``_hidden_states``), the plaintext letter, the frequency-analysis guess and the
    position in the document."""
    plain = make_source(dataclasses.replace(
        data, text=dataclasses.replace(data.text, cipher=False)))
    ciphered = make_source(dataclasses.replace(
        data, text=dataclasses.replace(data.text, cipher=True)))
    found = {"features": [], "plain": [], "frequency": [], "position": []}
    for index in range(-(-rows // batch_size)):
        keep = np.arange(min(batch_size, rows - index * batch_size))  # no row twice
        text = jax.device_get(plain.batch(index, batch_size, split, rows=keep))
        cipher = jax.device_get(ciphered.batch(index, batch_size, split, rows=keep))
        key = jax.random.fold_in(jax.random.key(data.seed), SPLITS.index(split) * 2**20 + index)
        features = np.asarray(hidden(cipher["inputs"], cipher["segment_ids"], key))
        segments = cipher["segment_ids"]
        position = np.asarray(segment_positions(jnp.asarray(segments)))
        for row in range(len(segments)):
            letters = letter_index(cipher["inputs"][row])
            at = letters >= 0
            found["features"].append(features[row][at])
            found["plain"].append(letter_index(text["inputs"][row])[at])
            found["frequency"].append(
                frequency_analysis(letters, segments[row], english_order)[at])
            found["position"].append(position[row][at])
    return {name: np.concatenate(parts) for name, parts in found.items()}


def _by_position(correct: np.ndarray, position: np.ndarray, name: str,
                 seq_len: int) -> dict[str, float]:
    metrics = {name: float(correct.mean())}
    low = 0
    for edge in POSITION_EDGES:
        if low >= seq_len:
            break
        at = (position >= low) & (position < edge)
        if at.any():
            metrics[f"{name}@{edge}"] = float(correct[at].mean())
        low = edge
    return metrics


def decipher_probe(model: nnx.Module, data: DataConfig, *, num_examples: int, batch_size: int,
                   seed: int) -> dict[str, float]:
    """Accuracy of the linear probe (``decipher``) and of frequency analysis (``frequency``)
    at naming the plaintext letter of ciphered test text, overall and as ``decipher@E`` /
    ``frequency@E`` for document positions below E (and at or above the edge before it).
    ``model`` needs ``hidden(tokens, segment_ids=)`` -> [batch, length, d]."""
    text = data.text
    counts = np.bincount(letter_index(corpus_split(text, 0).tokens) + 1, minlength=27)[1:]
    english_order = np.argsort(-counts, kind="stable")
    data = dataclasses.replace(data, seed=seed)
    hidden = _hidden_states(model)
    fit, test = (_letters_of_split(hidden, data, split,
                                   min(num_examples, corpus_split(text, SPLITS.index(split))
                                       .num_rows(text.seq_len)), batch_size, english_order)
                 for split in ("validation", "test"))
    mean = fit["features"].mean(0)
    std = fit["features"].std(0) + 1e-6
    weights, bias = fit_linear_probe(jnp.asarray((fit["features"] - mean) / std),
                                     jnp.asarray(fit["plain"]))
    guess = np.asarray(((test["features"] - mean) / std) @ np.asarray(weights)
                       + np.asarray(bias)).argmax(-1)
    return {**_by_position(guess == test["plain"], test["position"], "decipher", text.seq_len),
            **_by_position(test["frequency"] == test["plain"], test["position"], "frequency",
                           text.seq_len)}
