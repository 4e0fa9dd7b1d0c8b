"""Math on one block inside a kernel body, written with the operations every Pallas lowering
has (2-D ``dot_general``, iota masks, elementwise ops, reductions): no cumsum, no gathers, no
dynamic slicing of values.

Within a chunk of C positions, sums over position ranges are products with triangular 0/1
matrices: ``inclusive @ x`` is the running sum of x, and ``inclusive @ (x * strict)`` is, at
[t, s], the sum of x over (s, t], exact without the cancellation of a difference of running sums.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.ops.delta_rule import with_closed_form_vjp


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """a [m, k] @ b [k, n] in float32 (or wider)."""
    return jax.lax.dot_general(*_same(a, b), (((1,), (0,)), ((), ())),
                               preferred_element_type=_acc(a, b))


def dot_nt(a: jax.Array, b: jax.Array) -> jax.Array:
    """a [m, k] @ b[n, k]ᵀ -> [m, n]."""
    return jax.lax.dot_general(*_same(a, b), (((1,), (1,)), ((), ())),
                               preferred_element_type=_acc(a, b))


def dot_tn(a: jax.Array, b: jax.Array) -> jax.Array:
    """a[k, m]ᵀ @ b [k, n] -> [m, n]."""
    return jax.lax.dot_general(*_same(a, b), (((0,), (0,)), ((), ())),
                               preferred_element_type=_acc(a, b))


def _acc(a, b):
    return jnp.promote_types(jnp.result_type(a, b), jnp.float32)


def _same(a, b):
    """Operands of one dtype (the wider): callers pick the product's precision by casting."""
    dtype = jnp.result_type(a, b)
    return a.astype(dtype), b.astype(dtype)


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



def gate_floor(dtype) -> float:
    """The log-gate below which e^{log_g} is treated as exactly 0: log of the smallest normal
    number of ``dtype`` (about -87.3 in float32, -708.4 in float64). Smaller gates (down to
    -inf) act as full resets, so running sums of gates stay finite and no inf - inf occurs."""
    return float(np.log(np.finfo(dtype).tiny))


def split_gates(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Log-gates g [C, w] <= 0 as (g with the full resets set to 0, the resets as a 0/1 array
    of g's dtype). A NaN gate is left as it is (a bad input, see :func:`bad_rows`)."""
    hard = g < gate_floor(g.dtype)
    return jnp.where(hard, 0.0, g), hard.astype(g.dtype)


def bad_rows(*xs: jax.Array) -> jax.Array:
    """bool [C, 1]: positions where any of the [C, w] inputs is NaN or infinite."""
    one, zero = jnp.int32(1), jnp.int32(0)  # int32 also under x64: kernels reduce in 32 bits
    wide = lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32))  # Mosaic: no bf16 test
    bad = [jnp.max(jnp.where(jnp.isfinite(wide(x)), zero, one), axis=1, keepdims=True) > 0
           for x in xs]
    return functools.reduce(jnp.logical_or, bad)


def any_2d(mask: jax.Array) -> jax.Array:
    """bool [1, 1]: whether any entry of the 2-D bool ``mask`` is set."""
    m = jnp.where(mask, jnp.int32(1), jnp.int32(0))
    return jnp.max(jnp.max(m, axis=1, keepdims=True), axis=0, keepdims=True) > 0


def causal_nonfinite(out: jax.Array, state: jax.Array, new_state: jax.Array, same: jax.Array,
                     bad: jax.Array, from_prev: jax.Array, to_end: jax.Array, keep: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
    """Puts NaN back where a chunk step computed with non-finite inputs zeroed out.

    A step zeroes the rows ``bad`` [C, 1] of its inputs and a non-finite incoming ``state``
    before its matrix products, so that a NaN at position s reaches no output t < s (a product
    by a masked 0 would carry it there). Here every output row that causally reads a bad input
    (a bad s <= t of its own document, or a non-finite incoming state while t is still in its
    document) becomes NaN, and so does the outgoing state when the chunk's last document read
    one. Returns (out, new_state).
    """
    seen = dot(same.astype(out.dtype), bad.astype(out.dtype)) > 0
    state_bad = any_2d(~jnp.isfinite(state))
    out = jnp.where(seen | (from_prev & state_bad), jnp.nan, out)
    carried_bad = any_2d(bad & to_end) | (keep & state_bad)
    return out, jnp.where(carried_bad, jnp.nan, new_state)


def finite_or_zero(x: jax.Array) -> jax.Array:
    """x with its non-finite entries set to 0 (see :func:`causal_nonfinite`)."""
    return jnp.where(jnp.isfinite(x), x, 0.0)


def unit_lower_inverse(n: jax.Array, block: int = 16) -> jax.Array:
    """(I + N)⁻¹ for a strictly lower-triangular N [C, C], mostly as matrix products.

    With D the diagonal blocks of N (``block`` x ``block``) and L the rest, I + N =
    (I + D)(I + T_D L) with T_D = (I + D)⁻¹. T_D comes from forward substitution on all
    diagonal blocks at once (``block`` - 1 steps, each a product with D), and the rest from
    :func:`block_series`: the UT transform on the matrix units, with no row-serial loop over
    the chunk. A chunk that ``block`` does not divide is solved row by row.
    """
    size = n.shape[0]
    block = min(block, size)
    rows, cols = rows_cols(size)
    eye = (rows == cols).astype(n.dtype)
    if size % block:
        block = size
    div = lambda x: jax.lax.div(x, jnp.int32(block))
    diag = jnp.where(div(rows) == div(cols), n, 0.0)
    row_in_block = jax.lax.rem(rows, jnp.int32(block))

    def substitute(r, t):  # rows r of every diagonal block, from the rows above them
        return jnp.where(row_in_block == r, eye - dot(diag, t), t)

    t = jax.lax.fori_loop(jnp.int32(1), jnp.int32(block), substitute, eye)
    return t if block == size else block_series(n, t, block)


def block_series(n: jax.Array, t_diag: jax.Array, block: int) -> jax.Array:
    """(I + N)⁻¹ for a strictly lower-triangular N [C, C] from T_D [C, C], the inverse of I + D
    (D: N's diagonal ``block`` x ``block`` blocks): M = T_D (N - D) is strictly block-lower, so
    (I + M)⁻¹ = Π_j (I + (-M)^(2^j)) ends after log2(C / ``block``) factors, and
    (I + N)⁻¹ = (I + M)⁻¹ T_D."""
    size = n.shape[0]
    rows, cols = rows_cols(size)
    eye = (rows == cols).astype(n.dtype)
    div = lambda x: jax.lax.div(x, jnp.int32(block))
    power = -dot(t_diag, jnp.where(div(rows) == div(cols), 0.0, n))
    inverse = eye + power
    for _ in range(int(np.ceil(np.log2(size // block))) - 1):
        power = dot(power, power)
        inverse = dot(inverse, eye + power)
    return dot(inverse, t_diag)


unit_lower_inverse_vjp = with_closed_form_vjp(lambda n: unit_lower_inverse(n))
unit_lower_inverse_vjp.__doc__ = """:func:`unit_lower_inverse` differentiated in closed form
(:func:`jaxlm.ops.delta_rule.with_closed_form_vjp`)."""
