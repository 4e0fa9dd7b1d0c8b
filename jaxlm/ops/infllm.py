"""InfLLM: training-free block memory for long inputs ("InfLLM: Unveiling the Intrinsic
Capacity of LLMs for Understanding Extremely Long Sequences with Training-Free Memory"; Xiao
et al., 2024).

A model trained at a short length reads a long input through a short attention span: the
initial tokens, a sliding local window, and a few *memory units* (blocks of past keys and
values outside the window) retrieved for each chunk of queries. With B = ``block_size``, C =
``chunk_size``, n = ``window``, queries are processed in chunks [c·C, c·C + C); for chunk c

    local start   s_c = B·⌊max(c·C − n + 1, 0) / B⌋     (every query sees its last n tokens)
    initial       j < init_blocks·B
    units         blocks u of B keys with init_blocks <= u and (u + 1)·B <= s_c

Each unit is represented by its r_k = ``n_repr`` representative keys, the keys that receive
the largest attention score from the queries of their local window (the paper's eq.):

    r_m = Σ_{j=m+1}^{m+n} q_j · k_m       (summed over the query heads of k's group)
    R(u) = the n_repr keys m of u with the largest r_m

and chunk c retrieves, per KV head, the ``top_k`` units with the highest relevance

    sim(c, u) = Σ_{i ∈ chunk c} Σ_{m ∈ R(u)} q_i · k_m.

Query i of chunk c then attends, with one ordinary softmax, to the keys j <= i that are
initial, in a retrieved unit, or at j >= s_c. All of r_m's queries precede the chunk's first
query (m < s_c <= c·C − n + 1), so the choice is causal, and decoding (C = 1) reproduces the
parallel form with ``chunk_size=1``. With n >= length (or ``top_k`` >= the number of units)
every key is read: full causal attention.

Not modelled: the paper's position remapping (its memory keys get the distance of the local
window's edge); here q and k arrive with the positions the caller gave them.

Layout as :mod:`jaxlm.ops.attention`: q [batch, length, heads, head_dim], k and v
[batch, length, kv_heads, head_dim], grouped-query heads when kv_heads divides heads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops.attention import masked_attention
from jaxlm.ops.checks import (Impl, accepts_numpy, as_floats, check_positive, check_qkv,
                              resolve_impl)
from jaxlm.ops.sparse_attention import (_unblock, choose_blocks, gathered_attention,
                                        repeat_kv_heads, to_blocks)


def _group_sum(q: jax.Array, kv_heads: int) -> jax.Array:
    """[batch, length, heads, d] -> the sum over each KV head's query heads [b, L, kvh, d]."""
    b, length, heads, d = q.shape
    return q.reshape(b, length, kv_heads, heads // kv_heads, d).sum(axis=3)


def representative_scores(q: jax.Array, k: jax.Array, window: int) -> jax.Array:
    """r_m = Σ_{j=m+1}^{m+window} q_j · k_m (query heads summed per KV head), the queries past
    the end left out: [batch, length, kv_heads], in at least float32. O(length) by a cumulative
    sum of the queries."""
    acc = jnp.promote_types(q.dtype, jnp.float32)
    qg = _group_sum(q.astype(acc), k.shape[2])
    length = q.shape[1]
    cs = jnp.concatenate([jnp.zeros_like(qg[:, :1]), jnp.cumsum(qg, axis=1)], axis=1)
    m = jnp.arange(length)
    upper = jnp.minimum(m + window, length - 1) + 1
    window_sum = cs[:, upper] - cs[:, m + 1]  # Σ_{j=m+1}^{min(m+window, L-1)} q_j
    return jnp.einsum("blhd,blhd->blh", window_sum, k.astype(acc))


def unit_summaries(k: jax.Array, scores: jax.Array, block_size: int, n_repr: int) -> jax.Array:
    """Σ of each unit's ``n_repr`` representative keys: k [batch, length, kv_heads, d], scores
    [batch, length, kv_heads] -> [batch, kv_heads, n_units, d] (a last, partial unit picks among
    its real keys; it is never retrieved)."""
    acc = scores.dtype
    length = k.shape[1]
    kb = to_blocks(k.astype(acc), block_size)  # [b, kvh, n, B, d]
    real = (jnp.arange(kb.shape[2] * block_size) < length).reshape(-1, block_size)
    sb = jnp.where(real, to_blocks(scores[..., None], block_size)[..., 0], -jnp.inf)
    _, top = jax.lax.top_k(sb, min(n_repr, block_size))  # [b, kvh, n, r]
    return jnp.take_along_axis(kb, top[..., None], axis=3).sum(axis=3)


def _local_start(chunk_start, window: int, block_size: int):
    return jnp.maximum(chunk_start - window + 1, 0) // block_size  # in blocks


def _chunk_blocks(q_sum, summaries, chunk_start, chunk_last, *, window, block_size,
                  init_blocks, top_k, n_local):
    """Key blocks of each query chunk: initial, retrieved units, local (choose_blocks with
    the local start as the 'current' block, then the further local blocks up to the chunk's
    last). q_sum: [b, kvh, n, d]; summaries [b, kvh, n_units, d]; chunk_start, chunk_last [n].
    Returns (indices, valid) [b, kvh, n, init_blocks + 1 + top_k + n_local - 1]."""
    first = _local_start(chunk_start, window, block_size)
    last = chunk_last // block_size

    def one(query, summ, cur, end):
        idx, valid = choose_blocks(query, summ, cur, top_k=top_k, local_blocks=1,
                                   sink_blocks=init_blocks)
        more = cur + jnp.arange(1, n_local)
        return (jnp.concatenate([idx, jnp.where(more <= end, more, 0)]),
                jnp.concatenate([valid, more <= end]))

    per_chunk = jax.vmap(one, in_axes=(0, None, 0, 0))
    return jax.vmap(jax.vmap(per_chunk, in_axes=(0, 0, None, None)),
                    in_axes=(0, 0, None, None))(q_sum, summaries, first, last)


def _n_local(window: int, block_size: int, chunk_size: int) -> int:
    """The most blocks from a chunk's local start to its last query, over every chunk."""
    return (window + chunk_size - 2) // block_size + 2


def infllm_chunks(q_chunks, q_pos, k, v, scores, *, length, window, block_size, init_blocks,
                  top_k, n_repr, scale):
    """InfLLM attention of query chunks over keys whose representative scores are known.

    q_chunks: [batch, heads, n, C, d] with positions q_pos int [n, C] (consecutive within a
    chunk); k, v: [batch, K, kv_heads, d] (a sequence or a KV cache); scores: r_m
    [batch, K, kv_heads]; length: keys at or past it are never read (static or traced).
    Returns [batch, heads, n, C, d] in at least float32.
    """
    heads, kv_heads = q_chunks.shape[1], k.shape[2]
    acc = jnp.promote_types(q_chunks.dtype, jnp.float32)
    summaries = unit_summaries(k, scores, block_size, n_repr)
    real = (q_pos < length)[None, None, :, :, None]
    q_sum = jnp.where(real, q_chunks.astype(acc), 0).sum(axis=3)  # [b, h, n, d]
    q_sum = q_sum.reshape(q_sum.shape[0], kv_heads, heads // kv_heads, *q_sum.shape[2:]).sum(2)
    chunk_size = q_chunks.shape[3]
    idx, valid = _chunk_blocks(q_sum, summaries, q_pos[:, 0],
                               jnp.minimum(q_pos[:, -1], length - 1), window=window,
                               block_size=block_size, init_blocks=init_blocks, top_k=top_k,
                               n_local=_n_local(window, block_size, chunk_size))
    idx, valid = repeat_kv_heads(idx, heads), repeat_kv_heads(valid, heads)
    return gathered_attention(q_chunks, to_blocks(k, block_size), to_blocks(v, block_size),
                              idx, valid, q_pos, length=length, scale=scale, causal=True)


def _reference(q, k, v, *, window, block_size, init_blocks, top_k, n_repr, chunk_size,
               scale):
    """The explicit per-query mask, every quantity written out densely."""
    batch, length, heads, d = q.shape
    kv_heads = k.shape[2]
    acc = jnp.promote_types(q.dtype, jnp.float32)
    qg = _group_sum(q.astype(acc), kv_heads)  # [b, L, kvh, d]
    i = jnp.arange(length)
    later = (i[None, :] > i[:, None]) & (i[None, :] <= i[:, None] + window)  # [m, j]
    r = jnp.einsum("mj,bjhd,bmhd->bmh", later.astype(acc), qg, k.astype(acc))
    unit = i // block_size
    n_units = -(-length // block_size)
    in_unit = unit[:, None] == jnp.arange(n_units)[None, :]  # [m, u]
    # rank of each key among its unit's keys by r (0 = largest); representatives: rank < n_repr
    same_unit = unit[:, None] == unit[None, :]  # [m, m']
    beaten = (r[:, None, :, :] > r[:, :, None, :]) & same_unit[None, :, :, None]  # [b, m, m', h]
    rank = jnp.sum(beaten, axis=2)  # [b, m, kvh]
    is_repr = rank < n_repr
    chunk = i // chunk_size
    n_chunks = -(-length // chunk_size)
    in_chunk = (chunk[None, :] == jnp.arange(n_chunks)[:, None]).astype(acc)  # [c, i]
    q_chunk = jnp.einsum("ci,bihd->bchd", in_chunk, qg)
    sim = jnp.einsum("bchd,bmhd,bmh,mu->bchu", q_chunk, k.astype(acc),
                     is_repr.astype(acc), in_unit.astype(acc))
    starts = jnp.arange(n_chunks) * chunk_size
    local_from = jnp.maximum(starts - window + 1, 0) // block_size * block_size  # [c]
    u = jnp.arange(n_units)
    candidate = (u[None, :] >= init_blocks) & ((u[None, :] + 1) * block_size
                                               <= local_from[:, None])  # [c, u]
    candidate = candidate[None, :, None, :]  # [1, c, 1, u]
    sim = jnp.where(candidate, sim, -jnp.inf)
    order = jnp.argsort(jnp.argsort(-sim, axis=-1), axis=-1)
    retrieved = candidate & (order < top_k)  # [b, c, kvh, u]
    ret_qk = retrieved[:, chunk][..., unit]  # [b, i, kvh, j]: j's unit retrieved for i
    causal = i[None, :] <= i[:, None]
    fixed = causal & ((i[None, :] < init_blocks * block_size)
                      | (i[None, :] >= local_from[chunk][:, None]))  # [i, j]
    mask = fixed[None, :, None] | (causal[None, :, None] & ret_qk)  # [b, i, kvh, j]
    mask = jnp.moveaxis(repeat_kv_heads(mask, heads, axis=2), 2, 1)  # [b, h, i, j]
    return masked_attention(q, k, v, mask, scale)


@accepts_numpy
def infllm_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, window: int,
                     block_size: int = 128, init_blocks: int = 1, top_k: int = 4,
                     n_repr: int = 4, chunk_size: int = 512, scale: float | None = None,
                     impl: str | Impl = "auto") -> jax.Array:
    """Causal attention through InfLLM's context memory (module docstring).

    Args:
      q: [batch, length, heads, d]; k, v: [batch, length, kv_heads, d].
      window: the local window n in tokens (each query reads at least its last n tokens).
      block_size: tokens per memory unit B; the initial tokens are the first ``init_blocks``
        units.
      top_k: memory units retrieved per query chunk and KV head; n_repr: representative
        tokens per unit; chunk_size: queries per retrieval (1: each query retrieves its own).
      impl: "reference" (the explicit [length, length] mask of each query, every score dense),
        "xla" (each chunk gathers its initial, retrieved and local blocks: memory
        O(length · (init_blocks + top_k + local blocks) · B)), "auto" (xla).

    Returns [batch, length, heads, d] in q's dtype (integer inputs promoted to the default
    float); empty for batch 0 or length 0. Packed rows are not supported (an inference mode).
    Raises ValueError naming the argument for bad shapes or sizes.
    """
    op = "infllm_attention"
    q, k, v = as_floats(q, k, v)
    check_qkv(op, q, k, v)
    for name, value in (("window", window), ("block_size", block_size), ("n_repr", n_repr),
                        ("chunk_size", chunk_size)):
        check_positive(op, name, value, allow_none=False)
    for name, value in (("init_blocks", init_blocks), ("top_k", top_k)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{op}: {name} must be a non-negative integer, got {value!r}")
    chosen = resolve_impl(op, impl, ("reference", "xla"))
    batch, length, heads, d = q.shape
    scale = d ** -0.5 if scale is None else float(scale)
    if batch == 0 or length == 0:
        return jnp.zeros((batch, length, heads, v.shape[-1]), q.dtype)
    options = dict(window=window, block_size=block_size, init_blocks=init_blocks, top_k=top_k,
                   n_repr=n_repr, scale=scale)
    if chosen is Impl.REFERENCE:
        return _reference(q, k, v, chunk_size=chunk_size, **options)
    n = -(-length // chunk_size)
    q_pos = jnp.arange(n * chunk_size).reshape(n, chunk_size)
    out = infllm_chunks(to_blocks(q, chunk_size), q_pos, k, v,
                        representative_scores(q, k, window), length=length, **options)
    return _unblock(out, length).astype(q.dtype)


def infllm_cache(batch: int, max_length: int, kv_heads: int, head_dim: int,
                 dtype=jnp.float32) -> dict[str, jax.Array]:
    """An empty InfLLM decoding cache: k, v [batch, max_length, kv_heads, head_dim], the
    representative scores r [batch, max_length, kv_heads] (float32 or wider) and pos."""
    shape = (batch, max_length, kv_heads, head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "scores": jnp.zeros(shape[:3], jnp.promote_types(dtype, jnp.float32)),
            "pos": jnp.zeros((), jnp.int32)}


@accepts_numpy
def infllm_step(q_t: jax.Array, k_t: jax.Array, v_t: jax.Array, cache: dict[str, jax.Array],
                *, window: int, block_size: int = 128, init_blocks: int = 1, top_k: int = 4,
                n_repr: int = 4, scale: float | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One decoding step of InfLLM (chunk_size 1): appends k_t, v_t at ``cache["pos"]``, adds
    this query to the representative scores of the ``window`` keys before it, and attends.

    q_t: [batch, heads, d]; k_t, v_t: [batch, kv_heads, d]; cache: :func:`infllm_cache` (or a
    prefill's). Returns (out [batch, heads, d] in q_t's dtype, the new cache). A loop of steps
    equals ``infllm_attention(..., chunk_size=1)``.
    """
    pos = cache["pos"]
    scale = q_t.shape[-1] ** -0.5 if scale is None else float(scale)
    k = cache["k"].at[:, pos].set(k_t.astype(cache["k"].dtype))
    v = cache["v"].at[:, pos].set(v_t.astype(cache["v"].dtype))
    scores = cache["scores"]
    qg = _group_sum(q_t[:, None].astype(scores.dtype), k.shape[2])[:, 0]  # [b, kvh, d]
    m = jnp.arange(k.shape[1])
    reads = ((m < pos) & (m >= pos - window))[None, :, None]
    scores = scores + jnp.where(reads, jnp.einsum("bhd,bmhd->bmh", qg, k.astype(scores.dtype)),
                                0.0)
    out = infllm_chunks(q_t[:, :, None, None], pos[None, None], k, v, scores, length=pos + 1,
                        window=window, block_size=block_size, init_blocks=init_blocks,
                        top_k=top_k, n_repr=n_repr, scale=scale)
    return out[:, :, 0, 0].astype(q_t.dtype), {"k": k, "v": v, "scores": scores,
                                               "pos": pos + 1}
