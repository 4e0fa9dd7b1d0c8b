"""Shared plumbing of the chunkwise-parallel recurrent ops (linear attention, GLA, delta rule).

Inputs arrive channels-last, ``[batch, length, heads, ...]``; inside, the ops work on
``[chunks, batch, heads, chunk, ...]`` so that a ``lax.scan`` over the leading axis passes the
state from chunk to chunk. Ragged lengths are padded with positions that leave the state
unchanged (zero keys, zero log-gates, no cuts). :func:`linear_recurrence` is the
parallel scan of h_t = a_t h_{t-1} + b_t shared by the diagonal and selective state spaces.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import check_positive, check_rank, check_shape, guard_scan


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


def chunk_cuts(starts: jax.Array, log_decay: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Where nothing earlier reaches: a document start or a decay exp(log_decay) that is exactly
    0 (a log-gate of -inf, or below about -104 in float32). starts: bool [batch, length];
    log_decay: [batch, heads, length, ...] (per head or per channel). Returns (cuts, bool as
    log_decay; log_decay with 0 at the cuts): every partial sum of the cleaned log-decays is
    finite, so exp of a difference of two never meets inf - inf, and products across a cut
    are masked by comparing cut counts (``jnp.cumsum(cuts)``) instead."""
    starts = starts.reshape(starts.shape[:1] + (1,) + starts.shape[1:]
                            + (1,) * (log_decay.ndim - 3))
    cuts = starts | (jnp.exp(log_decay) == 0)
    return cuts, jnp.where(cuts, jnp.zeros((), log_decay.dtype), log_decay)


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


def prepare_qkv_state(q, k, v, scale, initial_state, *, keep_dtype: bool = False):
    """Common set-up: heads-first q (times ``scale``, default d_k ** -0.5), k, v and the
    initial state (zeros when None), all in the accumulation dtype (at least float32), or,
    with ``keep_dtype`` (the kernels, whose matrix units take bfloat16 operands), q, k, v in
    their common dtype. Returns (q, k, v, state, acc_dtype)."""
    batch, _, heads, dk = q.shape
    common = jnp.result_type(q, k, v)
    acc = jnp.promote_types(common, jnp.float32)
    scale = dk ** -0.5 if scale is None else scale
    q = heads_first(q).astype(acc) * scale
    q, k, v = (x.astype(common if keep_dtype else acc)
               for x in (q, heads_first(k), heads_first(v)))
    state = (jnp.zeros((batch, heads, dk, v.shape[-1]), acc) if initial_state is None
             else initial_state.astype(acc))
    return q, k, v, state, acc


def linear_recurrence(decay: jax.Array, inputs: jax.Array, initial: jax.Array) -> jax.Array:
    """Every h_t of h_t = decay_t · h_{t-1} + inputs_t along axis 1, with h_{-1} = ``initial``,
    by a parallel associative scan. decay, inputs: [batch, length, ...] (decay broadcastable);
    initial: [batch, ...]. Returns [batch, length, ...]."""
    decay = jnp.broadcast_to(decay, inputs.shape)
    inputs = inputs.at[:, 0].add(decay[:, 0] * initial)  # fold the incoming state in

    def combine(left, right):
        return left[0] * right[0], right[0] * left[1] + right[1]

    return jax.lax.associative_scan(combine, (decay, inputs), axis=1)[1]


def empty_result(q: jax.Array, v: jax.Array, initial_state: jax.Array | None
                 ) -> tuple[jax.Array, jax.Array]:
    """What a recurrent op returns for batch 0 or length 0: (o zeros [batch, length, heads,
    d_v] in v's dtype, the initial state, zeros when None, in the accumulation dtype)."""
    batch, length, heads, dk = q.shape
    acc = jnp.promote_types(jnp.result_type(q, v), jnp.float32)
    state = (jnp.zeros((batch, heads, dk, v.shape[-1]), acc) if initial_state is None
             else initial_state.astype(acc))
    return jnp.zeros((batch, length, heads, v.shape[-1]), v.dtype), state


def guard_nonfinite(run, q, k, v, gates, initial_state, doc):
    """``run(q, k, v, gates, initial_state) -> (out [batch, length, heads, d_v], final state
    [batch, heads, ...])`` on inputs whose non-finite entries are zeroed, with NaN set where a
    non-finite input reaches, per head, as in the recurrence itself
    (:func:`jaxlm.ops.checks.guard_scan`). So outputs before a NaN stay exact, in every form
    (a chunk's products would otherwise multiply later NaNs by masked zeros).

    q, k, v: [batch, length, heads, ...]; gates: ((array [batch, length, heads(, ...)] or None,
    allow_neg_inf), ...), where a log-gate of -inf is a valid full reset; doc: [batch, length]
    canonical document ids or None."""
    plain = [g if not neg_inf else None for g, neg_inf in gates]
    logs = [g if neg_inf else None for g, neg_inf in gates]
    (k, v, *plain), (q,), logs, initial_state, finish = guard_scan(
        [k, v, *plain], [q], logs, initial_state, doc, keep=3)
    cleaned = tuple(p if not neg_inf else g for p, g, (_, neg_inf) in zip(plain, logs, gates))
    return finish(*run(q, k, v, cleaned, initial_state))


def prefix_states(finals: jax.Array, transitions: jax.Array, initial: jax.Array,
                  apply: Callable[[jax.Array, jax.Array], jax.Array],
                  carried: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The state entering each of P pieces of a row and the state after the last, for a
    recurrence whose state is affine in the state it starts from (LASP-2's fold; the
    sequence-parallel ops and the kernels' split of a row across thread blocks use it).

    finals: [P, batch, ...] each chunk's final state from zero; transitions: [P, batch, ...]
    each chunk's linear map; ``apply(T, S)`` applies one; carried: bool [P, batch], False where
    a new document starts at a chunk's first position (the state entering it is zero).
    Returns (entering [P, batch, ...], last [batch, ...])."""
    if carried is None:
        carried = jnp.ones(finals.shape[:2], bool)

    def body(state, chunk):
        transition, final, keep = chunk
        state = jnp.where(keep.reshape(keep.shape + (1,) * (state.ndim - 1)), state, 0)
        return apply(transition, state) + final, state

    last, entering = jax.lax.scan(body, initial, (transitions, finals, carried))
    return entering, last
