"""Flash attention ("FlashAttention: Fast and Memory-Efficient Exact Attention with
IO-Awareness"; backward as in "FlashAttention-2") as Pallas kernels, with causal,
sliding-window, packed-document and block-sparse masks and grouped-query attention.

One program per (batch row, query head, query block) runs an online softmax over the key
blocks its mask can reach: blocks past the diagonal (causal) or outside the window are never
visited, and key blocks that ``block_mask`` rules out, or that hold only other documents than
the query block (packed rows, :func:`document_blocks`), are skipped without computing their
scores. The forward pass saves only the output and the log-sum-exp; the backward pass is two
more kernels, one per query block (dQ) and one per key block (dK, dV), that recompute the
probabilities block by block.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxlm.kernels import blocks
from jaxlm.kernels.backend import (compiler_params, mosaic_gpu_available, target_platform,
                                   triton_available)

_NAME = "flash_attention"


@dataclasses.dataclass(frozen=True)
class _Config:
    causal: bool
    window: int | None
    scale: float
    block: int
    length: int  # before padding
    groups: int  # query heads per kv head
    interpret: bool
    platform: str | None


@functools.partial(jax.jit, static_argnames=("causal", "window", "scale", "block_size",
                                             "interpret", "platform"))
def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = True,
                    window: int | None = None, segment_ids: jax.Array | None = None,
                    block_mask: jax.Array | None = None, scale: float | None = None,
                    block_size: int = 128, interpret: bool = False,
                    platform: str | None = None) -> jax.Array:
    """Attention as :func:`jaxlm.ops.attention` and :func:`jaxlm.ops.block_sparse_attention`
    define it, in one kernel.

    q: [batch, length, heads, d]; k: [batch, length, kv_heads, d]; v: [batch, length,
    kv_heads, dv]; segment_ids: int [batch, length] (equal id = same document, compared as
    int32: :func:`jaxlm.ops.attention` passes one id per run of equal ids) or None;
    block_mask: bool [batch or 1, heads or 1, n, n] with n = ceil(length / block_size), or
    None (every block). A query whose mask allows no key gets 0. Any length works (padded to
    a multiple of ``block_size``). Returns [batch, length, heads, dv] in q's dtype; scores and
    softmax run in float32 or wider.

    On TPU (and interpreted on a CPU host) this runs the block-pipelined kernels of
    :mod:`jaxlm.kernels.tpu.flash_attention`. On GPU the whole-row kernels below run through
    Pallas' Triton lowering (``platform="gpu"``, also interpreted) where the installed JAX
    still has it; where it does not (JAX 0.12), a compiled GPU call with 16-bit q, k, v, head
    dims 64 or 128, ``block_size`` a multiple of 64 and no window runs the Mosaic GPU (Hopper)
    forward kernel of :mod:`jaxlm.kernels.mosaic_gpu.flash_attention` (its backward
    recomputes in XLA block by block: exact, dense work).
    """
    if _mosaic_gpu_takes(q, k, v, window, block_size, interpret, platform):
        from jaxlm.kernels.mosaic_gpu import flash_attention as mgpu

        return mgpu.flash_attention(q, k, v, causal=causal, segment_ids=segment_ids,
                                    block_mask=block_mask, scale=scale, block_size=block_size)
    if target_platform(platform, interpret) == "tpu":  # the block-pipelined Mosaic kernels
        from jaxlm.kernels.tpu.flash_attention import flash_attention as tpu_flash_attention

        return tpu_flash_attention(q, k, v, causal=causal, window=window,
                                   segment_ids=segment_ids, block_mask=block_mask, scale=scale,
                                   block_size=block_size, interpret=interpret,
                                   platform=platform)
    batch, length, heads, d = q.shape
    kv_heads = k.shape[2]
    block = block_size
    n = -(-length // block)
    padded = n * block
    cfg = _Config(causal, window, d ** -0.5 if scale is None else float(scale), block, length,
                  heads // kv_heads, interpret, platform)
    to_heads = lambda x: jnp.pad(jnp.moveaxis(x, 2, 1),
                                 ((0, 0), (0, 0), (0, padded - length), (0, 0)))
    seg = (jnp.zeros((batch, padded), jnp.int32) if segment_ids is None else
           jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, padded - length))))
    mask = (jnp.ones((1, 1, n, n), jnp.int32) if block_mask is None
            else block_mask.astype(jnp.int32))
    if segment_ids is not None:  # skip the block pairs of two different documents
        mask = mask * document_blocks(segment_ids, block)[:, None].astype(jnp.int32)
    out = _attention(cfg, to_heads(q), to_heads(k), to_heads(v), seg, mask)
    return jnp.moveaxis(out, 1, 2)[:, :length]


def _mosaic_gpu_takes(q, k, v, window, block_size, interpret, platform) -> bool:
    """Whether a call goes to the Mosaic GPU kernel: compiled for a GPU whose JAX has Mosaic
    GPU but no longer Pallas' Triton lowering (where Triton is there, its whole-row kernels
    keep the call: they have a backward kernel, the Mosaic GPU one recomputes in XLA; a device
    check compares the two), and a call that kernel takes."""
    if (interpret or target_platform(platform, interpret) != "gpu" or not mosaic_gpu_available()
            or triton_available()):
        return False
    from jaxlm.kernels.mosaic_gpu import flash_attention as mgpu

    return mgpu.takes(q, k, v, block_size, window)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(cfg, q, k, v, seg, mask):
    return _forward(cfg, q, k, v, seg, mask)[0]


def _attention_fwd(cfg, q, k, v, seg, mask):
    out, lse = _forward(cfg, q, k, v, seg, mask)
    return out, (q, k, v, seg, mask, out, lse)


def _attention_bwd(cfg, residuals, d_out):
    q, k, v, seg, mask, out, lse = residuals
    acc = jnp.promote_types(q.dtype, jnp.float32)
    delta = jnp.sum(d_out.astype(acc) * out.astype(acc), axis=-1, keepdims=True)
    d_q = _backward_dq(cfg, q, k, v, seg, mask, lse, d_out, delta)
    d_k, d_v = _backward_dkdv(cfg, q, k, v, seg, mask, lse, d_out, delta)
    fold = lambda x: x.reshape(k.shape[0], k.shape[1], cfg.groups, *x.shape[2:]).sum(2)
    return (d_q.astype(q.dtype), fold(d_k).astype(k.dtype), fold(d_v).astype(v.dtype),
            None, None)


_attention.defvjp(_attention_fwd, _attention_bwd)


def _div(a, b: int):
    """a // b for the block arithmetic below, by lax.div (floor division lowers through sign,
    which Mosaic cannot lower off-device); truncation differs only for negative a, which the
    callers clip to 0 anyway."""
    return jax.lax.div(a, jnp.asarray(b, a.dtype))


def _key_range(cfg: _Config, i, n):
    """Key blocks [lo, hi) that query block i can reach (query and key blocks are equal), as
    int32 (also under jax_enable_x64: kernels index in 32 bits)."""
    lo, hi = jnp.int32(0), jnp.int32(n)
    if cfg.causal:
        hi = i + 1
    if cfg.window is not None:
        lo = jnp.maximum(0, _div(i * cfg.block - cfg.window + 1, cfg.block))
        if not cfg.causal:
            hi = jnp.minimum(n, _div((i + 1) * cfg.block + cfg.window - 2, cfg.block) + 1)
    return lo, hi


def _query_range(cfg: _Config, j, n):
    """Query blocks [lo, hi) that can reach key block j (int32)."""
    lo, hi = jnp.int32(0), jnp.int32(n)
    if cfg.causal:
        lo = j
    if cfg.window is not None:
        hi = jnp.minimum(n, _div((j + 1) * cfg.block + cfg.window - 2, cfg.block) + 1)
        if not cfg.causal:
            lo = jnp.maximum(0, _div(j * cfg.block - cfg.window + 1, cfg.block))
    return lo, hi


def document_blocks(segment_ids: jax.Array, block: int) -> jax.Array:
    """Which (query block, key block) pairs can hold a query and a key of one document.

    segment_ids: int [batch, length] (before padding; compared as int32, as the kernels compare
    them). Returns bool [batch, n, n] with n = ceil(length / block): [b, i, j] is True where
    the [min, max] ranges of the ids in query block i and in key block j of row b overlap. That keeps every pair holding a shared
    id (a shared id lies in both ranges) and is exactly those pairs when ids do not decrease
    along the row (packed documents, the usual layout), so the kernels skip every block pair
    of two different documents there. The last block's padding does not count."""
    batch, length = segment_ids.shape
    n = -(-length // block)
    ids = segment_ids.astype(jnp.int32)
    info = jnp.iinfo(jnp.int32)
    pad = ((0, 0), (0, n * block - length))
    low = jnp.pad(ids, pad, constant_values=info.max).reshape(batch, n, block).min(-1)
    high = jnp.pad(ids, pad, constant_values=info.min).reshape(batch, n, block).max(-1)
    return (low[:, :, None] <= high[:, None, :]) & (low[:, None, :] <= high[:, :, None])


def _scores(cfg: _Config, q, k, q_seg, k_seg, i, j):
    """Masked, scaled scores of query block i against key block j: [block, block]."""
    rows, cols = blocks.rows_cols(cfg.block)
    q_pos, k_pos = i * cfg.block + rows, j * cfg.block + cols
    allowed = (k_pos < cfg.length) & (q_seg == k_seg)
    if cfg.causal:
        allowed &= k_pos <= q_pos
    if cfg.window is not None:
        allowed &= (q_pos - k_pos < cfg.window) & (k_pos - q_pos < cfg.window)
    return jnp.where(allowed, blocks.dot_nt(q, k) * cfg.scale, -jnp.inf)


def _allowed(mask, i, j):
    """Whether query block i may read key block j: entry [i, j] of the int32 [n, n] block
    mask, by a masked sum (no scalar loads from vector memory)."""
    rows = jax.lax.broadcasted_iota(jnp.int32, mask.shape, 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, mask.shape, 1)
    return jnp.max(jnp.where((rows == i) & (cols == j), mask, 0)) > 0


def _specs(cfg: _Config, q, mask):
    """Block-spec makers: a program's own block (`own`) or the whole length (`whole`) of an
    array, head maps, its [n, n] block mask, and the segment ids as a column and as a row."""
    padded = q.shape[2]
    block = cfg.block
    whole = lambda x, head: pl.BlockSpec((pl.squeezed, pl.squeezed, padded, x.shape[-1]),
                                         lambda b, h, i: (b, head(h), 0, 0))
    own = lambda x, head: pl.BlockSpec((pl.squeezed, pl.squeezed, block, x.shape[-1]),
                                       lambda b, h, i: (b, head(h), i, 0))
    kv_head = lambda h: jax.lax.div(h, jnp.asarray(cfg.groups, h.dtype))
    q_head = lambda h: h
    mask_spec = pl.BlockSpec(
        (pl.squeezed, pl.squeezed, *mask.shape[2:]),
        lambda b, h, i: (b if mask.shape[0] > 1 else 0, h if mask.shape[1] > 1 else 0, 0, 0))
    seg_col = pl.BlockSpec((pl.squeezed, padded, 1), lambda b, h, i: (b, 0, 0))
    seg_row = pl.BlockSpec((pl.squeezed, 1, padded), lambda b, h, i: (b, 0, 0))
    return own, whole, q_head, kv_head, mask_spec, seg_col, seg_row


def _call(cfg, kernel, out_shape, in_specs, out_specs, grid, args, suffix):
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=grid, in_specs=in_specs, out_specs=out_specs,
        interpret=cfg.interpret, name=f"{_NAME}_{suffix}",
        compiler_params=compiler_params(_NAME, cfg.interpret, 3, platform=cfg.platform),
    )(*args)


def _forward(cfg: _Config, q, k, v, seg, mask):
    batch, heads, padded, _ = q.shape
    n, block, dv = padded // cfg.block, cfg.block, v.shape[-1]
    acc = jnp.promote_types(q.dtype, jnp.float32)
    own, whole, q_head, kv_head, mask_spec, seg_col, seg_row = _specs(cfg, q, mask)

    def kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, mask_ref, o_ref, lse_ref):
        i = pl.program_id(2)
        q_blk = q_ref[...]
        q_seg = qs_ref[pl.ds(i * block, block), :]  # [block, 1]
        mask = mask_ref[...]

        def visit(j, carry):
            m, l, o = carry
            k_blk = k_ref[pl.ds(j * block, block), :]
            s = _scores(cfg, q_blk, k_blk, q_seg, ks_ref[:, pl.ds(j * block, block)], i, j)
            m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
            p = jnp.exp(s - m_safe)
            alpha = jnp.exp(m - m_safe)
            o = alpha * o + blocks.dot(p.astype(v_ref.dtype), v_ref[pl.ds(j * block, block), :])
            return m_new, alpha * l + jnp.sum(p, axis=1, keepdims=True), o

        def body(j, carry):
            return jax.lax.cond(_allowed(mask, i, j), visit, lambda j, c: c, j, carry)

        lo, hi = _key_range(cfg, i, n)
        init = (jnp.full((block, 1), -jnp.inf, acc), jnp.zeros((block, 1), acc),
                jnp.zeros((block, dv), acc))
        m, l, o = jax.lax.fori_loop(lo, hi, body, init)
        empty = l == 0
        o_ref[...] = jnp.where(empty, 0.0, o / jnp.where(empty, 1.0, l)).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))

    out_shape = [jax.ShapeDtypeStruct((batch, heads, padded, dv), q.dtype),
                 jax.ShapeDtypeStruct((batch, heads, padded, 1), acc)]
    in_specs = [own(q, q_head), whole(k, kv_head), whole(v, kv_head), seg_col, seg_row,
                mask_spec]
    out_specs = [own(out_shape[0], q_head), own(out_shape[1], q_head)]
    args = (q, k, v, seg[..., None], seg[:, None, :], mask)
    return _call(cfg, kernel, out_shape, in_specs, out_specs, (batch, heads, n), args, "fwd")


def _probabilities(cfg, q_blk, k_blk, q_seg, k_seg, lse, i, j):
    return jnp.exp(_scores(cfg, q_blk, k_blk, q_seg, k_seg, i, j) - lse)


def _backward_dq(cfg: _Config, q, k, v, seg, mask, lse, d_out, delta):
    batch, heads, padded, d = q.shape
    n, block = padded // cfg.block, cfg.block
    acc = lse.dtype
    own, whole, q_head, kv_head, mask_spec, seg_col, seg_row = _specs(cfg, q, mask)

    def kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, mask_ref, lse_ref, do_ref, delta_ref,
               dq_ref):
        i = pl.program_id(2)
        q_blk, do_blk, lse_blk, delta_blk = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
        q_seg = qs_ref[pl.ds(i * block, block), :]
        mask = mask_ref[...]

        def visit(j, dq):
            k_blk = k_ref[pl.ds(j * block, block), :]
            v_blk = v_ref[pl.ds(j * block, block), :]
            p = _probabilities(cfg, q_blk, k_blk, q_seg, ks_ref[:, pl.ds(j * block, block)],
                               lse_blk, i, j)
            ds = p * (blocks.dot_nt(do_blk, v_blk) - delta_blk)
            return dq + blocks.dot(ds.astype(k_blk.dtype), k_blk) * cfg.scale

        def body(j, dq):
            return jax.lax.cond(_allowed(mask, i, j), visit, lambda j, c: c, j, dq)

        lo, hi = _key_range(cfg, i, n)
        dq_ref[...] = jax.lax.fori_loop(lo, hi, body, jnp.zeros((block, d), acc))

    out_shape = jax.ShapeDtypeStruct((batch, heads, padded, d), acc)
    in_specs = [own(q, q_head), whole(k, kv_head), whole(v, kv_head), seg_col, seg_row,
                mask_spec, own(lse, q_head), own(d_out, q_head), own(delta, q_head)]
    args = (q, k, v, seg[..., None], seg[:, None, :], mask, lse, d_out, delta)
    return _call(cfg, kernel, out_shape, in_specs, own(out_shape, q_head), (batch, heads, n),
                 args, "bwd_dq")


def _backward_dkdv(cfg: _Config, q, k, v, seg, mask, lse, d_out, delta):
    """dK, dV per query head ([batch, heads, padded, d]); the caller sums each group."""
    batch, heads, padded, d = q.shape
    n, block, dv = padded // cfg.block, cfg.block, v.shape[-1]
    acc = lse.dtype
    own, whole, q_head, kv_head, mask_spec, seg_col, seg_row = _specs(cfg, q, mask)

    def kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, mask_ref, lse_ref, do_ref, delta_ref,
               dk_ref, dv_ref):
        j = pl.program_id(2)
        k_blk, v_blk = k_ref[...], v_ref[...]
        k_seg = ks_ref[:, pl.ds(j * block, block)]
        mask = mask_ref[...]

        def visit(i, carry):
            dk, dv_acc = carry
            rows = pl.ds(i * block, block)
            q_blk, do_blk = q_ref[rows, :], do_ref[rows, :]
            p = _probabilities(cfg, q_blk, k_blk, qs_ref[rows, :], k_seg, lse_ref[rows, :], i, j)
            ds = p * (blocks.dot_nt(do_blk, v_blk) - delta_ref[rows, :])
            dv_acc = dv_acc + blocks.dot_tn(p.astype(do_blk.dtype), do_blk)
            return dk + blocks.dot_tn(ds.astype(q_blk.dtype), q_blk) * cfg.scale, dv_acc

        def body(i, carry):
            return jax.lax.cond(_allowed(mask, i, j), visit, lambda i, c: c, i, carry)

        lo, hi = _query_range(cfg, j, n)
        dk, dv_acc = jax.lax.fori_loop(lo, hi, body, (jnp.zeros((block, d), acc),
                                                      jnp.zeros((block, dv), acc)))
        dk_ref[...], dv_ref[...] = dk, dv_acc

    out_shape = [jax.ShapeDtypeStruct((batch, heads, padded, d), acc),
                 jax.ShapeDtypeStruct((batch, heads, padded, dv), acc)]
    in_specs = [whole(q, q_head), own(k, kv_head), own(v, kv_head), seg_col, seg_row,
                mask_spec, whole(lse, q_head), whole(d_out, q_head), whole(delta, q_head)]
    out_specs = [own(out_shape[0], q_head), own(out_shape[1], q_head)]
    args = (q, k, v, seg[..., None], seg[:, None, :], mask, lse, d_out, delta)
    return _call(cfg, kernel, out_shape, in_specs, out_specs, (batch, heads, n), args,
                 "bwd_dkdv")
