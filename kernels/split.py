"""A row split into pieces that run as separate programs (thread blocks), for when
batch x heads is too small to fill the GPU.

A chunked-recurrence kernel runs one program per (batch row, head) and walks the row's chunks
in order, so at batch 1 and 16 heads it keeps 16 of an H100's 132 SMs busy. Every recurrence
here has a final state that is affine in the state it starts from,

    final = T(initial) + M,        outputs = outputs(from zero) + outputs(of the initial state),

so the row can be cut into P pieces that run at once from a zero state (P times the programs),
after which the pieces' affine maps are folded in order (:func:`jaxlm.ops.chunking.
prefix_states`, LASP-2's fold, "LASP-2: Rethinking Sequence Parallelism for Linear Attention
and Its Hybrid") and each piece's outputs are corrected by what its entering state
contributes:

* :func:`gated_linear_attention` (GLA / SSD, diagonal transitions) does the correction in
  closed form in XLA: with b_t the running log-decay from the piece's start,
  T = diag(e^{b_last}) and o_t += (q_t ⊙ e^{b_t}) S_in, one [length, d_k] x [d_k, d_v]
  product per piece: d_k d_v multiply-adds per position against the kernel's 2 C d + 2 d_k d_v
  (a third of its matrix work at d = 128 and chunks of C = 64), plus elementwise passes over
  [length, d_k] for per-channel gates;
* :func:`affine_recurrence` (the delta rule; any op linear in (v, state)) runs the kernel twice:
  once on v padded with d_k zero columns from the state [0 | I], which gives M and T together,
  and once with v = 0 from the entering states, which gives the correction: about 2.5 times one
  pass's work, spread over P times the programs.

Document starts and gates of -inf that fall inside a piece cut the entering state as the kernel
would (the kernels apply them themselves in the second pass; the closed form masks by them).
Lengths are padded to P pieces of whole chunks with positions that leave the state unchanged
(zero inputs, zero log-gates, beta = 0).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import check_positive
from jaxlm.ops.chunking import prefix_states

_F32 = jnp.float32
_SMS = 132  # streaming multiprocessors of an H100 / H200, when the device does not say


def pieces_for(programs: int, length: int, chunk: int, *, min_chunks: int = 4,
               cores: int | None = None) -> int:
    """How many pieces to cut each row into: as many as fit ``programs`` x pieces into one
    wave over the device's cores (SMs: ``cores``, default the first GPU's ``core_count``, else
    132; one thread block per SM, as the kernels' shared memory and registers allow), each
    piece at least ``min_chunks`` chunks long; 1 when the programs already fill a wave. A rule
    of thumb, not a measurement (experiments/device_check.py times both). Under ``vmap`` the
    mapped axis is not counted in ``programs``: pass ``pieces`` explicitly there."""
    if cores is None:
        device = jax.devices()[0]
        cores = getattr(device, "core_count", None) if device.platform == "gpu" else None
        cores = cores or _SMS
    if programs < 1 or programs >= cores:  # nothing to fill (batch 0), or already full
        return 1
    return max(1, min(cores // programs, length // (min_chunks * chunk)))


def _layout(pieces: int, chunk: int, length: int):
    """(piece length, padded length): pieces of whole chunks covering ``length``."""
    piece = -(-length // (pieces * chunk)) * chunk
    return piece, piece * pieces


def _to_pieces(x: jax.Array, pieces: int, padded: int) -> jax.Array:
    """[batch, heads, length, ...] -> [batch * pieces, heads, padded // pieces, ...], zero-padded."""
    batch, heads, length = x.shape[:3]
    x = jnp.pad(x, [(0, 0), (0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 3))
    x = x.reshape(batch, heads, pieces, padded // pieces, *x.shape[3:])
    return jnp.moveaxis(x, 2, 1).reshape(batch * pieces, heads, padded // pieces, *x.shape[4:])


def _from_pieces(x: jax.Array, batch: int, length: int) -> jax.Array:
    """The inverse of :func:`_to_pieces`, cut back to ``length``."""
    pieces = x.shape[0] // batch
    x = x.reshape(batch, pieces, *x.shape[1:])
    x = jnp.moveaxis(x, 1, 2)
    return x.reshape(batch, x.shape[1], -1, *x.shape[4:])[:, :, :length]


def _starts_to_pieces(starts: jax.Array, pieces: int, padded: int) -> jax.Array:
    batch, length = starts.shape
    starts = jnp.pad(starts, [(0, 0), (0, padded - length)])
    return starts.reshape(batch * pieces, padded // pieces)


def _by_piece(state: jax.Array, batch: int) -> jax.Array:
    """[batch * pieces, ...] -> [pieces, batch, ...] (the layout prefix_states folds over)."""
    return jnp.moveaxis(state.reshape(batch, -1, *state.shape[1:]), 1, 0)


def _cut_nonfinite(apply):
    """``apply(T, S)`` where a non-finite entry of S reaches the result only through a nonzero
    entry of T: a reset (T = 0) cuts a NaN state as it cuts any other."""
    def run(transition, state):
        finite = jnp.isfinite(state)
        out = apply(transition, jnp.where(finite, state, 0))
        reads = apply((transition != 0).astype(state.dtype), (~finite).astype(state.dtype))
        return jnp.where(reads > 0, jnp.nan, out)

    return run


def _diagonal(transition, state):  # transition [..., d_k, 1]: decays row i of the state
    return transition * state


def _matrix(transition, state):  # [..., d_k, d_k] @ [..., d_k, d_v]
    return jnp.einsum("...ij,...jv->...iv", transition, state,
                      precision=jax.lax.Precision.HIGHEST)


def gated_linear_attention(run: Callable, q: jax.Array, k: jax.Array, v: jax.Array,
                           log_g: jax.Array, starts: jax.Array, state: jax.Array, *,
                           pieces: int, chunk: int) -> tuple[jax.Array, jax.Array]:
    """Gated linear attention with each row cut into ``pieces`` programs.

    ``run(q, k, v, log_g, starts, state) -> (o, final)`` is a GLA kernel with the signature of
    :func:`jaxlm.kernels.linear_attention.gated_linear_attention` (shapes as there: q, k
    [batch, heads, length, d_k], v [batch, heads, length, d_v], log_g [batch, heads, length,
    1 or d_k] in [-inf, 0], starts bool [batch, length], state [batch, heads, d_k, d_v]
    float32). Returns what ``run`` returns on the whole row: (o in v's dtype, final state),
    equal up to the float32 rounding of the correction. Raises ValueError unless ``pieces``
    and ``chunk`` are positive integers.
    """
    batch, heads, length, _ = q.shape
    check_positive("split.gated_linear_attention", "pieces", pieces, allow_none=False)
    check_positive("split.gated_linear_attention", "chunk", chunk, allow_none=False)
    if pieces == 1 or q.size == 0:  # nothing to cut (batch, heads or length 0)
        return run(q, k, v, log_g, starts, state)
    piece, padded = _layout(pieces, chunk, length)
    split = lambda x: _to_pieces(x, pieces, padded)
    p_starts = _starts_to_pieces(starts, pieces, padded)
    zero = jnp.zeros((batch * pieces,) + state.shape[1:], state.dtype)
    o_local, finals = run(split(q), split(k), split(v), split(log_g), p_starts, zero)
    # The decay from each piece's start, cut (per channel) at a document start or -inf gate.
    acc = jnp.promote_types(state.dtype, _F32)  # float32, or float64 in the tests
    g = split(log_g).astype(acc)
    dead = jnp.isneginf(g)
    resets = dead | p_starts[:, None, :, None]
    live = jnp.cumsum(resets.astype(jnp.int32), axis=2) == 0
    b = jnp.cumsum(jnp.where(dead, 0.0, g), axis=2)
    decay = jnp.where(live, jnp.exp(jnp.where(live, b, 0.0)), 0.0)  # [B*P, H, piece, 1|d_k]
    transitions = jnp.swapaxes(decay[:, :, -1:], -1, -2)  # [B*P, H, 1|d_k, 1]
    entering, last = prefix_states(_by_piece(finals, batch), _by_piece(transitions, batch),
                                   state, _cut_nonfinite(_diagonal))
    entering = jnp.moveaxis(entering, 0, 1).reshape(zero.shape)
    s_in = jnp.where(jnp.isfinite(entering), entering, 0.0)
    q_in = (split(q).astype(acc) * decay).astype(q.dtype)
    correction = jnp.einsum("bhtk,bhkv->bhtv", q_in, s_in.astype(q.dtype),
                            preferred_element_type=acc)
    # a non-finite entering row reaches the positions that still read it
    bad_rows = jnp.any(~jnp.isfinite(entering), axis=-1)[:, :, None, :]  # [B*P, H, 1, d_k]
    reads = jnp.any(bad_rows & (decay > 0), axis=-1, keepdims=True)
    out = jnp.where(reads, jnp.nan, o_local.astype(acc) + correction).astype(o_local.dtype)
    return _from_pieces(out, batch, length), last


def affine_recurrence(run: Callable, q: jax.Array, k: jax.Array, v: jax.Array,
                      gates: tuple[jax.Array, ...], starts: jax.Array, state: jax.Array, *,
                      pieces: int, chunk: int) -> tuple[jax.Array, jax.Array]:
    """Any chunked recurrence linear in (v, state) with each row cut into ``pieces`` programs.

    ``run(q, k, v, *gates, starts, state) -> (o, final)``: e.g.
    :func:`jaxlm.kernels.delta_rule.gated_delta_rule` with gates = (beta, log_a), each
    [batch, heads, length] or [batch, heads, length, ...]; q, k [batch, heads, length, d_k],
    v [batch, heads, length, d_v], starts bool [batch, length], state [batch, heads, d_k, d_v]
    float32; zero-padded positions must leave the state unchanged (beta = 0). Returns what
    ``run`` returns on the whole row, equal up to rounding. Raises ValueError unless
    ``pieces`` and ``chunk`` are positive integers.
    """
    batch, heads, length, dk = q.shape
    check_positive("split.affine_recurrence", "pieces", pieces, allow_none=False)
    check_positive("split.affine_recurrence", "chunk", chunk, allow_none=False)
    if pieces == 1 or q.size == 0:  # nothing to cut (batch, heads or length 0)
        return run(q, k, v, *gates, starts, state)
    dv = v.shape[-1]
    piece, padded = _layout(pieces, chunk, length)
    split = lambda x: _to_pieces(x, pieces, padded)
    p_starts = _starts_to_pieces(starts, pieces, padded)
    q_p, k_p, v_p = split(q), split(k), split(v)
    gates_p = tuple(split(g) for g in gates)
    programs = batch * pieces
    # One pass gives M (columns :d_v, from zero with v) and T (columns d_v:, from I with v = 0).
    wide_v = jnp.concatenate([v_p, jnp.zeros(v_p.shape[:-1] + (dk,), v.dtype)], axis=-1)
    eye = jnp.broadcast_to(jnp.eye(dk, dtype=state.dtype), (programs, heads, dk, dk))
    wide_state = jnp.concatenate(
        [jnp.zeros((programs, heads, dk, dv), state.dtype), eye], axis=-1)
    o_wide, fin_wide = run(q_p, k_p, wide_v, *gates_p, p_starts, wide_state)
    o_local, finals, transitions = o_wide[..., :dv], fin_wide[..., :dv], fin_wide[..., dv:]
    entering, last = prefix_states(_by_piece(finals, batch), _by_piece(transitions, batch),
                                   state, _cut_nonfinite(_matrix))
    entering = jnp.moveaxis(entering, 0, 1).reshape(programs, heads, dk, dv)
    o_state, _ = run(q_p, k_p, jnp.zeros_like(v_p), *gates_p, p_starts, entering)
    acc = jnp.promote_types(state.dtype, _F32)
    out = (o_local.astype(acc) + o_state.astype(acc)).astype(o_local.dtype)
    return _from_pieces(out, batch, length), last
