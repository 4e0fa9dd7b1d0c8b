"""Block-sparse flash attention ("FlashAttention: Fast and Memory-Efficient Exact Attention with
IO-Awareness", "FlashAttention-2") as a Mosaic GPU forward kernel for Hopper.

Only the forward pass is a Mosaic GPU kernel. The backward pass (a custom VJP) recomputes the
attention in XLA with the same masks, one query block at a time under ``jax.checkpoint``, and
differentiates that: exact gradients, memory of one block's scores, but the work of dense
attention (masked blocks are not skipped) and no kernel: correct, not fast.

One thread block (one warpgroup) per (batch row, query head, query block of 64) runs an online
softmax in float32 registers over the key blocks its masks allow. Which key blocks those are
is worked out in XLA before the kernel: per query block, the list of allowed key block indices
(``block_mask``; with segment ids, the blocks whose documents can meet the query block's,
:func:`~jaxlm.kernels.flash_attention.document_blocks`; when causal, the blocks at or before
the diagonal) and its length, as int32 arrays in GMEM. The kernel reads the count and the
indices to drive a TMA ring of K, V and key segment-id blocks (one barrier per stage), so key
blocks the mask rules out are never fetched. ``wgmma`` computes Q Kᵀ and P V (P through shared
memory in the input dtype); causal, packed-document (equal int32 id = same document) and
length masks are applied inside each block. A query that can read no key gets 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxlm.kernels.flash_attention import document_blocks
from jaxlm.kernels.mosaic_gpu import compat
from jaxlm.kernels.mosaic_gpu.compat import plgpu
from jaxlm.kernels.mosaic_gpu.linear_attention import _walk

BLOCK = 64  # the M of a warpgroup's wgmma: query and key blocks
_F32 = jnp.float32


def block_tables(block_mask: jax.Array, n: int, causal: bool):
    """Per query block, the key blocks to visit, computed in XLA.

    block_mask: bool [mb, mh, n, n] (or None: every block). Returns (idx int32 [mb * mh * n, n],
    allowed key block indices first in increasing order, the rest 0; count int32 [mb * mh * n],
    how many there are). Causal drops the blocks past the diagonal.
    """
    mask = jnp.ones((1, 1, n, n), bool) if block_mask is None else block_mask.astype(bool)
    if causal:
        mask = mask & jnp.tril(jnp.ones((n, n), bool))
    mask = mask.reshape(-1, n)
    order = jnp.argsort(~mask, axis=-1, stable=True).astype(jnp.int32)
    count = jnp.sum(mask, axis=-1, dtype=jnp.int32)
    idx = jnp.where(jnp.arange(n)[None, :] < count[:, None], order, 0)
    return idx.astype(jnp.int32), count


def _cast(x, layout, interpret):
    """``plgpu.layout_cast`` when compiled (the interpreters ignore layouts)."""
    return x if interpret is not None else plgpu.layout_cast(x, layout)


def _forward(q, k, v, seg, idx, count, *, length, heads, groups, mask_heads, mask_batch,
             causal, scale, stages, interpret):
    """The kernel on flat heads-first inputs: q [batch * heads, padded, d], k [batch * kv_heads,
    padded, d], v [batch * kv_heads, padded, dv], seg int32 [batch, padded] segment ids; keys
    at or past ``length`` (the padding) are masked. Returns o [batch * heads, padded, dv]."""
    programs, padded, d = q.shape
    dv = v.shape[-1]
    dt = q.dtype
    n = padded // BLOCK
    mma = compat.mma_transforms(dt)

    def body(q_g, k_g, v_g, seg_g, idx_g, cnt_g, o_g,
             q_s, qs_s, k_r, v_r, ks_r, p_s, o_s, q_bar, bars):
        p = jax.lax.axis_index("program")
        i = jax.lax.axis_index("qblock")
        b = jax.lax.div(p, jnp.int32(heads))
        h = jax.lax.rem(p, jnp.int32(heads))
        kvp = b * (heads // groups) + jax.lax.div(h, jnp.int32(groups))
        row = ((b if mask_batch > 1 else 0) * mask_heads + (h if mask_heads > 1 else 0)) * n + i
        rows_q = pl.ds(i * BLOCK, BLOCK)
        plgpu.copy_gmem_to_smem(q_g.at[p, rows_q], q_s, q_bar.at[0])
        plgpu.copy_gmem_to_smem(seg_g.at[b, rows_q], qs_s, q_bar.at[0])
        total = cnt_g[row]

        def fetch(step, slot):
            j = idx_g[row, step]
            rows = pl.ds(j * BLOCK, BLOCK)
            plgpu.copy_gmem_to_smem(k_g.at[kvp, rows], k_r.at[slot], bars.at[slot])
            plgpu.copy_gmem_to_smem(v_g.at[kvp, rows], v_r.at[slot], bars.at[slot])
            plgpu.copy_gmem_to_smem(seg_g.at[b, rows], ks_r.at[slot], bars.at[slot])

        for s in range(stages):  # the prologue: the first allowed blocks in flight
            pl.when(s < total)(functools.partial(fetch, s, s))
        plgpu.barrier_wait(q_bar.at[0])
        shape = (BLOCK, BLOCK)
        qs_rows = jax.lax.broadcast_in_dim(
            compat.load(qs_s, compat.row_layout(), interpret), shape, [0])
        q_pos = compat.iota(shape, 0, interpret) + i * BLOCK
        k_off = compat.iota(shape, 1, interpret)

        def step(t, slot, carry):
            m, l, o = carry
            j = idx_g[row, t]
            ks_cols = jax.lax.broadcast_in_dim(
                compat.load(ks_r.at[slot], compat.col_layout(), interpret), shape, [1])
            s = compat.mma(q_s, compat.T(k_r.at[slot]), shape, interpret) * scale
            allowed = (qs_rows == ks_cols) & (k_off + j * BLOCK < length)
            if causal:
                allowed &= k_off + j * BLOCK <= q_pos
            s = jnp.where(allowed, s, -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(s, axis=1))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
            probs = jnp.exp(s - jax.lax.broadcast_in_dim(m_safe, shape, [0]))
            alpha = jnp.exp(m - m_safe)
            l = alpha * l + jnp.sum(probs, axis=1)
            p_s[...] = probs.astype(dt)
            plgpu.commit_smem()
            pv = compat.mma(p_s, v_r.at[slot], (BLOCK, dv), interpret)
            o = jax.lax.broadcast_in_dim(alpha, (BLOCK, dv), [0]) * o + pv
            return m_new, l, o

        vec = lambda value: _cast(jnp.full((BLOCK,), value, _F32), compat.row_layout(),
                                  interpret)
        init = (vec(-jnp.inf), vec(0.0),
                _cast(jnp.zeros((BLOCK, dv), _F32), plgpu.Layout.WGMMA, interpret))
        _, l, o = _walk(total, stages, fetch, lambda slot: plgpu.barrier_wait(bars.at[slot]),
                        step, init)
        empty = l == 0.0
        inv = jnp.where(empty, 0.0, 1.0 / jnp.where(empty, 1.0, l))
        o_s[...] = (o * jax.lax.broadcast_in_dim(inv, (BLOCK, dv), [0])).astype(dt)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_s, o_g.at[p, rows_q])
        plgpu.wait_smem_to_gmem(0)

    ring = lambda rows, dd, dtype, tr=(): plgpu.SMEM((stages, rows, *dd), dtype, transforms=tr)
    scratch = [plgpu.SMEM((BLOCK, d), dt, transforms=mma), plgpu.SMEM((BLOCK,), jnp.int32),
               ring(BLOCK, (d,), dt, mma), ring(BLOCK, (dv,), dt, mma),
               ring(BLOCK, (), jnp.int32),
               plgpu.SMEM((BLOCK, BLOCK), dt, transforms=mma),
               plgpu.SMEM((BLOCK, dv), dt, transforms=mma),
               plgpu.Barrier(num_arrivals=2, num_barriers=1),
               plgpu.Barrier(num_arrivals=3, num_barriers=stages)]
    out_type = jax.ShapeDtypeStruct((programs, padded, dv), dt)
    return compat.kernel(body, out_type=out_type, scratch_types=scratch, grid=(programs, n),
                         grid_names=("program", "qblock"), interpret=interpret)(
        q, k, v, seg, idx, count)


def _smem_bytes(d, dv, itemsize, stages):
    ring = stages * (BLOCK * (d + dv) * itemsize + BLOCK * 4)
    return ring + BLOCK * (d + BLOCK + dv) * itemsize + BLOCK * 4


def _stages(d, dv, itemsize, want):
    limit = 227 * 1024 - 4096  # leave room for barriers and the compiler's own scratch
    for stages in range(want, 0, -1):
        if _smem_bytes(d, dv, itemsize, stages) <= limit:
            return stages
    raise ValueError(f"mosaic_gpu.flash_attention: d={d}, dv={dv} do not fit in shared memory")


def _recompute(q, k, v, segment_ids, block_mask, *, causal, scale):
    """The attention again in XLA, one query block of 64 at a time against every key with the
    same masks (``masked_attention``, the op's reference form, per block), each block under
    ``jax.checkpoint``: what the custom VJP differentiates. Exact; its memory is one block's
    scores [batch, heads, 64, length] at a time, its work that of dense attention (masked
    blocks are computed and zeroed, not skipped)."""
    from jaxlm.ops.attention import masked_attention

    batch, length, heads, d = q.shape
    n = -(-length // BLOCK)
    padded = n * BLOCK
    q_blocks = jnp.moveaxis(jnp.pad(q, ((0, 0), (0, padded - length), (0, 0), (0, 0)))
                            .reshape(batch, n, BLOCK, heads, d), 1, 0)
    k_pos = jnp.arange(length)

    @jax.checkpoint
    def one(args):
        i, q_i = args
        q_pos = i * BLOCK + jnp.arange(BLOCK)
        mask = jnp.ones((1, 1, BLOCK, length), bool)
        if causal:
            mask &= k_pos[None, :] <= q_pos[:, None]
        if segment_ids is not None:
            q_seg = jax.lax.dynamic_slice_in_dim(
                jnp.pad(segment_ids, ((0, 0), (0, padded - length))), i * BLOCK, BLOCK, 1)
            mask = mask & (q_seg[:, None, :, None] == segment_ids[:, None, None, :])
        if block_mask is not None:
            row = jax.lax.dynamic_index_in_dim(block_mask.astype(bool), i, 2, keepdims=False)
            mask = mask & row[:, :, None, k_pos // BLOCK]
        return masked_attention(q_i, k, v, mask, scale)

    out = jax.lax.map(one, (jnp.arange(n), q_blocks))  # [n, batch, 64, heads, dv]
    return jnp.moveaxis(out, 0, 1).reshape(batch, padded, heads, -1)[:, :length]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, segment_ids, block_mask, cfg):
    return _run(q, k, v, segment_ids, block_mask, cfg)


def _attention_fwd(q, k, v, segment_ids, block_mask, cfg):
    return _run(q, k, v, segment_ids, block_mask, cfg), (q, k, v, segment_ids, block_mask)


def _attention_bwd(cfg, residuals, d_out):
    q, k, v, segment_ids, block_mask = residuals
    causal, scale = cfg[0], cfg[1]
    wide = jnp.promote_types(q.dtype, _F32)  # recompute in float32, cast the gradients back
    _, vjp = jax.vjp(lambda q, k, v: _recompute(q, k, v, segment_ids, block_mask,
                                                causal=causal, scale=scale),
                     *(x.astype(wide) for x in (q, k, v)))
    d_q, d_k, d_v = vjp(d_out.astype(wide))
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _run(q, k, v, segment_ids, block_mask, cfg):
    causal, scale, stages, interpret = cfg
    batch, length, heads, d = q.shape
    kv_heads, dv = k.shape[2], v.shape[-1]
    n = -(-length // BLOCK)
    padded = n * BLOCK
    flat = lambda x: jnp.pad(jnp.moveaxis(x, 2, 1), ((0, 0), (0, 0), (0, padded - length),
                                                      (0, 0))).reshape(-1, padded, x.shape[-1])
    seg = jnp.pad(jnp.zeros((batch, length), jnp.int32) if segment_ids is None
                  else segment_ids, ((0, 0), (0, padded - length)))
    if segment_ids is not None:  # skip the key blocks of other documents than the query's
        documents = document_blocks(segment_ids, BLOCK)[:, None]
        block_mask = documents if block_mask is None else block_mask.astype(bool) & documents
    mb, mh = (1, 1) if block_mask is None else block_mask.shape[:2]
    idx, count = block_tables(block_mask, n, causal)
    o = _forward(flat(q), flat(k), flat(v), seg, idx, count, length=length, heads=heads,
                 groups=heads // kv_heads, mask_heads=mh, mask_batch=mb, causal=causal,
                 scale=scale, stages=min(stages, n), interpret=interpret)
    return jnp.moveaxis(o.reshape(batch, heads, padded, dv)[:, :, :length], 1, 2)


def check(name, q, k, v, block_size):
    """Raises a ValueError naming ``name`` for what the kernel cannot take."""
    compat.check_available(name)
    if q.dtype not in (jnp.bfloat16, jnp.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{name}: q, k, v must share a 16-bit dtype (bfloat16 or float16), "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] not in (64, 128) or v.shape[-1] not in (64, 128):
        raise ValueError(f"{name}: head dims must be 64 or 128, got d={q.shape[-1]}, "
                         f"dv={v.shape[-1]}")
    if block_size % BLOCK:
        raise ValueError(f"{name}: block_size must be a multiple of {BLOCK}, got {block_size}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{name}: heads ({q.shape[2]}) must be a multiple of kv_heads "
                         f"({k.shape[2]})")


def takes(q, k, v, block_size: int, window) -> bool:
    """Whether a compiled GPU call of :func:`jaxlm.kernels.flash_attention.flash_attention`
    can go to this kernel: 16-bit q, k, v, head dims 64 or 128, blocks a multiple of 64, no
    window."""
    try:
        check("flash_attention", q, k, v, block_size)
    except ValueError:
        return False
    return window is None


@functools.partial(jax.jit, static_argnames=("causal", "scale", "block_size", "stages",
                                             "interpret", "detect_races"))
def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = True,
                    segment_ids: jax.Array | None = None, block_mask: jax.Array | None = None,
                    scale: float | None = None, block_size: int = BLOCK, stages: int = 3,
                    interpret: bool = False, detect_races: bool = False) -> jax.Array:
    """Block-sparse attention with a Mosaic GPU (Hopper) forward kernel; differentiable (custom
    VJP whose backward recomputes in XLA, block by block, with the same masks: exact, but
    dense work; only the forward is a kernel).

    q: [batch, length, heads, d]; k: [batch, length, kv_heads, d]; v: [batch, length,
    kv_heads, dv], one 16-bit dtype, d and dv 64 or 128, heads a multiple of kv_heads (GQA);
    segment_ids: int [batch, length] (equal id = same document, compared as int32; key blocks
    of other documents are not fetched) or None; block_mask: bool [batch or 1, heads or 1, n,
    n] with n = ceil(length / block_size), or None (every block): key blocks it rules out are
    never fetched. ``scale`` defaults to d^-0.5; ``block_size``: the block mask's block, a
    multiple of 64 (the kernel's blocks are 64; a coarser mask is refined to them);
    ``stages``: depth of the TMA ring; ``interpret``: run in Mosaic GPU's interpreter
    (``detect_races``: with its shared-memory race detection).
    Any length (padded to whole blocks). Returns [batch, length, heads, dv] in q's dtype; a
    query that reads no key gets 0. Raises ValueError for what the kernel cannot take.
    """
    name = "mosaic_gpu.flash_attention"
    check(name, q, k, v, block_size)
    batch, length, heads, d = q.shape
    n = -(-length // block_size)
    if block_mask is not None and (block_mask.ndim != 4 or block_mask.shape[2:] != (n, n)
                                   or block_mask.shape[0] not in (1, batch)
                                   or block_mask.shape[1] not in (1, heads)):
        raise ValueError(f"{name}: block_mask must have shape [batch or 1, heads or 1, {n}, "
                         f"{n}], got {tuple(block_mask.shape)}")
    if block_mask is not None and block_size != BLOCK:  # refine to the kernel's blocks
        r, fine = block_size // BLOCK, -(-length // BLOCK)
        block_mask = jnp.repeat(jnp.repeat(block_mask, r, 2), r, 3)[:, :, :fine, :fine]
    scale = d ** -0.5 if scale is None else float(scale)
    depth = _stages(d, v.shape[-1], jnp.dtype(q.dtype).itemsize, stages)
    cfg = (causal, scale, depth,
           compat.interpret_params(detect_races) if interpret else None)
    if segment_ids is not None:  # the kernel and the recomputing backward compare int32 ids
        segment_ids = segment_ids.astype(jnp.int32)
    return _attention(q, k, v, segment_ids, block_mask, cfg)
