"""Shared plumbing of the chunkwise-parallel recurrent ops (linear attention, GLA, delta rule).

Inputs arrive channels-last, ``[batch, length, heads, ...]``; inside, the ops work on
``[chunks, batch, heads, chunk, ...]`` so that a ``lax.scan`` over the leading axis passes the
state from chunk to chunk. Ragged lengths are padded with positions that leave the state
unchanged (zero keys, zero log-gates, the last segment id). :func:`linear_recurrence` is the
parallel scan of h_t = a_t h_{t-1} + b_t shared by the diagonal and selective state spaces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import check_positive, check_rank, check_shape
from jaxlm.ops.segments import pad_segments


def heads_first(x: jax.Array) -> jax.Array:
    """[batch, length, heads, ...] -> [batch, heads, length, ...]."""
    return jnp.moveaxis(x, 2, 1)


def heads_last(x: jax.Array) -> jax.Array:
    """[batch, heads, length, ...] -> [batch, length, heads, ...]."""
    return jnp.moveaxis(x, 1, 2)


def pad_length(x: jax.Array, padded: int, axis: int, value=0) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, padded - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def to_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[batch, heads, length, ...] (length a multiple of chunk) -> [n, batch, heads, chunk, ...]."""
    b, h, length = x.shape[:3]
    x = x.reshape(b, h, length // chunk, chunk, *x.shape[3:])
    return jnp.moveaxis(x, 2, 0)


def from_chunks(x: jax.Array) -> jax.Array:
    """[n, batch, heads, chunk, ...] -> [batch, heads, n * chunk, ...]."""
    x = jnp.moveaxis(x, 0, 2)
    return x.reshape(x.shape[0], x.shape[1], -1, *x.shape[4:])


def prepare_segments(segment_ids: jax.Array | None, batch: int, padded: int,
                     chunk: int) -> tuple[jax.Array, jax.Array]:
    """Per-chunk segment ids and the id each chunk's incoming state belongs to.

    Returns (seg [n, batch, chunk], seg_prev [n, batch]): ``seg_prev[c]`` is the id of the
    position just before chunk c (for the first chunk, the id of position 0, so an initial
    state belongs to the row's first document). Padding repeats the last id.
    """
    if segment_ids is None:
        seg = jnp.zeros((batch, padded), jnp.int32)
    else:
        seg = pad_segments(segment_ids.astype(jnp.int32), padded)
    prev = jnp.concatenate([seg[:, :1], seg[:, chunk - 1:-1:chunk]], axis=1)  # [batch, n]
    seg = jnp.moveaxis(seg.reshape(batch, padded // chunk, chunk), 1, 0)
    return seg, prev.T


def check_recurrent_inputs(op: str, q, k, v, *, chunk_size: int, segment_ids,
                           initial_state, state_dv: int) -> None:
    """Shape checks shared by the linear-attention and delta-rule ops."""
    check_rank(op, "q", q, "[batch, length, heads, d_k]")
    batch, length, heads, dk = q.shape
    check_shape(op, "k", k, (batch, length, heads, dk), "[batch, length, heads, d_k]")
    check_shape(op, "v", v, (batch, length, heads, None), "[batch, length, heads, d_v]")
    check_positive(op, "chunk_size", chunk_size, allow_none=False)
    if segment_ids is not None:
        check_shape(op, "segment_ids", segment_ids, (batch, length), "[batch, length]")
    if initial_state is not None:
        check_shape(op, "initial_state", initial_state, (batch, heads, dk, state_dv),
                    "[batch, heads, d_k, d_v]")


def prepare_qkv_state(q, k, v, scale, initial_state):
    """Common set-up: heads-first q (times ``scale``, default d_k ** -0.5), k, v and the
    initial state (zeros when None), all in the accumulation dtype (at least float32).
    Returns (q, k, v, state, acc_dtype)."""
    batch, _, heads, dk = q.shape
    acc = jnp.promote_types(jnp.result_type(q, k, v), jnp.float32)
    scale = dk ** -0.5 if scale is None else scale
    q, k, v = (heads_first(x).astype(acc) for x in (q, k, v))
    state = (jnp.zeros((batch, heads, dk, v.shape[-1]), acc) if initial_state is None
             else initial_state.astype(acc))
    return q * scale, k, v, state, acc


def linear_recurrence(decay: jax.Array, inputs: jax.Array, initial: jax.Array) -> jax.Array:
    """Every h_t of h_t = decay_t · h_{t-1} + inputs_t along axis 1, with h_{-1} = ``initial``,
    by a parallel associative scan. decay, inputs: [batch, length, ...] (decay broadcastable);
    initial: [batch, ...]. Returns [batch, length, ...]."""
    decay = jnp.broadcast_to(decay, inputs.shape)
    inputs = inputs.at[:, 0].add(decay[:, 0] * initial)  # fold the incoming state in

    def combine(left, right):
        return left[0] * right[0], right[0] * left[1] + right[1]

    return jax.lax.associative_scan(combine, (decay, inputs), axis=1)[1]
