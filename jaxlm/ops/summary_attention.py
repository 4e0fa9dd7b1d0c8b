"""Local attention fused with attention to per-block summaries in one softmax: the machinery
that Combiner (:mod:`jaxlm.ops.combiner`) and Core Context Aware attention
(:mod:`jaxlm.ops.core_context`) share.

Blocks of ``B`` tokens are cut from the start of each document (of each run of equal
``segment_ids``, :func:`jaxlm.ops.segments.document_ids`), so a packed row equals its documents
run one by one. Only complete blocks (``B`` tokens of one document) have a summary: a key
``κ_m``, a value ``ν_m = Σ_{j∈m} w_mj v_j`` (``w_m`` a distribution over the block's tokens)
and a logit bias ``β``. Query ``t`` reads

* its local keys: ``j <= t`` of its document with ``t - j < span`` and ``local_ids`` equal, and
* the summary of every block of its document that ends before ``t``'s own block starts,

in one softmax, with ``s_tj = scale·q_t·k_j`` and ``ℓ_tm = scale·q_t·κ_m + β``::

    o_t = (Σ_{j local} e^{s_tj} v_j + Σ_m e^{ℓ_tm} ν_m) / Z_t = Σ_j P_tj v_j,
    Z_t = Σ_{j local} e^{s_tj} + Σ_m e^{ℓ_tm},
    P_tj = ([j local] e^{s_tj} + [block(j) read by t] e^{ℓ_t,block(j)} w_{block(j), j}) / Z_t,

so every row of P is a distribution over the keys the query reads.

Forms: :func:`dense_probabilities` builds P as a [length, length] matrix from per-token
quantities (each token carries its block's κ and its own weight w_j): the references.
:func:`fused_attention` is the fast form: the local keys of each query block of ``span``
queries lie in that block and the one before it, and the summaries of the complete blocks are
gathered into ``length // B`` slots, so scores take O(length · (2·span + length / B)) memory
and time, never [length, length].

Layout inside this module: q [batch, length, heads, d]; k, v already repeated to ``heads``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import (Impl, check_qkv, check_shape, nonfinite_reach, resolve_impl,
                              split_nonfinite)
from jaxlm.ops.segments import document_ids, segment_positions
from jaxlm.ops.sparse_attention import repeat_kv_heads


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """Where each token's block lies, blocks cut from each document's start.

    doc, pos, first: int32 [batch, length]: the canonical document id, the position in the
    document, and the row position of the first token of the token's block. complete: bool
    [batch, length]: the token's block has ``block`` tokens. starts: int32 [batch,
    length // block]: row positions of the first tokens of the complete blocks, in order,
    ``length`` in the unused slots; valid: bool, the used slots.
    """
    doc: jax.Array
    pos: jax.Array
    first: jax.Array
    complete: jax.Array
    starts: jax.Array
    valid: jax.Array
    block: int


def block_layout(segment_ids: jax.Array | None, batch: int, length: int, block: int
                 ) -> BlockLayout:
    """The :class:`BlockLayout` of rows of ``length`` tokens (``segment_ids`` [batch, length]
    or None: one document per row) in blocks of ``block`` tokens."""
    if segment_ids is None:
        pos = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        doc = jnp.zeros((batch, length), jnp.int32)
    else:
        pos = segment_positions(segment_ids).astype(jnp.int32)
        doc = document_ids(segment_ids)
    index = jnp.arange(length, dtype=jnp.int32)
    first = index - pos % block
    last = first + block - 1
    inside = jnp.take_along_axis(doc, jnp.minimum(last, length - 1), axis=1)
    complete = (last < length) & (inside == doc)
    n_slots = length // block

    def row_starts(is_start):
        (starts,) = jnp.nonzero(is_start, size=n_slots, fill_value=length)
        return starts.astype(jnp.int32)

    starts = jax.vmap(row_starts)(complete & (pos % block == 0))
    return BlockLayout(doc, pos, first, complete, starts, starts < length, block)


def check_inputs(op: str, q: jax.Array, k: jax.Array, v: jax.Array,
                 segment_ids: jax.Array | None, impl: str | Impl, scale: float | None
                 ) -> tuple[Impl, float]:
    """Raises unless q, k, v agree (:func:`jaxlm.ops.checks.check_qkv`), ``segment_ids`` is
    None or [batch, length] and ``impl`` is "reference", "xla" or "auto". Returns (the impl,
    the scale: head_dim ** -0.5 when None)."""
    check_qkv(op, q, k, v)
    if segment_ids is not None:
        check_shape(op, "segment_ids", segment_ids, q.shape[:2], "[batch, length]")
    chosen = resolve_impl(op, impl, ("reference", "xla"))
    return chosen, q.shape[-1] ** -0.5 if scale is None else float(scale)


def prepare(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None,
            block: int) -> tuple[tuple, tuple, BlockLayout]:
    """((q, k, v) in the accumulation dtype (at least float32) with k, v repeated to q's
    heads and non-finite entries zeroed, (q_bad, k_bad, v_bad) bool [batch, length, heads],
    the :class:`BlockLayout` of blocks of ``block``)."""
    batch, length, heads, _ = q.shape
    acc = jnp.promote_types(q.dtype, jnp.float32)
    q, q_bad = split_nonfinite(q.astype(acc), 3)
    k, k_bad = split_nonfinite(repeat_kv_heads(k, heads, axis=2).astype(acc), 3)
    v, v_bad = split_nonfinite(repeat_kv_heads(v, heads, axis=2).astype(acc), 3)
    return (q, k, v), (q_bad, k_bad, v_bad), block_layout(segment_ids, batch, length, block)


def region_ids(layout: BlockLayout) -> jax.Array:
    """int32 [batch, length]: the index along the row of each token's block (equal ids: one
    block of one document)."""
    start = layout.pos % layout.block == 0
    return jnp.cumsum(start, axis=1, dtype=jnp.int32) - 1


def segment_softmax(logits: jax.Array, regions: jax.Array, n: int) -> jax.Array:
    """softmax of logits [length, heads] within each block (ids ``regions`` [length] < n)."""
    peak = jax.ops.segment_max(logits, regions, num_segments=n)[regions]
    e = jnp.exp(logits - peak)
    return e / jax.ops.segment_sum(e, regions, num_segments=n)[regions]


def gather_blocks(x: jax.Array, layout: BlockLayout) -> jax.Array:
    """x [batch, length, ...] -> [batch, length // block, block, ...]: the tokens of each
    complete block (unused slots read the last token: mask them with ``layout.valid``)."""
    length = x.shape[1]
    idx = jnp.minimum(layout.starts[:, :, None] + jnp.arange(layout.block), length - 1)
    flat = idx.reshape(idx.shape[0], -1)
    gathered = jax.vmap(lambda row, i: row[i])(x, flat)
    return gathered.reshape(*idx.shape, *x.shape[2:])


def reads_summary(layout: BlockLayout, t_first: jax.Array, t_doc: jax.Array) -> jax.Array:
    """bool [batch, queries, slots]: query (first of its block ``t_first``, document ``t_doc``,
    [batch, queries]) reads the summary in each slot."""
    doc_of_slot = jnp.take_along_axis(layout.doc, jnp.minimum(layout.starts, layout.doc.shape[1]
                                                              - 1), axis=1)
    return (layout.valid[:, None, :] & (doc_of_slot[:, None, :] == t_doc[:, :, None])
            & (layout.starts[:, None, :] + layout.block <= t_first[:, :, None]))


def summary_reach(bad: jax.Array, layout: BlockLayout) -> jax.Array:
    """bool [batch, length, heads]: which queries read a summary built from a bad (non-finite)
    input; bad: bool [batch, length, heads]. A summary reads every token of its block, and a
    query reads the blocks of its document that end before its own block starts."""
    batch, length = bad.shape[:2]
    index = jnp.arange(length)[None, :, None]
    last_bad = jax.lax.cummax(jnp.where(bad & layout.complete[..., None], index, -1), axis=1)
    before = jnp.take_along_axis(last_bad, jnp.maximum(layout.first - 1, 0)[..., None], axis=1)
    doc_start = (jnp.arange(length)[None] - layout.pos)[..., None]
    return (layout.first[..., None] > doc_start) & (before >= doc_start)


def local_reach(bad: jax.Array, local_ids: jax.Array, span: int) -> jax.Array:
    """bool [batch, length, heads]: which queries read a bad key locally (``j <= t``,
    ``t - j < span``, equal ``local_ids``)."""
    return nonfinite_reach(bad, local_ids, causal=True, window=span)


def dense_probabilities(q: jax.Array, k: jax.Array, local: jax.Array, reads: jax.Array,
                        kappa: jax.Array, weight: jax.Array, beta: float, scale: float,
                        representative: jax.Array) -> jax.Array:
    """The [length, length] probabilities P of the module docstring, per head.

    q, k: [batch, length, heads, d] (in the accumulation dtype); local: bool [batch, length,
    length] (query, key); reads: bool [batch, length, length]: query t reads the summary of
    key j's block; kappa: [batch, length, heads, d], the summary key of each token's block;
    weight: [batch, length, heads], w_j (each token's weight within its block);
    representative: bool [batch, length], one token per block (its first), so that each
    summary enters the normaliser once. Returns P [batch, heads, length, length].
    """
    s = jnp.einsum("bthd,bjhd->bhtj", q, k) * scale
    ell = jnp.einsum("bthd,bjhd->bhtj", q, kappa) * scale + beta
    neg = jnp.asarray(-jnp.inf, s.dtype)
    local, reads = local[:, None], reads[:, None]
    terms = jnp.concatenate([jnp.where(local, s, neg),
                             jnp.where(reads & representative[:, None, None], ell, neg)], -1)
    log_z = jax.nn.logsumexp(terms, axis=-1, keepdims=True)
    direct = jnp.where(local, jnp.exp(s - log_z), 0)
    summary = jnp.where(reads, jnp.exp(ell - log_z) * jnp.moveaxis(weight, 1, 2)[:, :, None], 0)
    return direct + summary


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, kappa: jax.Array, nu: jax.Array,
                    beta: float, reads: jax.Array, local_ids: jax.Array, span: int,
                    scale: float) -> jax.Array:
    """The fast form: one softmax over each query's local keys and the summaries it reads.

    q, k, v: [batch, length, heads, d|dv] (accumulation dtype); kappa, nu: [batch, slots,
    heads, d|dv]; reads: bool [batch, length, slots]; local_ids: [batch, length] (key j is
    local to query t when j <= t, t - j < span and their ids are equal). Each query block of
    ``span`` queries scores the keys of its block and the block before: [.., span, 2·span]
    scores, plus [.., slots] summary scores. Returns [batch, length, heads, dv].
    """
    batch, length, heads, _ = q.shape
    nb = -(-length // span)
    padded = nb * span
    pad = lambda x, value=0: jnp.pad(x, [(0, 0), (0, padded - length)]
                                     + [(0, 0)] * (x.ndim - 2), constant_values=value)
    qb = pad(q).reshape(batch, nb, span, heads, -1)
    blocks = lambda x: pad(x).reshape(batch, nb, span, heads, -1)
    two = lambda x: jnp.concatenate([jnp.pad(x, [(0, 0), (1, 0)] + [(0, 0)] * (x.ndim - 2))
                                     [:, :-1], x], axis=2)  # block before, then own block
    kk, vv = two(blocks(k)), two(blocks(v))  # [b, nb, 2span, h, d]
    ids = pad(local_ids, -1).reshape(batch, nb, span)
    kids = two(ids[..., None])[..., 0]  # [b, nb, 2span]
    q_pos = jnp.arange(padded).reshape(nb, span)
    k_pos = q_pos[:, :1] - span + jnp.arange(2 * span)  # [nb, 2span]
    qp, kp = q_pos[:, :, None], k_pos[:, None, :]
    mask = (kp >= 0) & (kp <= qp) & (qp - kp < span)
    mask = mask[None] & (ids[..., :, None] == kids[..., None, :])  # [b, nb, span, 2span]
    s_local = jnp.einsum("bnqhd,bnkhd->bhnqk", qb, kk) * scale
    s_sum = jnp.einsum("bthd,bmhd->bhtm", pad(q), kappa) * scale + beta
    s_sum = s_sum.reshape(batch, heads, nb, span, -1)
    reads = pad(reads, False).reshape(batch, nb, span, -1)
    masks = jnp.concatenate([mask, reads], axis=-1)[:, None]  # [b, 1, nb, span, 2span + m]
    scores = jnp.where(masks, jnp.concatenate([s_local, s_sum], axis=-1), -jnp.inf)
    any_key = jnp.any(masks, axis=-1, keepdims=True)
    probs = jax.nn.softmax(jnp.where(any_key, scores, 0.0), axis=-1)
    probs = jnp.where(masks, probs, 0.0)
    p_local, p_sum = probs[..., :2 * span], probs[..., 2 * span:]
    out = (jnp.einsum("bhnqk,bnkhd->bnqhd", p_local, vv)
           + jnp.einsum("bhnqm,bmhd->bnqhd", p_sum, nu))
    return out.reshape(batch, padded, heads, -1)[:, :length]
