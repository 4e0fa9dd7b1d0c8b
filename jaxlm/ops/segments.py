"""Helpers for packed rows: several documents in one row, told apart by ``segment_ids``."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Position of each token inside its own document.

    segment_ids: [batch, length] integers; a new document starts wherever the id changes.
    Returns [batch, length] int32 positions that restart at 0 at every document start.
    """
    length = segment_ids.shape[-1]
    index = jnp.arange(length, dtype=jnp.int32)
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[..., :1], dtype=bool),
         segment_ids[..., 1:] != segment_ids[..., :-1]], axis=-1)
    start_index = jax.lax.cummax(jnp.where(starts, index, 0), axis=segment_ids.ndim - 1)
    return index - start_index
