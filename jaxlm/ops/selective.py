"""Selective state spaces: Mamba's selective scan and Mamba-2's SSD.

"Mamba: Linear-Time Sequence Modeling with Selective State Spaces" and "Transformers are SSMs:
Generalized Models and Efficient Algorithms Through Structured State Space Duality". Layout is
channels-last (``[batch, length, channels]``), unlike the CUDA kernels' channels-first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops import chunking as ch
from jaxlm.ops.checks import (Impl, accepts_numpy, as_floats, auto_kernel, check_positive,
                              check_rank, check_shape, guard_scan, resolve_impl)
from jaxlm.ops.linear_attention import gated_linear_attention
from jaxlm.ops.segments import document_ids, segment_starts

DEFAULT_CHUNK = 64


# "auto" on CPU: up to this length the sequential scan beats the chunked one, forward and
# backward (measured at batch 2-32, d_inner 128, d_state 16: 2.3x faster at length 64).
_AUTO_REFERENCE_MAX_LENGTH = 1024


@accepts_numpy
def selective_scan(u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                   D: jax.Array | None = None, z: jax.Array | None = None,
                   delta_bias: jax.Array | None = None, delta_softplus: bool = False, *,
                   initial_state: jax.Array | None = None, return_final_state: bool = False,
                   segment_ids: jax.Array | None = None, chunk_size: int = DEFAULT_CHUNK,
                   impl: str | Impl = "auto"):
    """Mamba's selective scan (the semantics of ``selective_scan_fn``, channels-last).

    With Δ = delta (+ delta_bias, then softplus when ``delta_softplus``):
        h_t[d, n] = exp(Δ_t[d] A[d, n]) h_{t-1}[d, n] + Δ_t[d] B_t[n] u_t[d]
        y_t[d] = Σ_n C_t[n] h_t[d, n] + D[d] u_t[d],   then y ← y · silu(z) when z is given.

    Args:
      u, delta, z: [batch, length, d_inner].
      A: [d_inner, d_state] (negative real parts for a stable scan).
      B, C: [batch, length, d_state] or [batch, length, groups, d_state]; channel d reads group
        d // (d_inner / groups).
      D, delta_bias: [d_inner].
      initial_state: [batch, d_inner, d_state]; zeros when None.
      segment_ids: [batch, length]; the state resets where a packed document (a maximal run of
        equal ids: [0, 1, 0] are three documents) starts.
      chunk_size: chunk length of the xla form (a parallel associative scan inside each chunk,
        recomputed in the backward pass, so memory grows with one chunk's
        [batch, chunk, d_inner, d_state], not with the sequence).
      impl: "reference" (sequential scan), "xla" (chunked associative scan), "pallas" (the
        kernel of :mod:`jaxlm.kernels.selective_scan`, one group of B and C, on a Hopper GPU
        its Mosaic GPU form where that takes the call; "pallas_interpret" runs it interpreted) or "auto" (the reference on CPU up to length 1024, where its loop
        is cheaper forward and backward; else xla).

    Returns:
      y [batch, length, d_inner] in u's dtype (integer inputs are promoted to the default
      float), and the final state [batch, d_inner, d_state] (accumulation dtype) when
      ``return_final_state``. Δ·A = -inf (a full reset) is exact in every form. Causal also
      under non-finite inputs: a NaN or Inf at s sets NaN in the outputs from s on of its
      document, never earlier ones, and their gradients stay finite. Length 0 or batch 0
      gives the empty result.
    """
    op = "selective_scan"
    u, delta, A, B, C, D, z, delta_bias, initial_state = as_floats(
        u, delta, A, B, C, D, z, delta_bias, initial_state)
    check_rank(op, "u", u, "[batch, length, d_inner]")
    batch, length, d_inner = u.shape
    check_shape(op, "delta", delta, (batch, length, d_inner), "[batch, length, d_inner]")
    check_rank(op, "A", A, "[d_inner, d_state]")
    check_shape(op, "A", A, (d_inner, None), "[d_inner, d_state]")
    d_state = A.shape[1]
    B = _grouped(op, "B", B, batch, length, d_inner, d_state)
    C = _grouped(op, "C", C, batch, length, d_inner, d_state)
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None:
            check_shape(op, name, x, (d_inner,), "[d_inner]")
    if z is not None:
        check_shape(op, "z", z, (batch, length, d_inner), "[batch, length, d_inner]")
    if initial_state is not None:
        check_shape(op, "initial_state", initial_state, (batch, d_inner, d_state),
                    "[batch, d_inner, d_state]")
    if segment_ids is not None:
        check_shape(op, "segment_ids", segment_ids, (batch, length), "[batch, length]")
    check_positive(op, "chunk_size", chunk_size, allow_none=False)
    chosen = resolve_impl(op, impl, ("reference", "xla", "pallas"))
    if B.shape[2] == 1:  # the kernels take one group; measured per d_state
        chosen = auto_kernel(op, chosen, u.dtype, length, d_state)
    if chosen.is_pallas and B.shape[2] > 1:
        raise ValueError(f"{op}: impl={chosen.value!r} takes one group of B and C "
                         f"([batch, length, d_state]), got groups={B.shape[2]}")
    if chosen is Impl.AUTO:
        short_on_cpu = jax.default_backend() == "cpu" and length <= _AUTO_REFERENCE_MAX_LENGTH
        chosen = Impl.REFERENCE if short_on_cpu else Impl.XLA

    doc = document_ids(segment_ids)
    (u, delta, B), (C, z), _, initial_state, finish = guard_scan(
        [u, delta, B], [C, z], [], initial_state, doc, keep=2)
    acc = jnp.promote_types(jnp.result_type(u, delta, A, B, C), jnp.float32)
    dt = delta.astype(acc) + (0 if delta_bias is None else delta_bias.astype(acc))
    if delta_softplus:
        dt = jax.nn.softplus(dt)
    A = finite_rate(A, acc)
    state = (jnp.zeros((batch, d_inner, d_state), acc) if initial_state is None
             else initial_state.astype(acc))
    if batch == 0 or length == 0:
        y = jnp.zeros(u.shape, u.dtype)
        return (y, state) if return_final_state else y
    starts = segment_starts(doc, batch, length)
    # Per-token decay and input: [batch, length, d_inner, d_state] (formed a chunk at a time).
    parts = (dt, u.astype(acc), B.astype(acc), C.astype(acc), starts)
    if chosen is Impl.REFERENCE:
        y, state = _scan_reference(parts, A, state)
    elif chosen.is_pallas:
        from jaxlm.kernels.selective_scan import selective_scan as kernel

        y, state = kernel(u, dt, A, B[:, :, 0], C[:, :, 0], starts, state,
                          interpret=chosen.interpret)
    else:
        y, state = _scan_chunked(parts, A, state, max(1, min(chunk_size, length)))
    if D is not None:
        y = y + D.astype(acc) * u.astype(acc)
    if z is not None:
        y = y * jax.nn.silu(z.astype(acc))
    y, state = finish(y, state)
    y = y.astype(u.dtype)
    return (y, state) if return_final_state else y


def finite_rate(A: jax.Array, acc) -> jax.Array:
    """A in ``acc`` with -inf replaced by the most negative finite value: exp(Δ·A) is still 0
    (a full reset) for every Δ above about 3e-37 in float32 (4e-306 in float64), but Δ = 0
    (the chunked forms' padding) gives exp(0) = 1 instead of exp(0·(-inf)) = NaN, and the
    gradient of exp(Δ·A) in Δ is 0·A = 0 instead of 0·(-inf) = NaN. Finite A is unchanged
    (gradient 1); the gradient at -inf is 0."""
    A = A.astype(acc)
    return jnp.where(jnp.isneginf(A), jnp.finfo(acc).min, A)


def _grouped(op, name, x, batch, length, d_inner, d_state):
    """B or C as [batch, length, d_inner, d_state] views' source: [batch, length, groups, n]."""
    if x.ndim == 3:
        check_shape(op, name, x, (batch, length, d_state), "[batch, length, d_state]")
        return x[:, :, None]
    check_shape(op, name, x, (batch, length, None, d_state),
                "[batch, length, groups, d_state]")
    groups = x.shape[2]
    if d_inner % groups:
        raise ValueError(f"{op}: {name} has groups={groups}, which must divide "
                         f"d_inner={d_inner}")
    return x


def _expand(x, d_inner):
    """[..., groups, n] -> [..., d_inner, n] (channel d reads group d // (d_inner / groups))."""
    return jnp.repeat(x, d_inner // x.shape[-2], axis=-2)


def _decay_and_input(dt, u, B, A):
    """exp(Δ A) and Δ B u: both [..., d_inner, d_state]."""
    return jnp.exp(dt[..., None] * A), (dt * u)[..., None] * _expand(B, u.shape[-1])


@accepts_numpy
def selective_scan_step(state: jax.Array, u: jax.Array, dt: jax.Array, A: jax.Array,
                        B: jax.Array, C: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One token: state [batch, d_inner, d_state]; u, dt: [batch, d_inner] (dt already
    positive); B, C: [batch, groups, d_state]. Returns (y [batch, d_inner] without the D and z
    terms, new state). A = -inf is a full reset, as in :func:`selective_scan`
    (:func:`finite_rate`)."""
    decay, inp = _decay_and_input(dt, u, B, finite_rate(A, A.dtype))
    state = decay * state + inp
    return jnp.einsum("bdn,bdn->bd", state, _expand(C, u.shape[-1])), state


def _scan_reference(parts, A, state):
    """Token by token: the definition."""
    dt, u, B, C, starts = parts

    def step(h, x):
        dt_t, u_t, B_t, C_t, start_t = x
        y_t, h = selective_scan_step(jnp.where(start_t[:, None, None], 0.0, h), u_t, dt_t, A,
                                     B_t, C_t)
        return h, y_t

    state, y = jax.lax.scan(step, state, tuple(jnp.moveaxis(x, 1, 0) for x in parts))
    return jnp.moveaxis(y, 0, 1), state


def _scan_chunked(parts, A, state, chunk):
    dt, u, B, C, starts = parts
    batch, length, _ = u.shape
    padded = -(-length // chunk) * chunk
    # Padding: Δ = 0 gives decay 1 and input 0, so the state passes through unchanged.
    parts = tuple(ch.pad_length(x, padded, 1) for x in parts)
    chunks = tuple(jnp.moveaxis(x.reshape(batch, padded // chunk, chunk, *x.shape[2:]), 1, 0)
                   for x in parts)

    @jax.checkpoint
    def one_chunk(h, x):
        dt_c, u_c, B_c, C_c, starts_c = x
        decay, inp = _decay_and_input(dt_c, u_c, B_c, A)  # [b, chunk, d, n]
        decay = jnp.where(starts_c[..., None, None], 0.0, decay)  # a document starts: reset
        states = ch.linear_recurrence(decay, inp, h)
        y = jnp.einsum("bldn,bldn->bld", states, _expand(C_c, u_c.shape[-1]))
        return states[:, -1], y

    state, y = jax.lax.scan(one_chunk, state, chunks)
    y = jnp.moveaxis(y, 0, 1).reshape(batch, padded, -1)[:, :length]
    return y, state


@accepts_numpy
def ssd(x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, *,
        chunk_size: int = DEFAULT_CHUNK, D: jax.Array | None = None,
        initial_state: jax.Array | None = None, return_final_state: bool = False,
        segment_ids: jax.Array | None = None, impl: str | Impl = "auto"):
    """Mamba-2's state-space duality (SSD) layer:

        h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t,    y_t = h_t C_t + D x_t.

    Args:
      x: [batch, length, heads, head_dim]; dt: [batch, length, heads] (already positive);
      A: [heads] (negative); B, C: [batch, length, groups, d_state], groups dividing heads
      (head h reads group h // (heads / groups)); D: [heads].
      chunk_size, initial_state [batch, heads, head_dim, d_state], return_final_state,
      segment_ids [batch, length]: as in :func:`gated_linear_attention` (a document is a
      maximal run of equal ids).
      impl: "reference" (sequential scan) or "xla" (chunked: quadratic inside a chunk, a scan
        over chunk states; it is gated linear attention with q = C, k = B, v = dt·x and one
        log-decay dt·A per head), "pallas" / "pallas_interpret" (that gated linear attention
        as a kernel) or "auto" (xla).

    Returns:
      y [batch, length, heads, head_dim] in x's dtype (integer inputs: the default float),
      and the final state [batch, heads, head_dim, d_state] when ``return_final_state``.
      dt·A = -inf (a full reset) or any value down to it is exact in every form; causal also
      under non-finite inputs (as :func:`gated_linear_attention`). Length 0 or batch 0 gives
      the empty result.
    """
    op = "ssd"
    x, dt, A, B, C, D, initial_state = as_floats(x, dt, A, B, C, D, initial_state)
    segment_ids = document_ids(segment_ids)
    check_rank(op, "x", x, "[batch, length, heads, head_dim]")
    batch, length, heads, head_dim = x.shape
    check_shape(op, "dt", dt, (batch, length, heads), "[batch, length, heads]")
    check_shape(op, "A", A, (heads,), "[heads]")
    check_rank(op, "B", B, "[batch, length, groups, d_state]")
    check_shape(op, "C", C, B.shape, "[batch, length, groups, d_state] (as B)")
    groups, d_state = B.shape[2], B.shape[3]
    check_shape(op, "B", B, (batch, length, groups, d_state), "[batch, length, groups, d_state]")
    if heads % groups:
        raise ValueError(f"{op}: B and C have groups={groups}, which must divide heads={heads}")
    if D is not None:
        check_shape(op, "D", D, (heads,), "[heads]")
    check_positive(op, "chunk_size", chunk_size, allow_none=False)
    if initial_state is not None:
        check_shape(op, "initial_state", initial_state, (batch, heads, head_dim, d_state),
                    "[batch, heads, head_dim, d_state]")
    chosen = resolve_impl(op, impl, ("reference", "xla", "pallas"))
    (x, dt, B), (C,), _, initial_state, finish = guard_scan(
        [x, dt, B], [C], [], initial_state, segment_ids, keep=2)
    acc = jnp.promote_types(jnp.result_type(x, dt, A, B, C), jnp.float32)
    q = jnp.repeat(C, heads // groups, axis=2).astype(acc)
    k = jnp.repeat(B, heads // groups, axis=2).astype(acc)
    v = (dt[..., None] * x).astype(acc)
    log_g = dt.astype(acc) * finite_rate(A, acc)
    if chosen is Impl.REFERENCE:
        y, state = _ssd_reference(q, k, v, log_g, segment_ids, initial_state, acc)
    else:  # gated linear attention keeps its state as [.., d_state, head_dim]: transpose
        swap = lambda s: None if s is None else jnp.swapaxes(s, -1, -2)
        y, state = gated_linear_attention(q, k, v, log_g, scale=1.0, chunk_size=chunk_size,
                                          initial_state=swap(initial_state),
                                          return_final_state=True, segment_ids=segment_ids,
                                          impl=chosen.value if chosen.is_pallas else "xla")
        state = swap(state)
    if D is not None:
        y = y + D.astype(acc)[:, None] * x.astype(acc)
    y, state = finish(y, state)
    y = y.astype(x.dtype)
    return (y, state) if return_final_state else y


def _ssd_reference(c, b, v, log_g, segment_ids, state, acc):
    """The SSD recurrence token by token, state [batch, heads, head_dim, d_state]."""
    batch, length, heads, d_state = b.shape
    head_dim = v.shape[-1]
    h = (jnp.zeros((batch, heads, head_dim, d_state), acc) if state is None
         else state.astype(acc))
    starts = segment_starts(segment_ids, batch, length).T  # time-major, as the scan reads

    def step(h, inputs):
        c_t, b_t, v_t, g_t, start_t = inputs
        decay = jnp.where(start_t[:, None], 0.0, jnp.exp(g_t))
        h = decay[..., None, None] * h + v_t[..., :, None] * b_t[..., None, :]
        return h, jnp.einsum("bhpn,bhn->bhp", h, c_t)

    xs = (*(jnp.moveaxis(t, 1, 0) for t in (c, b, v, log_g)), starts)
    h, y = jax.lax.scan(step, h, xs)
    return jnp.moveaxis(y, 0, 1), h
