"""Tensor (higher-order) attention: each query attends over pairs of keys ("How to Capture
Higher-order Correlations? Generalizing Matrix Softmax Attention to Kronecker Computation",
Alman and Song).

Given Q, K1, K2 [n, d] and V1, V2 [n, d_v] (per head), with ⊘ the column-wise Kronecker product,
``(K1 ⊘ K2)[(j, k), l] = K1[j, l] · K2[k, l]`` (an [n², d] matrix, and likewise V1 ⊘ V2):

    A   = exp(scale · Q (K1 ⊘ K2)^T)       [n, n²]
    D   = diag(A 1_{n²})
    out = D^{-1} A (V1 ⊘ V2)               [n, d_v]

i.e. ``out_i = Σ_{j,k} softmax_{(j,k)}(scale · Σ_l Q_il K1_jl K2_kl) · (V1_j ⊙ V2_k)``: the score
of a pair is a trilinear form, so one head can test a relation among three tokens (the query
and two keys), which softmax attention's bilinear score cannot (Sanford et al.'s Match3).
Causal: query i reads the pairs (j, k) with j <= i and k <= i (j = k and j = i included);
in a packed row, only pairs whose both tokens lie in the query's document.

Two forms:

* ``reference``: builds K1 ⊘ K2 [n², d] and V1 ⊘ V2 [n², d_v] as the paper defines them and runs
  masked softmax attention of Q over those n² keys: O(n³ d) time and O(n³) memory per head.
* ``xla``: the same sum without the Kronecker products, ``query_chunk`` queries at a time
  (a ``lax.map`` whose body is rematerialised in the backward pass): time O(n³ (d + d_v)) per
  head, memory O(query_chunk · n · (n + d + d_v)) per head forward and backward, so no [n, n, n]
  tensor exists unless query_chunk >= n.

Both are cubic in length: for small lengths only (the paper's near-linear algorithm needs
bounded entries and a polynomial approximation, which this module does not implement).
Layout: q, k1, k2 [batch, length, heads, head_dim], v1, v2 [batch, length, heads, v_head_dim].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import (accepts_numpy, as_floats, check_positive, check_rank, check_shape,
                              resolve_impl)
from jaxlm.ops.segments import document_ids

_OP = "tensor_attention"


def _check(q, k1, k2, v1, v2, segment_ids):
    check_rank(_OP, "q", q, "[batch, length, heads, head_dim]")
    batch, length, heads, head_dim = q.shape
    for name, x in (("k1", k1), ("k2", k2)):
        check_shape(_OP, name, x, (batch, length, heads, head_dim),
                    "[batch, length, heads, head_dim] like q")
    check_rank(_OP, "v1", v1, "[batch, length, heads, v_head_dim]")
    for name, x in (("v1", v1), ("v2", v2)):
        check_shape(_OP, name, x, (batch, length, heads, v1.shape[-1]),
                    "[batch, length, heads, v_head_dim] like v1")
    if segment_ids is not None:
        check_shape(_OP, "segment_ids", segment_ids, (batch, length), "[batch, length]")


def _pair_mask(q_pos, k_pos, seg_q, seg_k, causal):
    """bool [batch, q, n, n]: query q may read the pair (j, k)."""
    mask = jnp.ones((1, q_pos.shape[0], k_pos.shape[0], k_pos.shape[0]), bool)
    if causal:
        ok = k_pos[None, :] <= q_pos[:, None]  # [q, n]
        mask &= (ok[:, :, None] & ok[:, None, :])[None]
    if seg_q is not None:
        same = seg_q[:, :, None] == seg_k[:, None, :]  # [batch, q, n]
        mask &= same[:, :, :, None] & same[:, :, None, :]
    return mask


@accepts_numpy
def tensor_attention(q: jax.Array, k1: jax.Array, k2: jax.Array, v1: jax.Array, v2: jax.Array,
                     *, causal: bool = True, segment_ids: jax.Array | None = None,
                     scale: float | None = None, impl: str = "auto",
                     query_chunk: int = 64) -> jax.Array:
    """Tensor attention over pairs of keys (module docstring has the equations).

    q, k1, k2: [batch, length, heads, head_dim]; v1, v2: [batch, length, heads, v_head_dim];
    segment_ids: [batch, length] integers (packed rows) or None; ``scale`` multiplies the
    trilinear scores (default head_dim ** -0.5); ``impl``: "reference", "xla" or "auto"
    (= "xla"); ``query_chunk``: queries per step of the xla form.
    Returns [batch, length, heads, v_head_dim] in the inputs' result dtype.
    Raises ValueError naming the argument on a shape mismatch, an unknown impl or a
    non-positive query_chunk.
    """
    q, k1, k2, v1, v2 = as_floats(q, k1, k2, v1, v2)
    _check(q, k1, k2, v1, v2, segment_ids)
    check_positive(_OP, "query_chunk", query_chunk, allow_none=False)
    chosen = resolve_impl(_OP, impl, ("reference", "xla"))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    seg = document_ids(segment_ids)
    if chosen.value == "reference":
        return _reference(q, k1, k2, v1, v2, seg, causal, scale)
    return _chunked(q, k1, k2, v1, v2, seg, causal, scale, query_chunk)


def _reference(q, k1, k2, v1, v2, seg, causal, scale):
    """The paper's form: softmax attention of q over the n² keys K1 ⊘ K2, values V1 ⊘ V2."""
    batch, n, heads, _ = q.shape
    keys = (k1[:, :, None] * k2[:, None, :]).reshape(batch, n * n, heads, -1)  # K1 ⊘ K2
    values = (v1[:, :, None] * v2[:, None, :]).reshape(batch, n * n, heads, -1)  # V1 ⊘ V2
    pos = jnp.arange(n)
    mask = _pair_mask(pos, pos, seg, seg, causal).reshape(-1, 1, n, n * n)  # [b, 1, q, n²]
    scores = jnp.einsum("bqhd,bphd->bhqp", q, keys) * scale
    weights = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
    return jnp.einsum("bhqp,bphe->bqhe", weights, values)


def _chunked(q, k1, k2, v1, v2, seg, causal, scale, query_chunk):
    batch, n, heads, _ = q.shape
    chunk = min(query_chunk, n)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    q_pad = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    q_blocks = jnp.moveaxis(q_pad.reshape(batch, n_chunks, chunk, heads, -1), 1, 0)
    seg_blocks = None
    if seg is not None:
        seg_pad = jnp.pad(seg, ((0, 0), (0, pad)), constant_values=-1)
        seg_blocks = jnp.moveaxis(seg_pad.reshape(batch, n_chunks, chunk), 1, 0)
    starts = jnp.arange(n_chunks) * chunk

    @jax.checkpoint
    def block(args):
        q_c, seg_c, start = args
        q_pos = start + jnp.arange(chunk)
        mask = _pair_mask(q_pos, jnp.arange(n), seg_c, seg, causal)[:, None]  # [b, 1, c, n, n]
        qk1 = jnp.einsum("bqhd,bjhd->bhqjd", q_c, k1)
        scores = jnp.einsum("bhqjd,bkhd->bhqjk", qk1, k2) * scale
        scores = jnp.where(mask, scores, -jnp.inf)
        # padded queries past a document see no pair; keep them finite (they are dropped)
        peak = jnp.max(scores, axis=(-2, -1), keepdims=True)
        peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
        p = jnp.exp(scores - jax.lax.stop_gradient(peak))
        total = jnp.maximum(jnp.sum(p, axis=(-2, -1)), jnp.finfo(p.dtype).tiny)  # [b, h, c]
        pv2 = jnp.einsum("bhqjk,bkhe->bhqje", p, v2)
        out = jnp.einsum("bhqje,bjhe->bqhe", pv2, v1)
        return out / jnp.moveaxis(total, 1, 2)[..., None]

    out = jax.lax.map(block, (q_blocks, seg_blocks, starts))  # [chunks, b, c, h, e]
    out = jnp.moveaxis(out, 0, 1).reshape(batch, n_chunks * chunk, heads, -1)
    return out[:, :n]


@accepts_numpy
def tensor_attention_step(q_t: jax.Array, k1: jax.Array, k2: jax.Array, v1: jax.Array,
                          v2: jax.Array, valid: jax.Array, *,
                          scale: float | None = None) -> jax.Array:
    """One query against cached keys and values (the decoding form).

    q_t: [batch, heads, head_dim]; k1, k2: [batch, slots, heads, head_dim]; v1, v2:
    [batch, slots, heads, v_head_dim]; valid: bool [batch, slots], the cached tokens the
    query may pair (at least one per row). Returns [batch, heads, v_head_dim]:
    Σ_{j,k valid} softmax(scale · Σ_l q_l K1_jl K2_kl) V1_j ⊙ V2_k. O(slots² (d + d_v)) per
    head and step.
    """
    check_rank(_OP, "q_t", q_t, "[batch, heads, head_dim]")
    scale = q_t.shape[-1] ** -0.5 if scale is None else scale
    scores = jnp.einsum("bhd,bjhd->bhjd", q_t, k1)
    scores = jnp.einsum("bhjd,bkhd->bhjk", scores, k2) * scale
    pair = valid[:, None, :, None] & valid[:, None, None, :]
    scores = jnp.where(pair, scores, -jnp.inf)
    batch, heads, n, _ = scores.shape
    p = jax.nn.softmax(scores.reshape(batch, heads, n * n), axis=-1).reshape(scores.shape)
    return jnp.einsum("bhjk,bjhe,bkhe->bhe", p, v1, v2)
