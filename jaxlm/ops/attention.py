"""Softmax attention ("Attention Is All You Need") with causal, sliding-window and packed masks.

Two forms compute the same function:

* ``reference``: materializes the ``[length, length]`` scores; exact and easy to read.
* ``xla``: blockwise online softmax ("FlashAttention: Fast and Memory-Efficient Exact Attention
  with IO-Awareness") in plain JAX. No ``[length, length]`` tensor exists, forward or backward:
  a ``custom_vjp`` saves only the output and the log-sum-exp and recomputes each block in the
  backward pass. Blocks that the mask rules out entirely (future blocks, blocks outside the
  window) are never visited.

Layout is channels-last: q ``[batch, length, heads, head_dim]``, k and v
``[batch, length, kv_heads, head_dim]``, grouped-query attention when ``kv_heads`` divides
``heads`` (query head ``h`` reads kv head ``h // (heads // kv_heads)``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import (Impl, accepts_numpy, as_floats, check_positive, check_qkv,
                              check_shape, nonfinite_reach, poison, resolve_impl, split_nonfinite)
from jaxlm.ops.segments import document_ids

_OP = "attention"


@accepts_numpy
def attention_mask(q_pos: jax.Array, k_pos: jax.Array, *, causal: bool, window: int | None,
                   q_segment: jax.Array | None = None,
                   k_segment: jax.Array | None = None) -> jax.Array:
    """Which keys each query may read.

    q_pos: [..., q_len] and k_pos: [..., k_len] integer positions (broadcastable leading axes);
    q_segment / k_segment: matching canonical document ids
    (:func:`jaxlm.ops.segments.document_ids`: equal ids mean one document) or None.
    Returns bool [..., q_len, k_len]. With ``causal``, query i reads keys j <= i; with
    ``window=w``, also i - w < j (and, when not causal, j < i + w); keys of another document
    are never read.
    """
    qp = q_pos[..., :, None]
    kp = k_pos[..., None, :]
    mask = jnp.ones(jnp.broadcast_shapes(qp.shape, kp.shape), dtype=bool)
    if causal:
        mask &= kp <= qp
    if window is not None:
        mask &= (qp - kp < window) & (kp - qp < window)
    if q_segment is not None:
        mask &= q_segment[..., :, None] == k_segment[..., None, :]
    return mask


@accepts_numpy
def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                     scale: float, bias: jax.Array | None = None) -> jax.Array:
    """Materialized attention for an explicit mask (also the KV-cache decode path and the
    reference of the sparse-attention ops).

    q: [batch, q_len, heads, d]; k: [batch, k_len, kv_heads, d]; v: [batch, k_len, kv_heads, dv];
    mask: bool [batch, q_len, k_len] (every head), or [batch, heads, q_len, k_len] (per head;
    batch or heads may be 1 to broadcast). A query whose row allows no key gets 0.
    bias: float [batch, q_len, k_len] added to every head's scores (e.g. MrT5's soft deletion).
    Returns [batch, q_len, heads, dv] in q's dtype; scores and softmax run in at least float32.
    A non-finite q, k or v entry sets NaN only in the outputs whose mask reads it (the mask is
    applied with ``where``, never as a product with zeros, forward and backward).
    """
    q, q_bad = split_nonfinite(q, 3)  # [batch, q_len, heads]
    k, k_bad = split_nonfinite(k, 3)
    v, v_bad = split_nonfinite(v, 3)
    batch, q_len, heads, _ = q.shape
    kv_heads = k.shape[2]
    acc = jnp.promote_types(q.dtype, jnp.float32)
    qg = q.reshape(batch, q_len, kv_heads, heads // kv_heads, q.shape[-1]).astype(acc)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k.astype(acc)) * scale
    if bias is not None:
        scores = scores + bias[:, None, None].astype(acc)
    if mask.ndim == 3:
        mask = mask[:, None, None]
    elif mask.shape[1] == 1:
        mask = mask[:, :, None]
    else:  # query head h = kv head h // groups, group h % groups
        mask = mask.reshape(mask.shape[0], kv_heads, heads // kv_heads, *mask.shape[2:])
    scores = jnp.where(mask, scores, jnp.finfo(acc).min)
    probs = jnp.where(jnp.any(mask, axis=-1, keepdims=True), jax.nn.softmax(scores, axis=-1), 0)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v.astype(acc))
    kv_bad = jnp.moveaxis(k_bad | v_bad, 1, 2)[:, :, None, None, :]  # [batch, kvh, 1, 1, k]
    reach = jnp.any(mask & kv_bad, axis=-1)  # [batch, kvh, g, q] (g, kvh may be 1)
    reach = jnp.broadcast_to(reach, (batch, kv_heads, heads // kv_heads, q_len))
    reach = jnp.moveaxis(reach, 3, 1).reshape(batch, q_len, heads) | q_bad
    out = out.reshape(batch, q_len, heads, v.shape[-1])
    return poison(out, reach).astype(q.dtype)


@accepts_numpy
def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = True,
              window: int | None = None, segment_ids: jax.Array | None = None,
              scale: float | None = None, bias: jax.Array | None = None,
              impl: str | Impl = "auto", block_size: int = 128) -> jax.Array:
    """Scaled dot-product attention over one sequence.

    Args:
      q: [batch, length, heads, head_dim].
      k: [batch, length, kv_heads, head_dim]; ``kv_heads`` divides ``heads``.
      v: [batch, length, kv_heads, v_head_dim].
      causal: query i reads keys j <= i.
      window: sliding window ``w``: query i reads keys with i - w < j <= i (``|i - j| < w`` when
        not causal). None means unlimited.
      segment_ids: [batch, length] ids of packed rows; no token reads another document, a
        document being a maximal run of equal ids ([0, 1, 0] are three documents).
      scale: multiplies q·k; defaults to head_dim ** -0.5.
      bias: [batch, length (queries), length (keys)] float added to every head's scores (e.g.
        MrT5's soft deletion); only the reference form takes one ("auto" picks it).
      impl: "reference", "xla" (blockwise, memory-efficient), "pallas" (the flash-attention
        kernel of :mod:`jaxlm.kernels.flash_attention`; "pallas_interpret" runs it
        interpreted), "splash" (JAX's splash attention, TPU), "cudnn" (cuDNN's fused
        attention, GPU) or "auto": :func:`jaxlm.ops.attention_backends.attention_plan`
        (splash on TPU, cuDNN on GPU where their rules hold; else the reference where its
        scores are small: length <= 512 on CPU, scores <= 1 GiB on accelerators; else xla).
      block_size: query and key block length of the xla and pallas forms; any length works
        (padded inside).

    Returns:
      [batch, length, heads, v_head_dim] in q's dtype (integer inputs are promoted to the
      default float); empty for length 0 or batch 0. Causal also under non-finite inputs: a
      NaN or Inf in q, k or v at position s sets NaN only in the outputs that read s (with
      ``causal``, never an earlier one), in every form.
    """
    q, k, v, bias = as_floats(q, k, v, bias)
    check_qkv(_OP, q, k, v)
    batch, length, heads, head_dim = q.shape
    check_positive(_OP, "window", window)
    check_positive(_OP, "block_size", block_size, allow_none=False)
    if segment_ids is not None:
        check_shape(_OP, "segment_ids", segment_ids, (batch, length), "[batch, length]")
    scale = head_dim ** -0.5 if scale is None else float(scale)

    chosen = resolve_impl(_OP, impl, ("reference", "xla", "pallas", "splash", "cudnn"))
    if bias is not None:
        check_shape(_OP, "bias", bias, (batch, length, length), "[batch, length, length]")
        if chosen not in (Impl.AUTO, Impl.REFERENCE):
            raise ValueError(f"{_OP}: a bias needs impl='reference' (or 'auto'), got "
                             f"impl={impl!r}")
        chosen = Impl.REFERENCE
    if chosen is Impl.AUTO:
        chosen = _auto_form(q, v, causal=causal, window=window, segment_ids=segment_ids)
    if batch == 0 or length == 0:
        return jnp.zeros((batch, length, heads, v.shape[-1]), q.dtype)
    doc = document_ids(segment_ids)
    if chosen is Impl.REFERENCE:
        pos = jnp.arange(length)
        mask = attention_mask(pos, pos, causal=causal, window=window, q_segment=doc,
                              k_segment=doc)
        mask = jnp.broadcast_to(mask, (batch, length, length))
        return masked_attention(q, k, v, mask, scale, bias=bias)
    # The blocks multiply masked weights by values: run them on finite inputs and set NaN
    # where a non-finite input is read (O(length): only the nearest one matters).
    q, q_bad = split_nonfinite(q, 3)
    k, k_bad = split_nonfinite(k, 3)
    v, v_bad = split_nonfinite(v, 3)
    kv_bad = jnp.repeat(k_bad | v_bad, heads // k.shape[2], axis=2)
    reach = q_bad | nonfinite_reach(kv_bad, doc, causal=causal, window=window)
    if chosen in (Impl.SPLASH, Impl.CUDNN):
        from jaxlm.ops.attention_backends import library_attention

        out = library_attention(chosen.value, q, k, v, causal=causal, window=window,
                                segment_ids=doc, scale=scale)
    elif chosen.is_pallas:
        from jaxlm.kernels.flash_attention import flash_attention

        out = flash_attention(q, k, v, causal=causal, window=window, segment_ids=doc,
                              scale=scale, block_size=block_size, interpret=chosen.interpret)
    else:
        out = _blockwise_attention(q, k, v, doc, causal=causal, window=window, scale=scale,
                                   block_size=block_size)
    return poison(out, reach)


def _auto_form(q, v, *, causal, window, segment_ids) -> Impl:
    from jaxlm.ops import attention_backends as backends

    return Impl(backends.attention_plan(
        backends.current_backend(), q.dtype, q.shape, v_head_dim=v.shape[-1], causal=causal,
        window=window, packed=segment_ids is not None, partitioned=backends.mesh_partitions()))


# --------------------------------------------------------------------------------------------
# Blockwise form.


@dataclasses.dataclass(frozen=True)
class _Blocking:
    """Static description of one blockwise call (hashable: it is a nondiff argument)."""
    length: int
    block: int
    causal: bool
    window: int | None
    scale: float

    @property
    def num_blocks(self) -> int:
        return -(-self.length // self.block)

    def key_blocks(self, i: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[lo, hi) range of key blocks that query block ``i`` can read."""
        before = None if self.window is None else self.window - 1
        after = 0 if self.causal else before
        return self._range(i, before, after)

    def query_blocks(self, j: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[lo, hi) range of query blocks that can read key block ``j``."""
        before = None if self.window is None else self.window - 1
        after = 0 if self.causal else before
        return self._range(j, after, before)

    def _range(self, i, before, after):
        # Items of the other axis visible from block i lie in [first - before, last + after].
        first, last = i * self.block, (i + 1) * self.block - 1
        lo = 0 if before is None else jnp.maximum(0, (first - before) // self.block)
        hi = (self.num_blocks if after is None
              else jnp.minimum(self.num_blocks, (last + after) // self.block + 1))
        return lo, hi


def _blockwise_attention(q, k, v, segment_ids, *, causal, window, scale, block_size):
    batch, length, heads, _ = q.shape
    kv_heads = k.shape[2]
    block = min(block_size, length)
    cfg = _Blocking(length=length, block=block, causal=causal, window=window, scale=scale)
    padded = cfg.num_blocks * block
    pad = [(0, 0), (0, padded - length), (0, 0), (0, 0)]
    # Internal layout: q [batch, kv_heads, groups, length, d]; k, v [batch, kv_heads, length, d].
    qg = jnp.pad(q, pad).reshape(batch, padded, kv_heads, heads // kv_heads, -1)
    qg = qg.transpose(0, 2, 3, 1, 4)
    kt = jnp.pad(k, pad).transpose(0, 2, 1, 3)
    vt = jnp.pad(v, pad).transpose(0, 2, 1, 3)
    seg = (jnp.zeros((batch, length), jnp.int32) if segment_ids is None
           else segment_ids.astype(jnp.int32))
    seg = jnp.pad(seg, [(0, 0), (0, padded - length)], constant_values=-1)
    out = _flash(qg, kt, vt, seg, cfg)
    out = out.transpose(0, 3, 1, 2, 4).reshape(batch, padded, heads, -1)
    return out[:, :length]


def _block_mask(cfg: _Blocking, seg, i, j):
    """bool [batch, 1, 1, block, block] for query block i against key block j."""
    q_pos = i * cfg.block + jnp.arange(cfg.block)
    k_pos = j * cfg.block + jnp.arange(cfg.block)
    q_seg = jax.lax.dynamic_slice_in_dim(seg, i * cfg.block, cfg.block, axis=1)
    k_seg = jax.lax.dynamic_slice_in_dim(seg, j * cfg.block, cfg.block, axis=1)
    mask = attention_mask(q_pos, k_pos, causal=cfg.causal, window=cfg.window,
                          q_segment=q_seg, k_segment=k_seg)
    mask &= (k_pos < cfg.length)[None, None, :]
    return mask[:, None, None]


def _slice(x, i, block, axis):
    return jax.lax.dynamic_slice_in_dim(x, i * block, block, axis=axis)


def _scores(cfg, q_i, k_j, acc):
    return jnp.einsum("bhgqd,bhkd->bhgqk", q_i.astype(acc), k_j.astype(acc)) * cfg.scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, seg, cfg):
    return _flash_forward(q, k, v, seg, cfg)[0]


def _flash_forward(q, k, v, seg, cfg: _Blocking):
    acc = jnp.promote_types(q.dtype, jnp.float32)
    neg = jnp.finfo(acc).min / 2
    batch, kv_heads, groups, _, _ = q.shape
    dv = v.shape[-1]

    def one_query_block(i):
        q_i = _slice(q, i, cfg.block, axis=3)

        def visit(j, carry):
            m, l, o = carry
            s = _scores(cfg, q_i, _slice(k, j, cfg.block, axis=2), acc)
            mask = _block_mask(cfg, seg, i, j)
            s = jnp.where(mask, s, neg)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
            correction = jnp.exp(m - m_new)
            v_j = _slice(v, j, cfg.block, axis=2).astype(acc)
            o = o * correction[..., None] + jnp.einsum("bhgqk,bhkd->bhgqd", p, v_j)
            return m_new, l * correction + p.sum(-1), o

        shape = (batch, kv_heads, groups, cfg.block)
        init = (jnp.full(shape, neg, acc), jnp.zeros(shape, acc), jnp.zeros((*shape, dv), acc))
        lo, hi = cfg.key_blocks(i)
        m, l, o = jax.lax.fori_loop(lo, hi, visit, init)
        safe_l = jnp.where(l > 0, l, 1.0)  # l == 0 only on padding rows
        return o / safe_l[..., None], m + jnp.log(safe_l)

    o, lse = jax.lax.map(one_query_block, jnp.arange(cfg.num_blocks))
    # [blocks, batch, kvh, g, block, ...] -> [batch, kvh, g, length, ...]
    o = jnp.moveaxis(o, 0, 3).reshape(batch, kv_heads, groups, -1, dv)
    lse = jnp.moveaxis(lse, 0, 3).reshape(batch, kv_heads, groups, -1)
    return o.astype(q.dtype), lse


def _flash_fwd(q, k, v, seg, cfg):
    o, lse = _flash_forward(q, k, v, seg, cfg)
    return o, (q, k, v, seg, o, lse)


def _flash_bwd(cfg: _Blocking, residuals, do):
    q, k, v, seg, o, lse = residuals
    acc = jnp.promote_types(q.dtype, jnp.float32)
    do = do.astype(acc)
    delta = jnp.sum(do * o.astype(acc), axis=-1)  # rowsum(dO * O): [batch, kvh, g, length]

    def probs_and_dscores(i, j):
        q_i = _slice(q, i, cfg.block, axis=3)
        do_i = _slice(do, i, cfg.block, axis=3)
        s = _scores(cfg, q_i, _slice(k, j, cfg.block, axis=2), acc)
        lse_i = _slice(lse, i, cfg.block, axis=3)
        p = jnp.where(_block_mask(cfg, seg, i, j), jnp.exp(s - lse_i[..., None]), 0.0)
        dp = jnp.einsum("bhgqd,bhkd->bhgqk", do_i, _slice(v, j, cfg.block, axis=2).astype(acc))
        ds = p * (dp - _slice(delta, i, cfg.block, axis=3)[..., None])
        return q_i, do_i, p, ds

    def one_key_block(j):
        def visit(i, carry):
            dk, dv = carry
            q_i, do_i, p, ds = probs_and_dscores(i, j)
            dv = dv + jnp.einsum("bhgqk,bhgqd->bhkd", p, do_i)
            dk = dk + jnp.einsum("bhgqk,bhgqd->bhkd", ds, q_i.astype(acc)) * cfg.scale
            return dk, dv

        batch, kv_heads = k.shape[:2]
        init = (jnp.zeros((batch, kv_heads, cfg.block, k.shape[-1]), acc),
                jnp.zeros((batch, kv_heads, cfg.block, v.shape[-1]), acc))
        lo, hi = cfg.query_blocks(j)
        return jax.lax.fori_loop(lo, hi, visit, init)

    def one_query_block(i):
        def visit(j, dq):
            _, _, _, ds = probs_and_dscores(i, j)
            k_j = _slice(k, j, cfg.block, axis=2).astype(acc)
            return dq + jnp.einsum("bhgqk,bhkd->bhgqd", ds, k_j) * cfg.scale

        lo, hi = cfg.key_blocks(i)
        init = jnp.zeros(q.shape[:3] + (cfg.block, q.shape[-1]), acc)
        return jax.lax.fori_loop(lo, hi, visit, init)

    blocks = jnp.arange(cfg.num_blocks)
    dk, dv = jax.lax.map(one_key_block, blocks)
    dq = jax.lax.map(one_query_block, blocks)
    dq = jnp.moveaxis(dq, 0, 3).reshape(q.shape)
    dk = jnp.moveaxis(dk, 0, 2).reshape(k.shape)
    dv = jnp.moveaxis(dv, 0, 2).reshape(v.shape)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)
