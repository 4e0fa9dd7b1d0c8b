"""Rotary position embedding ("RoFormer: Enhanced Transformer with Rotary Position Embedding")."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import accepts_numpy


@accepts_numpy
def apply_rope(x: jax.Array, positions: jax.Array, *, theta: float = 10_000.0) -> jax.Array:
    """Rotates channel pairs (i, i + head_dim/2) of ``x`` by position-dependent angles.

    x: [batch, length, heads, head_dim] with even head_dim; positions: [batch, length] integers.
    Returns an array of x's shape and dtype; computed in at least float32.
    """
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"apply_rope: head_dim must be even, got x.shape={tuple(x.shape)}")
    acc = jnp.promote_types(x.dtype, jnp.float32)
    half = head_dim // 2
    freqs = theta ** (-jnp.arange(half, dtype=acc) * 2 / head_dim)
    angles = positions.astype(acc)[..., None, None] * freqs  # [batch, length, 1, half]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = jnp.split(x.astype(acc), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
