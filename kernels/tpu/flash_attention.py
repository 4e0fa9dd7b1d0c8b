"""Flash attention for TPU ("FlashAttention: Fast and Memory-Efficient Exact Attention with
IO-Awareness"; backward as in "FlashAttention-2"), pipelined block by block, with causal,
sliding-window, packed-document and block-sparse masks and grouped-query attention.

The same function as :func:`jaxlm.kernels.flash_attention.flash_attention` (the portable
kernel, whose mask helpers this module reuses), laid out for Mosaic:

* **Grid** (batch, heads, query blocks, key blocks), the key axis sequential ("arbitrary"):
  each grid step sees one query block and one key/value block, so Pallas double-buffers the
  HBM -> VMEM copies and the VMEM a program needs does not grow with the length. The running
  max, sum and output accumulator live in VMEM scratch, set at the first key step and written
  out at the last.
* **Skipping.** Key blocks the causal / window mask cannot reach are skipped (``pl.when``),
  and their index maps clamp to the nearest reachable block, so the pipeline issues no copy for
  them (a block whose index does not change is not fetched again). With a ``block_mask`` the
  wrapper folds the reachable range into it and computes, per (query block, key block), the
  block to fetch: the most recent allowed key block (``cummax``), or the first allowed one
  before any is reached. That int32 table goes to SMEM by scalar prefetch and drives both the
  index maps and the skip (a step is visited iff its table entry is its own block). Without a
  ``block_mask`` the index maps are arithmetic and no [n, n] table exists.
* **Documents.** With segment ids, each own block walks only the span of blocks, from the
  first to the last, whose id ranges overlap its own
  (:func:`~jaxlm.kernels.flash_attention.document_blocks`; the relation is symmetric, so one
  span serves the key walks and the query walk). For packed rows (ids that do not decrease)
  that span is exactly the blocks of its documents, so a row costs about the sum of its
  documents' squared lengths, not the row's; for other ids it is a superset. The spans (two
  int32 [batch * n] arrays, first and last + 1) go to SMEM by scalar prefetch, and only while
  they take at most 32 KiB (batch x n <= 4096, e.g. batch 8 at 64K tokens in blocks of 128);
  past that a call walks as without segment ids (the in-block mask keeps it exact). Without
  a ``block_mask`` they also narrow the index maps' clamp, so no block outside the span is
  copied; with one, the fetch table stays per mask row and a skipped step may still copy a
  block.
* **GQA** by index map: query head h reads kv head h // groups.
* **Matrix units.** Products take the input dtype (bfloat16) with float32 accumulation
  (``preferred_element_type``); probabilities are cast to v's dtype for p @ v.
* **Backward** (``custom_vjp``; residuals: the output and the log-sum-exp): a dQ kernel with
  the same grid (dq in scratch) and a dK/dV kernel on grid (batch, heads, key blocks, query
  blocks), query axis sequential, dk / dv in scratch, per query head; the wrapper sums each
  GQA group. The dK/dV kernel walks a transposed fetch table.

Non-finite keys and values. A masked-out score is replaced (``where``) by -inf, so a
non-finite key never reaches a query that may not read it. A value row is different: its
probability is 0 for such a query, but 0 * NaN = NaN in p @ v. So the wrapper zeroes every
non-finite entry of v and sets the matching key row to NaN: a query that may read that key
gets a NaN score, hence a NaN output row (where the materialized reference gives NaN or
+-Inf), and every other query is untouched. The cost is one elementwise pass that XLA fuses
into the wrapper's transpose; the kernel body has no extra work. Backward: non-finite entries
of q, k, v are read as 0 and query rows with a non-finite output contribute no gradient, so a
loss over rows that read only finite keys and values gets exactly the gradients it would get
without the non-finite entries.

TPU rules: ``block_size`` a multiple of 128 (segment-id rows are lane-major blocks), the
[n, n] fetch tables (n = ceil(length / block_size); two of them, 4 bytes per entry per
distinct (batch, head) of the mask) must fit in SMEM, beside the document spans (at most
32 KiB). In interpret mode any block size works.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxlm.kernels import blocks
from jaxlm.kernels.flash_attention import (_Config, _key_range, _probabilities, _query_range,
                                           _scores, document_blocks)

_NAME = "tpu_flash_attention"
_SEMANTICS = ("parallel", "parallel", "parallel", "arbitrary")
_LANES = 128
_SPANS_SMEM_BYTES = 32 * 1024  # the most SMEM the document spans may take


@functools.partial(jax.jit, static_argnames=("causal", "window", "scale", "block_size",
                                             "interpret", "platform"))
def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = True,
                    window: int | None = None, segment_ids: jax.Array | None = None,
                    block_mask: jax.Array | None = None, scale: float | None = None,
                    block_size: int = 128, interpret: bool = False,
                    platform: str | None = None) -> jax.Array:
    """Attention as :func:`jaxlm.ops.attention` and :func:`jaxlm.ops.block_sparse_attention`
    define it, as block-pipelined Mosaic TPU kernels.

    q: [batch, length, heads, d]; k: [batch, length, kv_heads, d]; v: [batch, length,
    kv_heads, dv] (kv_heads divides heads); segment_ids: int [batch, length] (equal id = same
    document, compared as int32: :func:`jaxlm.ops.attention` passes one id per run of equal
    ids) or None; block_mask: bool [batch or 1, heads or 1, n, n] with
    n = ceil(length / block_size), or None (every block). A query whose mask allows no key gets
    0. Any length works (padded inside to a multiple of ``block_size``). ``interpret=True``
    runs Pallas' TPU interpreter (``pltpu.InterpretParams()``: simulated VMEM, SMEM and DMAs)
    on any backend. Returns [batch, length, heads, dv] in q's dtype; scores, softmax and
    accumulators in float32 (float64 for float64 inputs).

    Raises ValueError for a mask of the wrong shape, a block size Mosaic cannot tile, or a
    backend other than TPU without ``interpret``.
    """
    batch, length, heads, d = q.shape
    kv_heads = k.shape[2]
    n = -(-length // block_size)
    padded = n * block_size
    cfg = _Config(causal, window, d ** -0.5 if scale is None else float(scale), block_size,
                  length, heads // kv_heads, interpret, platform)
    _check(cfg, batch, heads, n, block_mask)
    to_heads = lambda x: jnp.pad(jnp.moveaxis(x, 2, 1),
                                 ((0, 0), (0, 0), (0, padded - length), (0, 0)))
    seg = (None if segment_ids is None else
           jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, padded - length))))
    tables = None if block_mask is None else fetch_tables(cfg, block_mask, n)
    extent = None if block_mask is None else tuple(block_mask.shape[:2])
    spans = (document_spans(document_blocks(segment_ids, block_size))
             if segment_ids is not None and 2 * 4 * batch * n <= _SPANS_SMEM_BYTES else None)
    out = _attention(cfg, extent, to_heads(q), to_heads(k), to_heads(v), seg, tables, spans)
    return jnp.moveaxis(out, 1, 2)[:, :length]


def _check(cfg: _Config, batch: int, heads: int, n: int, block_mask) -> None:
    if block_mask is not None and (
            block_mask.ndim != 4 or block_mask.shape[2:] != (n, n)
            or block_mask.shape[0] not in (1, batch) or block_mask.shape[1] not in (1, heads)):
        raise ValueError(f"{_NAME}: block_mask must be [batch or 1, heads or 1, n, n] = "
                         f"[{batch} or 1, {heads} or 1, {n}, {n}], got "
                         f"{tuple(block_mask.shape)}")
    if cfg.interpret:
        return
    platform = cfg.platform or jax.default_backend()
    if platform != "tpu":
        raise ValueError(f"{_NAME}: a Mosaic TPU kernel; cannot compile for backend "
                         f"{platform!r}; pass interpret=True to run it in Pallas' TPU "
                         "interpreter, or use the portable jaxlm.kernels.flash_attention")
    if cfg.block % _LANES:
        raise ValueError(f"{_NAME}: block_size must be a multiple of {_LANES} on TPU, got "
                         f"{cfg.block}")


def _fetch_table(allowed: jax.Array) -> jax.Array:
    """allowed: bool [..., n, m] -> int32 [..., n, m]: per row, the most recent allowed column
    at or before each column, or the row's first allowed column before any is reached, or -1
    in a row with none. Entry [r, c] == c exactly where [r, c] is allowed."""
    cols = jnp.arange(allowed.shape[-1], dtype=jnp.int32)
    last = jax.lax.cummax(jnp.where(allowed, cols, -1), axis=allowed.ndim - 1)
    first = jnp.min(jnp.where(allowed, cols, allowed.shape[-1]), axis=-1, keepdims=True)
    first = jnp.where(first == allowed.shape[-1], -1, first)
    return jnp.where(last >= 0, last, first).astype(jnp.int32)


def document_spans(documents: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The scalar-prefetch spans of a call with segment ids: per (row, block), the first and
    the last + 1 block that ``documents`` allows with it, each flattened int32 [batch * n]
    (0, 0 in a row with none). documents: bool [batch, n, n] from
    :func:`~jaxlm.kernels.flash_attention.document_blocks` (symmetric, so the spans serve the
    walks over key blocks and over query blocks alike)."""
    cols = jnp.arange(documents.shape[-1], dtype=jnp.int32)
    hi = jnp.max(jnp.where(documents, cols + 1, 0), axis=-1)
    lo = jnp.min(jnp.where(documents, cols, documents.shape[-1]), axis=-1)
    return jnp.where(hi > 0, lo, 0).reshape(-1), hi.reshape(-1)


def fetch_tables(cfg: _Config, block_mask: jax.Array, n: int):
    """The scalar-prefetch tables of a block-masked call: (per query block, the key block each
    step fetches; per key block, the query block each step fetches), flattened int32
    [mb * mh * n * n] for SMEM, with (mb, mh) the mask's (batch, heads) extent. The block
    mask is intersected with the blocks the causal / window mask can reach (cfg: the portable
    kernel's configuration)."""
    i = jnp.arange(n, dtype=jnp.int32)[:, None]
    j = jnp.arange(n, dtype=jnp.int32)[None, :]
    lo, hi = _key_range(cfg, i, n)
    allowed = block_mask.astype(bool) & (j >= lo) & (j < hi)
    return (_fetch_table(allowed).reshape(-1),
            _fetch_table(jnp.swapaxes(allowed, -1, -2)).reshape(-1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attention(cfg, extent, q, k, v, seg, tables, spans):
    return _forward(cfg, extent, *_poison(q, k, v), seg, tables, spans)[0]


def _poison(q, k, v):
    """q, k with k's row set to NaN where v's row has a non-finite entry, and v with those
    entries zeroed (see the module docstring)."""
    bad = ~jnp.all(jnp.isfinite(v), axis=-1, keepdims=True)
    return q, jnp.where(bad, jnp.nan, k).astype(k.dtype), blocks.finite_or_zero(v)


def _attention_fwd(cfg, extent, q, k, v, seg, tables, spans):
    out, lse = _forward(cfg, extent, *_poison(q, k, v), seg, tables, spans)
    return out, (q, k, v, seg, tables, spans, out, lse)


def _attention_bwd(cfg, extent, residuals, d_out):
    q, k, v, seg, tables, spans, out, lse = residuals
    acc = lse.dtype
    out = out.astype(acc)
    bad = (jnp.isnan(lse) | (lse == -jnp.inf)
           | ~jnp.all(jnp.isfinite(out), axis=-1, keepdims=True))
    lse = jnp.where(bad, jnp.inf, lse)  # p = 0 in every row with a non-finite output
    delta = jnp.where(bad, 0, jnp.sum(d_out.astype(acc) * out, axis=-1, keepdims=True))
    q, k, v = (blocks.finite_or_zero(x) for x in (q, k, v))
    d_q = _backward_dq(cfg, extent, q, k, v, seg, tables, spans, lse, d_out, delta)
    d_k, d_v = _backward_dkdv(cfg, extent, q, k, v, seg, tables, spans, lse, d_out, delta)
    fold = lambda x: x.reshape(k.shape[0], k.shape[1], cfg.groups, *x.shape[2:]).sum(2)
    return (d_q.astype(q.dtype), fold(d_k).astype(k.dtype), fold(d_v).astype(v.dtype),
            None, None, None)


_attention.defvjp(_attention_fwd, _attention_bwd)


class _Walk:
    """Grid (batch, heads, own block x, walked block y): which walked block a step fetches
    and whether it is visited. ``keys``: x is a query block, y a key block (forward, dQ);
    else x is a key block, y a query block (dK/dV). The step's scalar-prefetch refs are the
    fetch table (with a block mask) and then, with ``documents``, the two span refs
    (:func:`document_spans`)."""

    def __init__(self, cfg: _Config, n: int, keys: bool, mask_extent, documents: bool = False):
        self.cfg, self.n, self.keys, self.extent = cfg, n, keys, mask_extent
        self.documents = documents

    @property
    def dense(self) -> bool:  # every step visited
        return (self.extent is None and not self.documents and not self.cfg.causal
                and self.cfg.window is None)

    def __call__(self, b, h, x, y, *refs):
        """(the walked block to fetch, whether the step is visited) as int32 / bool."""
        table, spans = (refs[0], refs[1:]) if self.extent is not None else (None, refs)
        if self.documents:  # the span of row b's block x
            span_lo, span_hi = (ref[b * self.n + x] for ref in spans)
        if table is not None:
            mb, mh = self.extent
            row = (b if mb > 1 else 0) * mh + (h if mh > 1 else 0)
            fetch = table[(row * self.n + x) * self.n + y]
            fetch, visited = jnp.maximum(fetch, 0), fetch == y
            if self.documents:
                visited &= (y >= span_lo) & (y < span_hi)
            return fetch, visited
        lo, hi = (_key_range if self.keys else _query_range)(self.cfg, x, self.n)
        if self.documents:
            lo, hi = jnp.maximum(lo, span_lo), jnp.minimum(hi, span_hi)
        fetch = jnp.maximum(jnp.minimum(jnp.maximum(y, lo), hi - 1), 0)
        return fetch, (y >= lo) & (y < hi)

    def fetched(self, b, h, x, y, *refs):
        return self(b, h, x, y, *refs)[0]

    def when_visited(self, refs, step):
        """Runs ``step()`` on the grid steps the mask can reach (refs: the scalar prefetch)."""
        if self.dense:
            step()
            return
        b, h, x, y = (pl.program_id(a) for a in range(4))
        pl.when(self(b, h, x, y, *refs)[1])(step)


def _specs(cfg: _Config, walk: _Walk, has_seg: bool):
    """Block specs, one block each: ``own(width, kv)`` (the grid's own block x) and
    ``walked(width, kv)`` (the block the step fetches) of a [batch, heads or kv_heads, padded,
    width] array (``kv``: indexed by kv head h // groups), and the segment-id specs [q column
    [block, 1], k row [1, block]] (none without segment ids)."""
    block, groups = cfg.block, cfg.groups
    head = lambda h, kv: jax.lax.div(h, jnp.asarray(groups, h.dtype)) if kv else h

    def own(width, kv=False):
        return pl.BlockSpec((pl.squeezed, pl.squeezed, block, width),
                            lambda b, h, x, y, *t: (b, head(h, kv), x, 0))

    def walked(width, kv=False):
        return pl.BlockSpec((pl.squeezed, pl.squeezed, block, width), lambda b, h, x, y, *t: (
            b, head(h, kv), walk.fetched(b, h, x, y, *t), 0))

    if not has_seg:
        return own, walked, []
    own_col = pl.BlockSpec((pl.squeezed, block, 1), lambda b, h, x, y, *t: (b, x, 0))
    walk_col = pl.BlockSpec((pl.squeezed, block, 1),
                            lambda b, h, x, y, *t: (b, walk.fetched(b, h, x, y, *t), 0))
    own_row = pl.BlockSpec((pl.squeezed, 1, block), lambda b, h, x, y, *t: (b, 0, x))
    walk_row = pl.BlockSpec((pl.squeezed, 1, block),
                            lambda b, h, x, y, *t: (b, 0, walk.fetched(b, h, x, y, *t)))
    return own, walked, [own_col, walk_row] if walk.keys else [walk_col, own_row]


def _call(cfg, kernel, n, batch, heads, prefetch, in_specs, out_specs, out_shape, scratch,
          args, suffix):
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=len(prefetch), grid=(batch, heads, n, n), in_specs=in_specs,
        out_specs=out_specs, scratch_shapes=scratch)
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid_spec=grid_spec, name=f"{_NAME}_{suffix}",
        interpret=pltpu.InterpretParams() if cfg.interpret else False,
        compiler_params=pltpu.CompilerParams(dimension_semantics=_SEMANTICS),
    )(*prefetch, *args)


def _split(refs, prefetch, counts):
    """Kernel refs -> (the scalar-prefetch refs as a tuple, then one list per count)."""
    refs = list(refs)
    head = tuple(refs[:len(prefetch)])
    refs = refs[len(head):]
    out = [head]
    for c in counts:
        out.append(refs[:c])
        refs = refs[c:]
    return out


def _segments(seg_refs):
    """(q column [block, 1], k row [1, block]) of a step, or (0, 0): every key same document."""
    return (seg_refs[0][...], seg_refs[1][...]) if seg_refs else (0, 0)


def _seg_args(seg):
    return () if seg is None else (seg[..., None], seg[:, None, :])


def _plan(cfg: _Config, extent, tables, spans, n: int, keys: bool, seg):
    """(the scalar-prefetch arrays: the fetch table and the document spans, where there are
    some; the grid walk; its block specs) of a kernel that walks key blocks (``keys``: forward,
    dQ) or query blocks (dK/dV)."""
    walk = _Walk(cfg, n, keys, extent, documents=spans is not None)
    prefetch = () if tables is None else (tables[0 if keys else 1],)
    prefetch += () if spans is None else spans
    return prefetch, walk, _specs(cfg, walk, seg is not None)


def _forward(cfg: _Config, extent, q, k, v, seg, tables, spans):
    batch, heads, padded, d = q.shape
    n, block, dv = padded // cfg.block, cfg.block, v.shape[-1]
    acc = jnp.promote_types(q.dtype, jnp.float32)
    prefetch, walk, (own, walked, seg_specs) = _plan(cfg, extent, tables, spans, n, True, seg)
    n_in = 3 + len(seg_specs)

    def kernel(*refs):
        t, (q_ref, k_ref, v_ref, *seg_refs), (o_ref, lse_ref), (m_ref, l_ref, acc_ref) = (
            _split(refs, prefetch, (n_in, 2, 3)))
        i, j = pl.program_id(2), pl.program_id(3)

        @pl.when(j == 0)
        def _init():
            m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, acc)
            l_ref[...] = jnp.zeros(l_ref.shape, acc)
            acc_ref[...] = jnp.zeros(acc_ref.shape, acc)

        def step():
            s = _scores(cfg, q_ref[...], k_ref[...], *_segments(seg_refs), i, j)
            m = m_ref[...]
            m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
            p = jnp.exp(s - m_safe)
            alpha = jnp.exp(m - m_safe)
            m_ref[...] = m_new
            l_ref[...] = alpha * l_ref[...] + jnp.sum(p, axis=1, keepdims=True)
            acc_ref[...] = alpha * acc_ref[...] + blocks.dot(p.astype(v_ref.dtype), v_ref[...])

        walk.when_visited(t, step)

        @pl.when(j == n - 1)
        def _finish():
            l = l_ref[...]
            empty = l == 0
            safe = jnp.where(empty, 1.0, l)
            o_ref[...] = jnp.where(empty, 0.0, acc_ref[...] / safe).astype(o_ref.dtype)
            lse_ref[...] = jnp.where(empty, jnp.inf, m_ref[...] + jnp.log(safe))

    out_shape = [jax.ShapeDtypeStruct((batch, heads, padded, dv), q.dtype),
                 jax.ShapeDtypeStruct((batch, heads, padded, 1), acc)]
    in_specs = [own(d), walked(d, kv=True), walked(dv, kv=True), *seg_specs]
    out_specs = [own(dv), own(1)]
    scratch = [pltpu.VMEM((block, 1), acc), pltpu.VMEM((block, 1), acc),
               pltpu.VMEM((block, dv), acc)]
    return _call(cfg, kernel, n, batch, heads, prefetch, in_specs, out_specs, out_shape,
                 scratch, (q, k, v, *_seg_args(seg)), "fwd")


def _backward_dq(cfg: _Config, extent, q, k, v, seg, tables, spans, lse, d_out, delta):
    batch, heads, padded, d = q.shape
    n, block, dv = padded // cfg.block, cfg.block, v.shape[-1]
    acc = lse.dtype
    prefetch, walk, (own, walked, seg_specs) = _plan(cfg, extent, tables, spans, n, True, seg)
    n_in = 6 + len(seg_specs)

    def kernel(*refs):
        t, ins, (dq_out,), (dq_ref,) = _split(refs, prefetch, (n_in, 1, 1))
        q_ref, k_ref, v_ref, lse_ref, do_ref, delta_ref, *seg_refs = ins
        i, j = pl.program_id(2), pl.program_id(3)

        @pl.when(j == 0)
        def _init():
            dq_ref[...] = jnp.zeros(dq_ref.shape, acc)

        def step():
            k_blk = k_ref[...]
            p = _probabilities(cfg, q_ref[...], k_blk, *_segments(seg_refs), lse_ref[...], i, j)
            ds = p * (blocks.dot_nt(do_ref[...], v_ref[...]) - delta_ref[...])
            dq_ref[...] += blocks.dot(ds.astype(k_blk.dtype), k_blk) * cfg.scale

        walk.when_visited(t, step)

        @pl.when(j == n - 1)
        def _finish():
            dq_out[...] = dq_ref[...]

    out_shape = jax.ShapeDtypeStruct((batch, heads, padded, d), acc)
    in_specs = [own(d), walked(d, kv=True), walked(dv, kv=True), own(1), own(dv), own(1),
                *seg_specs]
    return _call(cfg, kernel, n, batch, heads, prefetch, in_specs, own(d), out_shape,
                 [pltpu.VMEM((block, d), acc)], (q, k, v, lse, d_out, delta, *_seg_args(seg)),
                 "bwd_dq")


def _backward_dkdv(cfg: _Config, extent, q, k, v, seg, tables, spans, lse, d_out, delta):
    """dK, dV per query head ([batch, heads, padded, d]); the caller sums each group."""
    batch, heads, padded, d = q.shape
    n, block, dv = padded // cfg.block, cfg.block, v.shape[-1]
    acc = lse.dtype
    prefetch, walk, (own, walked, seg_specs) = _plan(cfg, extent, tables, spans, n, False, seg)
    n_in = 6 + len(seg_specs)

    def kernel(*refs):
        t, ins, (dk_out, dv_out), (dk_ref, dv_ref) = _split(refs, prefetch, (n_in, 2, 2))
        q_ref, k_ref, v_ref, lse_ref, do_ref, delta_ref, *seg_refs = ins
        j, i = pl.program_id(2), pl.program_id(3)

        @pl.when(i == 0)
        def _init():
            dk_ref[...] = jnp.zeros(dk_ref.shape, acc)
            dv_ref[...] = jnp.zeros(dv_ref.shape, acc)

        def step():
            q_blk, do_blk = q_ref[...], do_ref[...]
            p = _probabilities(cfg, q_blk, k_ref[...], *_segments(seg_refs), lse_ref[...], i, j)
            dv_ref[...] += blocks.dot_tn(p.astype(do_blk.dtype), do_blk)
            ds = p * (blocks.dot_nt(do_blk, v_ref[...]) - delta_ref[...])
            dk_ref[...] += blocks.dot_tn(ds.astype(q_blk.dtype), q_blk) * cfg.scale

        walk.when_visited(t, step)

        @pl.when(i == n - 1)
        def _finish():
            dk_out[...] = dk_ref[...]
            dv_out[...] = dv_ref[...]

    out_shape = [jax.ShapeDtypeStruct((batch, heads, padded, d), acc),
                 jax.ShapeDtypeStruct((batch, heads, padded, dv), acc)]
    in_specs = [walked(d), own(d, kv=True), own(dv, kv=True), walked(1), walked(dv), walked(1),
                *seg_specs]
    out_specs = [own(d), own(dv)]
    scratch = [pltpu.VMEM((block, d), acc), pltpu.VMEM((block, dv), acc)]
    return _call(cfg, kernel, n, batch, heads, prefetch, in_specs, out_specs, out_shape,
                 scratch, (q, k, v, lse, d_out, delta, *_seg_args(seg)), "bwd_dkdv")
