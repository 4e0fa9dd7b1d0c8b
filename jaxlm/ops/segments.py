"""Helpers for packed rows: several documents in one row, told apart by ``segment_ids``."""

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
