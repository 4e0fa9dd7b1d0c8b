"""Chunked gated linear attention as a Pallas kernel: GLA ("Gated Linear Attention Transformers
with Hardware-Efficient Training"), Mamba-2's SSD ("Transformers are SSMs") and plain linear
attention are its cases (per-channel, per-head and no decay).

Per program (one batch row and head) and chunk of C positions, with b_t the running sum of the
log-gates inside the chunk and S the incoming state [d_k, d_v]:

    o_t = Σ_{s <= t} (q_t · (k_s ⊙ e^{b_t - b_s})) v_s + (q_t ⊙ e^{b_t}) S
    S'  = diag(e^{b_C}) S + Σ_s (k_s ⊙ e^{b_C - b_s}) v_sᵀ

the intra-chunk part on the matrix units, the state passed between chunks on chip. Inside a
chunk, document starts (packed rows) cut the sums and reset the state.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlm.kernels import blocks
from jaxlm.kernels import chunked
from jaxlm.kernels.chunked import Recurrence


def gla_chunk(state, consts, xs):
    """One chunk: xs = (q [C, d_k] (scaled), k [C, d_k], v [C, d_v], log_g [C, 1 or d_k],
    starts [C, 1]); state [d_k, d_v]. Returns (o [C, d_v], new state).

    q, k, v keep their dtype as matrix-product operands (bfloat16 on the matrix units, float32
    accumulation); gates, decays and the state are in the state's dtype. A gate whose e^g
    underflows (down to -inf) is a full reset of its channel, exact; a non-finite input at s
    reaches no output before s (:func:`~jaxlm.kernels.blocks.causal_nonfinite`).
    """
    del consts
    q, k, v, g, starts = xs
    acc = state.dtype
    size = q.shape[0]
    inclusive, strict = blocks.triangles(size, acc)
    g, hard = blocks.split_gates(g.astype(acc))
    per_head = g.shape[1] == 1
    starts = starts.astype(acc)
    if per_head:  # a zero decay of the whole head cuts the sums like a document start
        starts = jnp.maximum(starts, hard)
    bad = blocks.bad_rows(k, v, g)
    k, v, g = (jnp.where(bad, 0, x).astype(x.dtype) for x in (k, v, g))
    same, from_prev, to_end, keep = blocks.chunk_segments(starts, inclusive, strict)
    b = blocks.dot(inclusive, g)  # running log-decay [C, dg]
    b_last = blocks.last_row(b)
    if per_head:  # a [C, C] decay matrix; the scores on the matrix units
        decay = jnp.exp(jnp.where(same, blocks.range_sums(g, inclusive, strict), -jnp.inf))
        scores = jnp.where(same, blocks.dot_nt(q, k) * decay, 0.0)  # inf · 0 stays out
        q_live, k_live, carry_live = from_prev, to_end, keep
    else:  # per channel: [C, C, d_k]; a channel's resets cut only that channel
        cuts = blocks.dot(inclusive, hard)  # resets seen up to t, per channel
        cuts_last = blocks.last_row(cuts)
        live = same[:, :, None] & (cuts[:, None, :] == cuts[None, :, :])
        gap = jnp.where(live, b[:, None, :] - b[None, :, :], -jnp.inf)
        scores = jnp.sum(jnp.where(live, q[:, None, :].astype(acc) * k[None, :, :]
                                   * jnp.exp(gap), 0.0), axis=-1)
        q_live, k_live = from_prev & (cuts == 0), to_end & (cuts == cuts_last)
        carry_live = keep & (cuts_last == 0)
    s_in = blocks.finite_or_zero(state)
    q_in = jnp.where(q_live, q * jnp.exp(b), 0.0)
    out = blocks.dot(scores.astype(v.dtype), v) + blocks.dot(q_in, s_in)
    k_out = jnp.where(k_live, k * jnp.exp(b_last - b), 0.0).astype(k.dtype)
    carry = jnp.where(carry_live, jnp.exp(b_last), 0.0)  # [1, dg]
    carry = carry if per_head else carry.T  # [dk, 1]: decays row k of the state
    new = carry * s_in + blocks.dot_tn(k_out, v)
    return blocks.causal_nonfinite(out, state, new, same, bad, from_prev, to_end, keep)


@functools.partial(jax.jit, static_argnames=("chunk", "interpret", "platform"))
def gated_linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, log_g: jax.Array,
                           starts: jax.Array, state: jax.Array, *, chunk: int = 64,
                           interpret: bool = False, platform: str | None = None
                           ) -> tuple[jax.Array, jax.Array]:
    """Gated linear attention, S_t = diag(e^{log_g_t}) S_{t-1} + k_t v_tᵀ, o_t = q_tᵀ S_t.

    q (already scaled), k: [batch, heads, length, d_k]; v: [batch, heads, length, d_v];
    log_g: [batch, heads, length, 1 or d_k] (in [-inf, 0]; -inf is a full reset); starts: bool
    [batch, length], True where a packed document starts (the state resets); state:
    [batch, heads, d_k, d_v], float32 or wider. q, k, v enter the matrix products in their own
    dtype (bfloat16 or float16 on the matrix units), with accumulation in the state's dtype.
    Any length works (padded to a multiple of ``chunk`` with positions that leave the state
    unchanged). ``platform``: the backend to compile for (default: JAX's default; see
    :mod:`jaxlm.kernels.backend`): on TPU the chunk-pipelined Mosaic kernel; on a GPU the
    Mosaic GPU kernels where they take the call (per-head or per-channel decay, 16-bit
    inputs, head dims multiples of 64, chunks of 64), else the whole-row kernel through the
    Triton lowering. Returns
    (o [batch, heads, length, d_v] in v's dtype, final state in the state's dtype).
    """
    if _mosaic_gpu_takes(q, k, v, log_g, state, chunk, interpret, platform):
        if log_g.shape[-1] == 1:
            from jaxlm.kernels.mosaic_gpu import linear_attention as mosaic_gpu
        else:
            from jaxlm.kernels.mosaic_gpu import gla_per_channel as mosaic_gpu

        return mosaic_gpu.gated_linear_attention(q, k, v, log_g, starts, state, chunk=chunk)
    batch, heads, length, dk = q.shape
    acc = state.dtype
    padded = -(-length // chunk) * chunk
    pad = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, padded - length), (0, 0)])
    flat = lambda x: pad(x.reshape(batch * heads, length, x.shape[-1]))
    seqs = (flat(q), flat(k), flat(v), flat(log_g.astype(acc)),
            pad(starts.astype(acc)[..., None]))
    rec = Recurrence(gla_chunk, chunk, (1, 1, 1, 1, heads), v.shape[-1],
                     "gated_linear_attention", interpret, platform, out_dtype=v.dtype)
    out, final = chunked.run(rec, seqs, (), state.reshape(batch * heads, dk, -1))
    out = out[:, :length].reshape(batch, heads, length, -1)
    return out, final.reshape(state.shape)


def _mosaic_gpu_takes(q, k, v, log_g, state, chunk, interpret, platform) -> bool:
    """Whether a compiled GPU call goes to a Mosaic GPU (Hopper) kernel: one decay per head
    (:mod:`~jaxlm.kernels.mosaic_gpu.linear_attention`) or per channel
    (:mod:`~jaxlm.kernels.mosaic_gpu.gla_per_channel`), and the conditions all Mosaic GPU
    kernels share (:func:`backend.mosaic_gpu_takes`). Otherwise the whole-row kernel runs
    (Triton lowering). Both Mosaic GPU kernels keep this kernel's contract for -inf gates (per
    head, or per channel: only that channel resets) and document starts; non-finite q, k, v or
    states are not theirs to handle (the ops zero them first,
    :func:`jaxlm.ops.chunking.guard_nonfinite`)."""
    from jaxlm.kernels import backend

    return log_g.shape[-1] in (1, q.shape[-1]) and backend.mosaic_gpu_takes(
        q, k, v, state, chunk, interpret, platform)
