"""Helpers for packed rows: several documents in one row, told apart by ``segment_ids``.

The one definition every op holds: a document is a maximal run of equal ids. Ids
[0, 1, 0] are three documents, not two; an id may come back later in a row and still start a
new document. :func:`document_ids` turns any ids into the run index of each position (0, 1, 2,
... along the row), after which equal ids mean the same document, so equality masks
(attention, convolutions) and start masks (recurrences) agree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import accepts_numpy


@accepts_numpy
def segment_starts(segment_ids: jax.Array | None, batch: int, length: int) -> jax.Array:
    """bool [batch, length]: True where a later document of a packed row starts (position 0
    is False: a recurrent state carried into the row belongs to its first document). All
    False when ``segment_ids`` is None."""
    if segment_ids is None:
        return jnp.zeros((batch, length), bool)
    return jnp.concatenate([jnp.zeros_like(segment_ids[:, :1], dtype=bool),
                            segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)


@accepts_numpy
def document_ids(segment_ids: jax.Array | None) -> jax.Array | None:
    """The canonical form of packed-row ids: the index of each position's document (a maximal
    run of equal ids), counted from 0 along each row.

    segment_ids: [batch, length] integers, or None (passed through). Returns [batch, length]
    int32, non-decreasing along each row, changing exactly where ``segment_ids`` changes, so
    ``document_ids(ids)[i] == document_ids(ids)[j]`` if and only if positions i and j lie in
    one run. E.g. [[0, 1, 0]] -> [[0, 1, 2]]. Idempotent (up to the run partition) and exact
    on any split of a row only when applied to the whole row: sequence-parallel forms apply
    it before splitting the length.
    """
    if segment_ids is None:
        return None
    segment_ids = jnp.asarray(segment_ids)
    batch, length = segment_ids.shape
    return jnp.cumsum(segment_starts(segment_ids, batch, length), axis=1, dtype=jnp.int32)


@accepts_numpy
def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Position of each token inside its own document.

    segment_ids: [batch, length] integers; a new document starts wherever the id changes.
    Returns [batch, length] int32 positions that restart at 0 at every document start.
    """
    batch, length = segment_ids.shape
    index = jnp.arange(length, dtype=jnp.int32)
    starts = segment_starts(segment_ids, batch, length)  # position 0 maps to 0 either way
    start_index = jax.lax.cummax(jnp.where(starts, index, 0), axis=segment_ids.ndim - 1)
    return index - start_index


def pad_segments(segment_ids: jax.Array, length: int) -> jax.Array:
    """Pads [batch, n] document ids to [batch, length] with each row's last id, so the padding
    joins the last document and starts none."""
    return jnp.pad(segment_ids, [(0, 0), (0, length - segment_ids.shape[1])], mode="edge")
