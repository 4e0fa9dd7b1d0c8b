"""The chunked (gated) delta rule as a Pallas kernel: DeltaNet ("Parallelizing Linear
Transformers with the Delta Rule over Sequence Length") and Gated DeltaNet ("Gated Delta
Networks: Improving Mamba2 with Delta Rule").

Per program and chunk of C positions, with Γ[t, s] = e^{b_t - b_s} the decay between positions
of one document (b the running log-decay), γ_t = e^{b_t} and the UT transform
T = (I + tril_strict(diag(β) Γ ⊙ K Kᵀ))⁻¹ by forward substitution on chip:

    W = T diag(β) diag(γ) K,   U = T diag(β) V - W S
    O = diag(γ) Q S + (tril(Q Kᵀ) ⊙ Γ) U
    S' = γ_C S + Σ_s Γ[C, s] k_s u_sᵀ
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlm.kernels import blocks
from jaxlm.kernels import chunked, split
from jaxlm.kernels.chunked import Recurrence


def delta_chunk(state, consts, xs, *, inverse=blocks.unit_lower_inverse):
    """One chunk: xs = (q [C, d_k] (scaled), k [C, d_k], v [C, d_v], beta [C, 1],
    log_a [C, 1], starts [C, 1]); state [d_k, d_v]. Returns (o [C, d_v], new state).
    ``inverse`` computes (I + N)⁻¹ (blocked, on the matrix units); the backward kernel uses
    the one with a closed-form gradient. A log-decay whose e^a underflows (down to -inf) is a
    full reset, like a document start; a non-finite input at s reaches no output before s."""
    del consts
    q, k, v, beta, a, starts = xs
    acc = state.dtype
    size = q.shape[0]
    inclusive, strict = blocks.triangles(size, acc)
    a, hard = blocks.split_gates(a.astype(acc))
    starts = jnp.maximum(starts.astype(acc), hard)
    beta = beta.astype(acc)
    bad = blocks.bad_rows(k, v, beta, a)
    k, v, beta, a = (jnp.where(bad, 0, x).astype(x.dtype) for x in (k, v, beta, a))
    same, from_prev, to_end, keep = blocks.chunk_segments(starts, inclusive, strict)
    gamma_ts = jnp.where(same, jnp.exp(blocks.range_sums(a, inclusive, strict)), 0.0)
    b = blocks.dot(inclusive, a)
    gamma = jnp.where(from_prev, jnp.exp(b), 0.0)  # [C, 1]
    s_in = blocks.finite_or_zero(state)
    # masks by where, not by products with 0: an overflowing q·k of a masked pair stays out
    n = jnp.where(same & (strict > 0), beta * gamma_ts * blocks.dot_nt(k, k), 0.0)
    t = inverse(n)
    w = blocks.dot(t, beta * gamma * k)
    u = blocks.dot(t, beta * v) - blocks.dot(w, s_in)
    qk = jnp.where(same, blocks.dot_nt(q, k) * gamma_ts, 0.0)
    out = blocks.dot(gamma * q, s_in) + blocks.dot(qk, u)
    b_last = blocks.last_row(b)
    k_out = jnp.where(to_end, jnp.exp(b_last - b), 0.0) * k  # Γ[C, s] k_s
    carry = jnp.where(keep, jnp.exp(b_last), 0.0)  # γ_C: [1, 1]
    new = carry * s_in + blocks.dot_tn(k_out, u)
    return blocks.causal_nonfinite(out, state, new, same, bad, from_prev, to_end, keep)


_delta_chunk_for_grad = functools.partial(delta_chunk, inverse=blocks.unit_lower_inverse_vjp)


@functools.partial(jax.jit, static_argnames=("chunk", "interpret", "platform", "pieces"))
def gated_delta_rule(q: jax.Array, k: jax.Array, v: jax.Array, beta: jax.Array,
                     log_a: jax.Array, starts: jax.Array, state: jax.Array, *, chunk: int = 64,
                     interpret: bool = False, platform: str | None = None,
                     pieces: int | None = None) -> tuple[jax.Array, jax.Array]:
    """S_t = e^{log_a_t} (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ, o_t = q_tᵀ S_t.

    q (already scaled), k: [batch, heads, length, d_k]; v: [batch, heads, length, d_v];
    beta, log_a: [batch, heads, length] (log_a in [-inf, 0], -inf a full reset; zeros for the
    plain delta rule);
    starts: bool [batch, length], True where a packed document starts; state:
    [batch, heads, d_k, d_v], float32 or wider. q, k, v enter the matrix products in their own
    dtype. Any length works (padded with β = 0 positions, which leave the state unchanged).
    ``platform``: the backend to compile for (default: JAX's default; see
    :mod:`jaxlm.kernels.backend`): on TPU the chunk-pipelined Mosaic kernel; on a GPU the
    Mosaic GPU kernel where it takes the call (:func:`_mosaic_gpu_takes`), else the whole-row
    kernel through the Triton lowering. ``pieces``: on the Mosaic GPU path, cut each row into
    this many pieces that run as separate thread blocks (:func:`jaxlm.kernels.split.
    affine_recurrence`: about 2.5 times the work, so the default splits only where it gives
    at least 3 pieces: batch x heads x (d_v + d_k) / 64 thread blocks at most a third of the
    SM count).
    Returns (o [batch, heads, length, d_v] in v's dtype, final state in the state's dtype).
    """
    if _mosaic_gpu_takes(q, k, v, state, chunk, interpret, platform):
        from jaxlm.kernels.mosaic_gpu import delta_rule as mosaic_gpu

        batch, heads, length = q.shape[:3]
        if pieces is None:  # one thread block per 64 columns of d_v, and the split's first
            # pass runs d_v + d_k columns (the transitions beside the values)
            blocks = batch * heads * ((v.shape[-1] + q.shape[-1]) // 64)
            pieces = split.pieces_for(blocks, length, chunk)
            pieces = pieces if pieces >= 3 else 1
        run = functools.partial(mosaic_gpu.gated_delta_rule, chunk=chunk)
        return split.affine_recurrence(run, q, k, v, (beta, log_a), starts, state,
                                       pieces=pieces, chunk=chunk)
    batch, heads, length, dk = q.shape
    acc = state.dtype
    padded = -(-length // chunk) * chunk
    pad = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, padded - length), (0, 0)])
    flat = lambda x: pad(x.reshape(batch * heads, length, -1))
    seqs = (flat(q), flat(k), flat(v), flat(beta.astype(acc)), flat(log_a.astype(acc)),
            pad(starts.astype(acc)[..., None]))
    rec = Recurrence(delta_chunk, chunk, (1, 1, 1, 1, 1, heads), v.shape[-1],
                     "gated_delta_rule", interpret, platform, _delta_chunk_for_grad, v.dtype)
    out, final = chunked.run(rec, seqs, (), state.reshape(batch * heads, dk, -1))
    out = out[:, :length].reshape(batch, heads, length, -1)
    return out, final.reshape(state.shape)


def _mosaic_gpu_takes(q, k, v, state, chunk, interpret, platform) -> bool:
    """Whether a compiled GPU call goes to the Mosaic GPU (Hopper) kernel
    (:func:`jaxlm.kernels.mosaic_gpu.delta_rule.gated_delta_rule`): the conditions all Mosaic
    GPU kernels share (:func:`backend.mosaic_gpu_takes`) and buffers that fit in shared memory
    (d_k up to 192 in 16 bits)."""
    from jaxlm.kernels import backend

    if not backend.mosaic_gpu_takes(q, k, v, state, chunk, interpret, platform):
        return False
    from jaxlm.kernels.mosaic_gpu import delta_rule as mosaic_gpu

    return mosaic_gpu.fits(q.shape[-1], q.dtype.itemsize)
