"""Landmark attention ("Landmark Attention: Random-Access Infinite Context Length for
Transformers", Mohtashami and Jaggi, 2023).

The input is cut into blocks of ``block_size`` tokens and a landmark token follows every block,
so a block occupies P = block_size + 1 positions and position p (counted from its document's
start) lies in block b(p) = ⌊p / P⌋; it is a landmark when p mod P = block_size. A block is
complete once its landmark is in the past. For query i and keys j <= i of its document, with
scores s_ij = q_i · k_j / √d:

    main group    M_i = {j : b(j) = b(i)} ∪ {landmark L_b of every block b < b(i)}
    p^M_ij = exp(s_ij) / Σ_{j'∈M_i} exp(s_ij')                          (j ∈ M_i)
    p^b_ij = exp(s_ij) / Σ_{j' regular in b} exp(s_ij')                  (j regular in b < b(i))

    a_ij = p^M_ij                  if b(j) = b(i)         (its own block, attended directly)
         = p^b_ij · p^M_{i,L_b}    if j is regular in block b < b(i)
         = 0                       if j is the landmark of a block b < b(i)
    out_i = Σ_j a_ij v_j

(the paper's grouped softmax: a landmark's weight is handed to the tokens of its block, so
Σ_j a_ij = 1). Trained end to end, the landmark keys learn to stand for their blocks. At
inference the paper retrieves blocks by their landmarks: query i scores the landmarks of the
complete earlier blocks, keeps the ``top_k`` best, and the grouped softmax runs over those
blocks and its own one only (the landmarks of the other blocks leave M_i). With ``top_k`` at
least the number of earlier blocks, retrieval equals the full form.

Landmarks are found by position (doc-relative with ``segment_ids``), so a model trains with them
once the data carries a landmark token after every block: :func:`insert_landmarks` inserts one
(a token id, or an embedding vector) and :func:`remove_landmarks` drops the outputs at those
positions (whose next-token predictions are not trained).

Layout as :mod:`jaxlm.ops.attention`: q [batch, length, heads, head_dim], k and v
[batch, length, kv_heads, head_dim], grouped-query heads when kv_heads divides heads.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.ops.checks import (Impl, accepts_numpy, as_floats, check_positive, check_qkv,
                              check_shape, resolve_impl)
from jaxlm.ops.segments import document_ids, segment_positions
from jaxlm.ops.sparse_attention import _unblock, choose_blocks, repeat_kv_heads, to_blocks


# --------------------------------------------------------------------------------------------
# Data helpers: landmarks in the token stream.


def landmark_slots(length: int, block_size: int) -> jax.Array:
    """bool [length]: True at the positions p with p mod (block_size + 1) = block_size."""
    return jnp.arange(length) % (block_size + 1) == block_size


@accepts_numpy
def insert_landmarks(x: jax.Array, block_size: int, landmark) -> jax.Array:
    """Inserts ``landmark`` after every complete block of ``block_size`` items along axis 1.

    x: [batch, length, ...] (token ids, or embeddings); landmark: a scalar (a dedicated token
    id) or an array broadcastable to x.shape[2:] (a learned embedding). Returns
    [batch, length + length // block_size, ...] in x's dtype, its landmarks where
    :func:`landmark_slots` is True. Unpacked rows: pack documents after inserting.
    """
    check_positive("insert_landmarks", "block_size", block_size, allow_none=False)
    batch, length = x.shape[:2]
    n = length // block_size
    full, tail = x[:, :n * block_size], x[:, n * block_size:]
    blocks = full.reshape(batch, n, block_size, *x.shape[2:])
    marks = jnp.broadcast_to(jnp.asarray(landmark, x.dtype), (batch, n, 1, *x.shape[2:]))
    with_marks = jnp.concatenate([blocks, marks], axis=2)
    return jnp.concatenate([with_marks.reshape(batch, n * (block_size + 1), *x.shape[2:]),
                            tail], axis=1)


@accepts_numpy
def remove_landmarks(y: jax.Array, block_size: int) -> jax.Array:
    """The inverse of :func:`insert_landmarks` on axis 1: y [batch, n, ...] -> the positions
    that are not landmark slots, [batch, n - n // (block_size + 1), ...]."""
    check_positive("remove_landmarks", "block_size", block_size, allow_none=False)
    keep = np.arange(y.shape[1]) % (block_size + 1) != block_size  # static
    return y[:, np.flatnonzero(keep)]


# --------------------------------------------------------------------------------------------
# The slow, explicit form.


def _doc_layout(batch: int, length: int, segment_ids):
    """(doc-relative positions, canonical document ids) [batch, length]."""
    if segment_ids is None:
        pos = jnp.broadcast_to(jnp.arange(length), (batch, length))
        return pos, jnp.zeros((batch, length), jnp.int32)
    return segment_positions(segment_ids), document_ids(segment_ids)


def _reference(q, k, v, block_size, pos, doc, scale, top_k):
    """Dense [length, length] masks and probabilities, written as the equations read."""
    heads, kv_heads = q.shape[2], k.shape[2]
    P = block_size + 1
    acc = jnp.promote_types(q.dtype, jnp.float32)
    kh = jnp.repeat(k, heads // kv_heads, axis=2).astype(acc)
    vh = jnp.repeat(v, heads // kv_heads, axis=2).astype(acc)
    s = jnp.einsum("bihd,bjhd->bhij", q.astype(acc), kh) * scale
    blk, is_lm = pos // P, pos % P == block_size
    pair = lambda a: (a[:, :, None], a[:, None, :])  # (…[i], …[j]) as [b, L, L]
    (bi, bj), (di, dj), (pi, pj) = pair(blk), pair(doc), pair(pos)
    seen = (di == dj) & (pj <= pi)
    own = seen & (bj == bi)
    earlier_lm = seen & (bj < bi) & is_lm[:, None, :]
    earlier_reg = seen & (bj < bi) & ~is_lm[:, None, :]
    own, earlier_lm, earlier_reg = (m[:, None] for m in (own, earlier_lm, earlier_reg))
    same = (di == dj) & (bi == bj)  # [b, j, j']: one document, one block
    lm_of = (same & is_lm[:, None, :]).astype(acc)  # j' is the landmark of j's block
    if top_k is not None:  # keep the top_k earlier landmarks of each query, by score
        lm_score = jnp.where(earlier_lm, s, -jnp.inf)
        rank = jnp.argsort(jnp.argsort(-lm_score, axis=-1), axis=-1)  # 0 = best
        kept_lm = earlier_lm & (rank < top_k)  # [b, h, i, j]: j a kept landmark
        # regular j is kept when the landmark of its block is: same doc, same block, landmark
        kept_block = jnp.einsum("bhil,bjl->bhij", kept_lm.astype(acc), lm_of) > 0
        earlier_lm, earlier_reg = kept_lm, earlier_reg & kept_block
    main = own | earlier_lm
    p_main = jnp.where(main, jax.nn.softmax(jnp.where(main, s, -jnp.inf), axis=-1), 0.0)
    # p^b: softmax over the regular tokens of j's block (same document, same block)
    same_block = (same & ~is_lm[:, None, :]).astype(acc)  # j' regular in j's block
    row_max = jnp.max(jnp.where(earlier_reg, s, -jnp.inf), axis=-1, keepdims=True)
    e = jnp.where(earlier_reg, jnp.exp(s - jnp.where(jnp.isfinite(row_max), row_max, 0.0)), 0.0)
    den = jnp.einsum("bhik,bjk->bhij", e, same_block)
    p_block = jnp.where(earlier_reg, e / jnp.where(earlier_reg, den, 1.0), 0.0)
    p_landmark = jnp.einsum("bhil,bjl->bhij", p_main, lm_of)  # p^M_{i, L_b(j)}
    a = jnp.where(own, p_main, 0.0) + p_block * p_landmark
    return jnp.einsum("bhij,bjhd->bihd", a, vh).astype(q.dtype)


# --------------------------------------------------------------------------------------------
# The fast form: each query gathers its own block, then one earlier block at a time, and keeps
# the main group's softmax online (flash attention's running max and sum), each earlier block
# entering as its landmark's weight times its own normalised block softmax.


def grouped_attention(q, k, v, q_start, q_pos, block_index, block_valid, *, block_size: int,
                      scale: float) -> jax.Array:
    """The grouped softmax of query i over its own block and the earlier blocks listed for it.

    q: [batch, q_len, heads, d]; k, v: [batch, k_len, kv_heads, d] (rows of a whole sequence or
    a KV cache); q_start: int [batch, q_len], the row of each query's document start (its
    position i is row q_start + q_pos); q_pos: doc-relative positions [batch, q_len];
    block_index, block_valid: [S, batch, q_len, heads], doc-relative earlier block numbers
    (each < the query's own block) and whether the slot is used. Returns [batch, q_len, heads,
    d] in at least float32. Memory O(q_len · P · d) at a time; the S steps are a ``lax.scan``
    whose body is rematerialised in the backward pass.
    """
    batch, q_len, heads, d = q.shape
    kv_heads = k.shape[2]
    P = block_size + 1
    acc = jnp.promote_types(q.dtype, jnp.float32)
    qa = q.astype(acc)
    offsets = jnp.arange(P)

    def gather(x, rows):  # x [b, K, kvh, d]; rows [b, Lq, h, P] -> [b, Lq, h, P, d]
        xh = jnp.repeat(x, heads // kv_heads, axis=2).astype(acc)  # [b, K, h, d]
        head = jnp.arange(heads)[None, :, None]
        return jax.vmap(lambda xb, rb: xb[rb, head])(xh, rows)

    def scores_of(rows):
        kg, vg = gather(k, rows), gather(v, rows)
        return jnp.einsum("blhd,blhpd->blhp", qa, kg) * scale, vg

    own_block = q_pos // P
    own_rows = (q_start + own_block * P)[..., None, None] + offsets  # [b, Lq, 1, P]
    own_rows = jnp.broadcast_to(own_rows, (batch, q_len, heads, P))
    own_ok = offsets <= (q_pos % P)[..., None, None]
    s, vg = scores_of(jnp.where(own_ok, own_rows, 0))
    s = jnp.where(own_ok, s, -jnp.inf)
    m = jnp.max(s, axis=-1)  # the query itself is always there: finite
    w = jnp.exp(s - m[..., None])
    l = jnp.sum(w, axis=-1)
    o = jnp.einsum("blhp,blhpd->blhd", w, vg)
    regular = offsets < block_size

    @jax.checkpoint
    def body(carry, slot):
        m, l, o = carry
        index, valid = slot
        rows = (q_start[..., None] + index * P)[..., None] + offsets  # [b, Lq, h, P]
        s, vg = scores_of(jnp.where(valid[..., None], rows, 0))
        local = jax.nn.softmax(jnp.where(regular, s, -jnp.inf), axis=-1)
        block_out = jnp.einsum("blhp,blhpd->blhd", jnp.where(regular, local, 0.0), vg)
        s_landmark = s[..., block_size]
        m_new = jnp.maximum(m, jnp.where(valid, s_landmark, -jnp.inf))
        c = jnp.exp(m - m_new)
        w = jnp.where(valid, jnp.exp(jnp.where(valid, s_landmark - m_new, 0.0)), 0.0)
        return (m_new, l * c + w, o * c[..., None] + w[..., None] * block_out), None

    (m, l, o), _ = jax.lax.scan(body, (m, l, o), (block_index, block_valid))
    return o / l[..., None]


def blocked_attention(q, k, v, *, block_size: int, scale: float) -> jax.Array:
    """The grouped softmax over every earlier block for unpacked rows, by whole-block matrix
    products: scores [batch, heads, n, P, n, P] as dense attention's (O(length²) memory, the
    fastest XLA form for training at short lengths). Returns [batch, length, heads, d] in at
    least float32."""
    length, heads = q.shape[1], q.shape[2]
    P = block_size + 1
    acc = jnp.promote_types(q.dtype, jnp.float32)
    qb = to_blocks(q, P).astype(acc)  # [b, h, n, P, d]
    kb = repeat_kv_heads(to_blocks(k, P), heads).astype(acc)
    vb = repeat_kv_heads(to_blocks(v, P), heads).astype(acc)
    n = qb.shape[2]
    s = jnp.einsum("bhipd,bhjqd->bhipjq", qb, kb) * scale
    regular = jnp.arange(P) < block_size  # an earlier block is complete: no padding in it
    local = jnp.where(regular, jax.nn.softmax(jnp.where(regular, s, -jnp.inf), axis=-1), 0.0)
    block_out = jnp.einsum("bhipjq,bhjqd->bhipjd", local, vb)  # each block's own softmax
    earlier = jnp.arange(n)[None, :] < jnp.arange(n)[:, None]  # [i, j]
    s_landmark = jnp.where(earlier[:, None, :], s[..., block_size], -jnp.inf)  # [b, h, n, P, n]
    s_own = jnp.einsum("bhipd,bhiqd->bhipq", qb, kb) * scale
    s_own = jnp.where(jnp.tri(P, dtype=bool), s_own, -jnp.inf)
    w = jax.nn.softmax(jnp.concatenate([s_own, s_landmark], axis=-1), axis=-1)
    out = (jnp.einsum("bhipq,bhiqd->bhipd", w[..., :P], vb)
           + jnp.einsum("bhipj,bhipjd->bhipd", w[..., P:], block_out))
    return _unblock(out, length)


def earlier_blocks(q_pos, block_size, n_blocks, heads):
    """Every earlier block of each query, nearest first: ([S, b, Lq, h] index, valid),
    S = n_blocks - 1."""
    own = (q_pos // (block_size + 1))[None, ..., None]  # [1, b, Lq, 1]
    r = jnp.arange(1, max(n_blocks, 1), dtype=own.dtype)[:, None, None, None]
    index = jnp.broadcast_to(own - r, (r.shape[0], *q_pos.shape, heads))
    return jnp.maximum(index, 0), index >= 0


def landmark_scores(q, k, q_start, n_blocks: int, block_size: int, scale: float):
    """Scores of each query against the landmark keys of its document's blocks:
    [batch, q_len, heads, n_blocks] (blocks past the query's are not masked here)."""
    heads, kv_heads = q.shape[2], k.shape[2]
    acc = jnp.promote_types(q.dtype, jnp.float32)
    rows = q_start[..., None] + jnp.arange(n_blocks) * (block_size + 1) + block_size
    rows = jnp.clip(rows, 0, k.shape[1] - 1)  # [b, Lq, nb]
    lk = jax.vmap(lambda kb, rb: kb[rb])(k, rows).astype(acc)  # [b, Lq, nb, kvh, d]
    qg = q.reshape(*q.shape[:2], kv_heads, heads // kv_heads, -1).astype(acc)
    return jnp.einsum("blkgd,blnkd->blkgn", qg, lk).reshape(*q.shape[:3], n_blocks) * scale


def retrieved_blocks(scores, q_pos, block_size: int, top_k: int):
    """The ``top_k`` complete earlier blocks with the best landmark scores, by
    :func:`jaxlm.ops.sparse_attention.choose_blocks` (no sinks, the own block local): scores
    [batch, q_len, heads, n_blocks] -> ([top_k, batch, q_len, heads] index, valid)."""
    current = q_pos // (block_size + 1)
    n_blocks = scores.shape[-1]
    eye = jnp.eye(n_blocks, dtype=scores.dtype)  # summaries · e_j = the j-th score

    def one(score_row, cur):
        idx, valid = choose_blocks(score_row, eye, cur, top_k=top_k, local_blocks=1,
                                   sink_blocks=0)
        return idx[1:], valid[1:]

    per_head = jax.vmap(one, in_axes=(0, None))
    idx, valid = jax.vmap(jax.vmap(per_head))(scores, current)
    return jnp.moveaxis(idx, -1, 0), jnp.moveaxis(valid, -1, 0)


# --------------------------------------------------------------------------------------------


@accepts_numpy
def landmark_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, block_size: int,
                       top_k: int | None = None, segment_ids: jax.Array | None = None,
                       scale: float | None = None, impl: str | Impl = "auto") -> jax.Array:
    """Causal landmark attention (module docstring): the grouped softmax over every earlier
    block (``top_k=None``, training), or over the ``top_k`` blocks whose landmarks score best
    for each query and head (inference retrieval), plus the query's own block.

    Args:
      q: [batch, length, heads, d]; k, v: [batch, length, kv_heads, d], with a landmark at
        every doc-relative position p with p mod (block_size + 1) = block_size
        (:func:`insert_landmarks`).
      block_size: regular tokens per block (positive int).
      top_k: retrieved blocks per query and head (non-negative int), or None for all.
      segment_ids: [batch, length] ints for packed rows (a document is a run of equal ids);
        blocks and landmarks count from each document's start.
      impl: "reference" (dense [length, length] masks and probabilities, O(length²) memory),
        "xla" (unpacked rows with every block: whole-block matrix products,
        :func:`blocked_attention`; otherwise each query gathers its own block and then one
        earlier (or retrieved) block at a time, :func:`grouped_attention`: memory
        O(length · block_size · d) per step), "auto" (xla).

    Returns [batch, length, heads, d] in q's dtype (integer inputs promoted to the default
    float); empty for batch 0 or length 0. Non-finite inputs are not guarded (a NaN key may
    reach outputs that give it zero weight).
    Raises ValueError naming the argument for bad shapes, block_size or top_k.
    """
    op = "landmark_attention"
    q, k, v = as_floats(q, k, v)
    check_qkv(op, q, k, v)
    check_positive(op, "block_size", block_size, allow_none=False)
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"{op}: top_k must be a non-negative integer or None, got {top_k!r}")
    batch, length, heads, d = q.shape
    if segment_ids is not None:
        check_shape(op, "segment_ids", segment_ids, (batch, length), "[batch, length]")
    chosen = resolve_impl(op, impl, ("reference", "xla"))
    scale = d ** -0.5 if scale is None else float(scale)
    if batch == 0 or length == 0:
        return jnp.zeros((batch, length, heads, v.shape[-1]), q.dtype)
    pos, doc = _doc_layout(batch, length, segment_ids)
    if chosen is Impl.REFERENCE:
        return _reference(q, k, v, block_size, pos, doc, scale, top_k)
    start = jnp.arange(length) - pos
    n_blocks = -(-length // (block_size + 1))
    if top_k is None and segment_ids is None:
        return blocked_attention(q, k, v, block_size=block_size, scale=scale).astype(q.dtype)
    if top_k is None:
        index, valid = earlier_blocks(pos, block_size, n_blocks, heads)
    else:
        scores = landmark_scores(q, k, start, n_blocks, block_size, scale)
        index, valid = retrieved_blocks(scores, pos, block_size, top_k)
    out = grouped_attention(q, k, v, start, pos, index, valid, block_size=block_size,
                            scale=scale)
    return out.astype(q.dtype)
