"""Splitting rows of bytes into words, for the word-level byte models ("Hierarchical
Autoregressive Transformers: Combining Byte- and Word-Level Processing"; "Learn Your Tokens:
Word-Pooled Tokenization for Language Modeling").

A word is a run of non-whitespace bytes followed by its trailing whitespace ("hello, " then
"world"). A new word also starts at a document start (``segment_ids`` changes: a document
is a maximal run of equal ids), at and after
every special token (ids >= 256: BOS, EOS, ...) and after ``max_word_len`` bytes. The split
only looks at the bytes up to each position, so it is causal: whether byte t starts a word is
known from bytes <= t.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxlm.ops.segments import document_ids, segment_starts

WHITESPACE = (9, 10, 11, 12, 13, 32)


class WordLayout(NamedTuple):
    """Where each byte of a row sits in the word layout [batch, max_words, max_word_len].

    word: [batch, length] int32, the word of each byte (may be >= max_words: dropped);
    offset: [batch, length] int32, its position inside the word;
    words: [batch, max_words, max_word_len] int32, the bytes of each word (``pad`` after it);
    lengths: [batch, max_words] int32, bytes per word (0 for the unused slots);
    segment_ids: [batch, max_words] int32, the canonical document id of each word (the run
      index of :func:`jaxlm.ops.segments.document_ids`; unused slots: the last).
    """
    word: jax.Array
    offset: jax.Array
    words: jax.Array
    lengths: jax.Array
    segment_ids: jax.Array


def natural_word_starts(tokens: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """bool [batch, length]: where a word starts before any length cut."""
    batch, length = tokens.shape
    space = jnp.isin(tokens, jnp.asarray(WHITESPACE))
    special = tokens >= 256
    previous_space = jnp.pad(space, [(0, 0), (1, 0)])[:, :-1]
    previous_special = jnp.pad(special, [(0, 0), (1, 0)])[:, :-1]
    first = jnp.arange(length) == 0
    return (first | segment_starts(segment_ids, batch, length) | special | previous_special
            | (previous_space & ~space))


def word_offsets(starts: jax.Array, max_word_len: int) -> tuple[jax.Array, jax.Array]:
    """(starts with the length cuts added, offset in word), both [batch, length]."""

    def advance(offset, start_t):
        cut = offset + 1 >= max_word_len
        new = jnp.where(start_t | cut, 0, offset + 1)
        return new, (start_t | cut, new)

    init = jnp.full(starts.shape[:1], -1, jnp.int32)
    _, (cut_starts, offsets) = jax.lax.scan(advance, init, starts.T)
    return cut_starts.T, offsets.T


def word_layout(tokens: jax.Array, segment_ids: jax.Array | None, *, max_word_len: int,
                max_words: int, pad: int) -> WordLayout:
    """Splits tokens [batch, length] into words; see ``WordLayout``."""
    batch, length = tokens.shape
    segment_ids = document_ids(segment_ids)
    starts, offset = word_offsets(natural_word_starts(tokens, segment_ids), max_word_len)
    word = jnp.cumsum(starts, axis=1, dtype=jnp.int32) - 1
    rows = jnp.arange(batch)[:, None]
    words = jnp.full((batch, max_words, max_word_len), pad, jnp.int32)
    words = words.at[rows, word, offset].set(tokens.astype(jnp.int32), mode="drop")
    lengths = jnp.zeros((batch, max_words), jnp.int32).at[rows, word].add(1, mode="drop")
    segments = jnp.zeros_like(tokens, jnp.int32) if segment_ids is None else segment_ids
    word_segments = jnp.broadcast_to(segments[:, -1:], (batch, max_words)).astype(jnp.int32)
    word_segments = word_segments.at[rows, word].set(segments.astype(jnp.int32), mode="drop")
    return WordLayout(word, offset, words, lengths, word_segments)
