"""Math on one block inside a kernel body, written with the operations every Pallas lowering
has (2-D ``dot_general``, iota masks, elementwise ops, reductions): no cumsum, no gathers, no
dynamic slicing of values.

Within a chunk of C positions, sums over position ranges are products with triangular 0/1
matrices: ``inclusive @ x`` is the running sum of x, and ``inclusive @ (x * strict)`` is, at
[t, s], the sum of x over (s, t], exact without the cancellation of a difference of running sums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """a [m, k] @ b [k, n] in float32 (or wider)."""
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=_acc(a, b))


def dot_nt(a: jax.Array, b: jax.Array) -> jax.Array:
    """a [m, k] @ b[n, k]ᵀ -> [m, n]."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=_acc(a, b))


def dot_tn(a: jax.Array, b: jax.Array) -> jax.Array:
    """a[k, m]ᵀ @ b [k, n] -> [m, n]."""
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=_acc(a, b))


def _acc(a, b):
    return jnp.promote_types(jnp.result_type(a, b), jnp.float32)


def rows_cols(size: int) -> tuple[jax.Array, jax.Array]:
    """Row and column indices of a [size, size] block (int32)."""
    shape = (size, size)
    return (jax.lax.broadcasted_iota(jnp.int32, shape, 0),
            jax.lax.broadcasted_iota(jnp.int32, shape, 1))


def triangles(size: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """(inclusive, strict): 0/1 [size, size] matrices with [t, s] = 1 where s <= t, s < t."""
    rows, cols = rows_cols(size)
    return (cols <= rows).astype(dtype), (cols < rows).astype(dtype)


def last_row(x: jax.Array) -> jax.Array:
    """x[-1:, :] as [1, width], by a masked sum (Triton lowers no static slices of values)."""
    rows = jax.lax.broadcasted_iota(jnp.int32, x.shape, 0)
    return jnp.sum(jnp.where(rows == x.shape[0] - 1, x, 0), axis=0, keepdims=True)


def range_sums(x: jax.Array, inclusive: jax.Array, strict: jax.Array) -> jax.Array:
    """x: [C, 1]. Returns [C, C] with [t, s] = sum of x over positions (s, t] (0 when s >= t)."""
    return dot(inclusive, x * strict)


def chunk_segments(starts: jax.Array, inclusive: jax.Array, strict: jax.Array):
    """Document structure of one chunk from ``starts`` [C, 1] (1.0 where a document starts).

    Returns (same [C, C] bool: s <= t in one document; from_prev [C, 1]: t still in the
    document of the incoming state; to_end [C, 1]: t in the chunk's last document; keep [1, 1]:
    the incoming state's document runs through the whole chunk).
    """
    count = dot(inclusive, starts)  # starts seen up to and including t
    last = last_row(count)
    same = (range_sums(starts, inclusive, strict) == 0) & (inclusive > 0)
    return same, count == 0, count == last, last == 0

