"""Block-sparse causal attention and content-based block selection.

Keys are cut into blocks of ``block_size`` positions; each query (or query block) reads only
some key blocks:

* :func:`block_sparse_attention` takes the choice as a bool ``block_mask``; its xla form
  gathers the chosen blocks, so its cost grows with the number of chosen blocks, not length².
* :func:`select_blocks` chooses them by content: sink blocks ("Efficient Streaming Language
  Models with Attention Sinks"; LM-Infinite), the local blocks, and the ``top_k`` earlier blocks
  whose summary (mean- or max-pooled keys, as in "Landmark Attention" and "InfLLM") scores
  highest against the query. ``method="hierarchical"`` ("HiP Attention") scores groups of
  ``branch`` blocks first and refines only the best groups, so no query scores every block.
* :func:`lambda_mask` / :func:`lambda_attention`: LM-Infinite's Λ-shaped mask, global sink
  tokens plus a local window.

A block that is not yet complete (the query's own block) is never a candidate for selection,
only local, so no selection ever reads a future position or depends on one.

Layout as :mod:`jaxlm.ops.attention`: q [batch, length, heads, head_dim], k and v
[batch, length, kv_heads, head_dim], grouped-query heads when kv_heads divides heads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops.attention import masked_attention
from jaxlm.ops.checks import (Impl, accepts_numpy, as_floats, check_bool, check_positive,
                              check_qkv, check_shape, nonfinite_reach, poison, resolve_impl,
                              split_nonfinite)

METHODS = ("mean", "max", "hierarchical")


def to_blocks(x: jax.Array, block_size: int) -> jax.Array:
    """[batch, length, heads, d] -> [batch, heads, n_blocks, block_size, d], zero-padded."""
    batch, length, heads, d = x.shape
    n = -(-length // block_size)
    x = jnp.pad(x, [(0, 0), (0, n * block_size - length), (0, 0), (0, 0)])
    return jnp.moveaxis(x.reshape(batch, n, block_size, heads, d), 3, 1)


def repeat_kv_heads(x: jax.Array, heads: int, axis: int = 1) -> jax.Array:
    """kv_heads -> heads along ``axis`` (default: [batch, kv_heads, ...] -> [batch, heads, ...]);
    query head h reads kv head h // (heads / kv_heads)."""
    return jnp.repeat(x, heads // x.shape[axis], axis=axis)


def block_summaries(k: jax.Array, block_size: int, method: str = "mean") -> jax.Array:
    """Pooled keys of each block: [batch, kv_heads, n_blocks, head_dim]. ``method`` "mean"
    (the hierarchical method also pools by mean) or "max"; a last, partial block pools over its
    real positions only."""
    length = k.shape[1]
    blocks = to_blocks(k, block_size)  # [b, kvh, n, bs, d]
    pos = jnp.arange(blocks.shape[2] * block_size).reshape(-1, block_size)
    real = (pos < length)[None, None, :, :, None]
    if method == "max":
        return jnp.max(jnp.where(real, blocks, -jnp.inf), axis=3)
    return jnp.sum(jnp.where(real, blocks, 0), axis=3) / jnp.sum(real, axis=3)


def group_summaries(summaries: jax.Array, branch: int) -> jax.Array:
    """Coarse summaries of groups of ``branch`` consecutive blocks (mean of the block summaries):
    [..., n_blocks, d] -> [..., n_groups, d]; a last, partial group is never a candidate."""
    n = summaries.shape[-2]
    groups = -(-n // branch)
    padded = jnp.pad(summaries, [(0, 0)] * (summaries.ndim - 2) + [(0, groups * branch - n),
                                                                   (0, 0)])
    return jnp.mean(padded.reshape(*summaries.shape[:-2], groups, branch, -1), axis=-2)


def num_selected(top_k: int, local_blocks: int, sink_blocks: int) -> int:
    """How many block slots a selection returns: sinks, then local blocks, then the top_k."""
    return sink_blocks + local_blocks + top_k


def choose_blocks(query: jax.Array, summaries: jax.Array, current: jax.Array, *, top_k: int,
                  local_blocks: int = 1, sink_blocks: int = 1, method: str = "mean",
                  branch: int = 4, coarse: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array]:
    """The key blocks one query reads.

    query: [d]; summaries: [n_blocks, d]; current: int, the query's own block.
    Candidates for the top_k are the complete earlier blocks that are neither sinks nor local.
    With ``method="hierarchical"``, ``coarse`` [n_groups, d] are the group summaries: the
    top_k complete groups are chosen first, then the top_k blocks among their members and the
    blocks after the last complete group, so at most n_groups + (top_k + 1)·branch blocks are
    scored.

    Returns (indices [S] int32, valid [S] bool), S = :func:`num_selected`; no index is ever
    above ``current``, and valid slots never repeat a block.
    """
    n_blocks = summaries.shape[0]
    fixed, fixed_valid = fixed_blocks(current, local_blocks=local_blocks, sink_blocks=sink_blocks)

    def is_candidate(j):
        return (j < current) & (j >= sink_blocks) & (current - j >= local_blocks)

    if top_k == 0:
        top, top_valid = jnp.zeros((0,), jnp.int32), jnp.zeros((0,), bool)
    elif method == "hierarchical":
        n_groups = coarse.shape[0]
        complete = jnp.arange(n_groups) * branch + branch <= current
        group_scores = jnp.where(complete, coarse @ query, -jnp.inf)
        k_groups = min(top_k, n_groups)
        _, groups = jax.lax.top_k(group_scores, k_groups)
        groups = jnp.where(jnp.take(complete, groups), groups, n_groups + 1)  # no members
        members = (groups[:, None] * branch + jnp.arange(branch)).reshape(-1)
        tail = (current // branch) * branch + jnp.arange(branch)  # the partial last group
        candidates = jnp.concatenate([members, tail])
        ok = is_candidate(candidates) & (candidates < n_blocks)
        scores = jnp.where(ok, jnp.take(summaries, jnp.clip(candidates, 0, n_blocks - 1),
                                        axis=0) @ query, -jnp.inf)
        best, at = jax.lax.top_k(scores, min(top_k, scores.shape[0]))
        top, top_valid = jnp.take(candidates, at), best > -jnp.inf
    else:
        j = jnp.arange(n_blocks)
        scores = jnp.where(is_candidate(j), summaries @ query, -jnp.inf)
        best, top = jax.lax.top_k(scores, min(top_k, n_blocks))
        top_valid = best > -jnp.inf
    pad = top_k - top.shape[0]
    indices = jnp.concatenate([fixed, top.astype(jnp.int32), jnp.zeros((pad,), jnp.int32)])
    valid = jnp.concatenate([fixed_valid, top_valid, jnp.zeros((pad,), bool)])
    return jnp.where(valid, indices, 0), valid


def fixed_blocks(current: jax.Array, *, local_blocks: int, sink_blocks: int
                 ) -> tuple[jax.Array, jax.Array]:
    """The blocks a query reads whatever its content: the sinks, then the local blocks.
    current: int, the query's own block. Returns (indices, valid) [sink_blocks + local_blocks];
    a sink that is also local, or any block above ``current``, is not valid."""
    sink = jnp.arange(sink_blocks)
    local = current - jnp.arange(local_blocks)
    sink_valid = (sink <= current) & (current - sink >= local_blocks)  # else it is local
    indices = jnp.concatenate([sink, local]).astype(jnp.int32)
    valid = jnp.concatenate([sink_valid, local >= 0])
    return jnp.where(valid, indices, 0), valid


def lambda_blocks(window: int, sink_tokens: int, block_size: int) -> tuple[int, int]:
    """(local_blocks, sink_blocks) that cover LM-Infinite's Λ mask: a query in block c reads
    keys back to i − window + 1, at most ceil((window − 1) / block_size) blocks before c."""
    return -(-(window - 1) // block_size) + 1, -(-sink_tokens // block_size)


@accepts_numpy
def select_blocks(q: jax.Array, k: jax.Array, *, block_size: int, top_k: int,
                  local_blocks: int = 1, sink_blocks: int = 1, method: str = "mean",
                  branch: int = 4) -> jax.Array:
    """Content-based choice of key blocks per query block.

    Each query block (its mean query) scores the summaries of the complete earlier key blocks
    (:func:`choose_blocks`). q: [batch, length, heads, d]; k: [batch, length, kv_heads, d].
    Returns block_mask bool [batch, heads, n_blocks, n_blocks], at most
    ``sink_blocks + local_blocks + top_k`` blocks per row, never one above the diagonal.
    """
    op = "select_blocks"
    check_qkv(op, q, k, k)
    for name, value in (("block_size", block_size), ("branch", branch)):
        check_positive(op, name, value, allow_none=False)
    for name, value in (("top_k", top_k), ("local_blocks", local_blocks),
                        ("sink_blocks", sink_blocks)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{op}: {name} must be a non-negative integer, got {value!r}")
    if method not in METHODS:
        raise ValueError(f"{op}: method={method!r} is unknown; expected one of {METHODS}")
    batch, length, heads = q.shape[:3]
    if batch == 0 or length == 0:
        n = -(-length // block_size)
        return jnp.zeros((batch, heads, n, n), bool)
    pooled = "max" if method == "max" else "mean"
    summaries = repeat_kv_heads(block_summaries(k, block_size, pooled), heads)
    coarse = group_summaries(summaries, branch)
    queries = jnp.mean(to_blocks(q, block_size), axis=3)  # [b, h, n, d] (padding is 0: fine)
    n = queries.shape[2]

    def one(query, summ, coarse_h, current):
        idx, valid = choose_blocks(query, summ, current, top_k=top_k, local_blocks=local_blocks,
                                   sink_blocks=sink_blocks, method=method, branch=branch,
                                   coarse=coarse_h)
        return jnp.zeros((n,), bool).at[idx].max(valid)

    per_block = jax.vmap(one, in_axes=(0, None, None, 0))
    return jax.vmap(jax.vmap(per_block, in_axes=(0, 0, 0, None)),
                    in_axes=(0, 0, 0, None))(queries, summaries, coarse, jnp.arange(n))


def lambda_mask(length: int, *, window: int, sink_tokens: int) -> jax.Array:
    """LM-Infinite's Λ-shaped mask ("LM-Infinite: Zero-Shot Extreme Length Generalization for
    Large Language Models"): query i reads key j <= i when j < sink_tokens or i − j < window.
    Returns bool [length, length]."""
    check_positive("lambda_mask", "window", window, allow_none=False)
    i = jnp.arange(length)[:, None]
    j = jnp.arange(length)[None, :]
    return (j <= i) & ((j < sink_tokens) | (i - j < window))


def gathered_attention(q: jax.Array, k_blocks: jax.Array, v_blocks: jax.Array,
                       indices: jax.Array, valid: jax.Array, q_pos: jax.Array, *,
                       length: int, scale: float, causal: bool = True,
                       window: int | None = None, sink_tokens: int = 0) -> jax.Array:
    """Attention of query groups over gathered key blocks.

    q: [batch, heads, n, m, d] (n groups of m queries); k_blocks, v_blocks: [batch, kv_heads,
    n_blocks, block_size, d]; indices, valid: [batch, heads, n, S]; q_pos: [n, m] positions.
    Key j is read when its block is a valid slot, j < length, j <= the query's position (if
    causal), and, with ``window``, when i − j < window or j < sink_tokens (the Λ mask).
    Returns [batch, heads, n, m, d] in at least float32; a query that reads nothing gets 0. A
    non-finite q, k or v entry sets NaN only in the outputs whose mask reads it.
    """
    q, q_bad = split_nonfinite(q, 4)  # [b, h, n, m]
    k_blocks, k_bad = split_nonfinite(k_blocks, 4)
    v_blocks, v_bad = split_nonfinite(v_blocks, 4)
    heads = q.shape[1]
    block_size = k_blocks.shape[3]
    acc = jnp.promote_types(q.dtype, jnp.float32)

    def gather(blocks):  # [b, h, nb, bs, d] x [b, h, n, S] -> [b, h, n, S, bs, d]
        per_head = repeat_kv_heads(blocks, heads)
        return jax.vmap(jax.vmap(lambda x, ix: x[ix]))(per_head, indices)

    kg, vg = gather(k_blocks).astype(acc), gather(v_blocks).astype(acc)
    bad = gather((k_bad | v_bad)[..., None])[..., 0]  # [b, h, n, S, bs]
    scores = jnp.einsum("bhnmd,bhnskd->bhnmsk", q.astype(acc), kg) * scale
    k_pos = indices[..., None] * block_size + jnp.arange(block_size)  # [b, h, n, S, bs]
    qp = q_pos[None, None, :, :, None, None]
    kp = k_pos[:, :, :, None]
    mask = valid[:, :, :, None, :, None] & (kp < length)
    if causal:
        mask &= kp <= qp
    if window is not None:
        mask &= (qp - kp < window) | (kp < sink_tokens)
    shape = scores.shape
    mask = jnp.broadcast_to(mask, shape)  # without causal or window it has no query axis yet
    flat = jnp.where(mask, scores, -jnp.inf).reshape(*shape[:4], -1)
    any_key = jnp.any(mask.reshape(flat.shape), axis=-1, keepdims=True)
    probs = jax.nn.softmax(jnp.where(any_key, flat, 0.0), axis=-1)
    probs = jnp.where(mask.reshape(flat.shape), probs, 0.0).reshape(shape)
    reach = q_bad | jnp.any(mask & bad[:, :, :, None], axis=(-2, -1))
    return poison(jnp.einsum("bhnmsk,bhnskd->bhnmd", probs, vg), reach)


@accepts_numpy
def block_sparse_attention(q: jax.Array, k: jax.Array, v: jax.Array, block_mask: jax.Array, *,
                           block_size: int, causal: bool = True, scale: float | None = None,
                           max_blocks: int | None = None, impl: str | Impl = "auto"
                           ) -> jax.Array:
    """Attention in which query block i reads only the key blocks j with block_mask[..., i, j].

    Args:
      q: [batch, length, heads, d]; k, v: [batch, length, kv_heads, d].
      block_mask: bool [batch, heads, n_blocks, n_blocks], n_blocks = ceil(length / block_size)
        (batch or heads may be 1 to broadcast); another dtype raises a TypeError naming it.
        Inside a chosen block the causal mask still applies.
      max_blocks: the most True entries in any row (static). The xla form gathers this many
        blocks per query block; rows with more keep their lowest-index blocks. None: n_blocks
        (exact for every mask, but then the cost is that of dense attention).
      impl: "reference" (dense scores with the mask materialized), "xla" (gather the chosen
        blocks: time and memory grow with max_blocks·length), "pallas" (the flash-attention
        kernel, which skips unchosen blocks and ignores ``max_blocks``: exact for every mask;
        "pallas_interpret" runs it interpreted), "auto" (xla).

    Returns [batch, length, heads, d] in q's dtype (integer inputs are promoted to the default
    float); a query that reads nothing gets 0; empty for length 0 or batch 0. A non-finite q,
    k or v entry at s sets NaN only in the outputs that read s (never an earlier one when
    ``causal``), in every form.
    """
    op = "block_sparse_attention"
    q, k, v = as_floats(q, k, v)
    check_bool(op, "block_mask", block_mask)
    check_qkv(op, q, k, v)
    check_positive(op, "block_size", block_size, allow_none=False)
    batch, length, heads, d = q.shape
    n = -(-length // block_size)
    check_shape(op, "block_mask", block_mask, (None, None, n, n),
                f"[batch, heads, n_blocks, n_blocks] with n_blocks = ceil({length} / "
                f"{block_size})")
    if block_mask.shape[0] not in (1, batch) or block_mask.shape[1] not in (1, heads):
        raise ValueError(f"{op}: block_mask's batch and heads axes must be 1 or ({batch}, "
                         f"{heads}), got {tuple(block_mask.shape)}")
    check_positive(op, "max_blocks", max_blocks)
    chosen = resolve_impl(op, impl, ("reference", "xla", "pallas"))
    scale = d ** -0.5 if scale is None else float(scale)
    if batch == 0 or length == 0:
        return jnp.zeros((batch, length, heads, v.shape[-1]), q.dtype)
    if chosen.is_pallas:
        from jaxlm.kernels.flash_attention import flash_attention

        q, q_bad = split_nonfinite(q, 3)
        k, k_bad = split_nonfinite(k, 3)
        v, v_bad = split_nonfinite(v, 3)
        kv_bad = repeat_kv_heads(k_bad | v_bad, heads, axis=2)
        reach = q_bad | _block_reach(kv_bad, block_mask, block_size, causal)
        out = flash_attention(q, k, v, causal=causal, block_mask=block_mask, scale=scale,
                              block_size=block_size, interpret=chosen.interpret)
        return poison(out, reach)
    block_mask = jnp.broadcast_to(block_mask, (batch, heads, n, n))
    if chosen is Impl.REFERENCE:
        tokens = jnp.repeat(jnp.repeat(block_mask, block_size, 2), block_size, 3)
        mask = tokens[..., :length, :length]
        if causal:
            mask &= jnp.tril(jnp.ones((length, length), bool))
        return masked_attention(q, k, v, mask, scale)
    slots = min(max_blocks or n, n)
    order = jnp.argsort(~block_mask, axis=-1, stable=True)[..., :slots]  # chosen blocks first
    valid = jnp.take_along_axis(block_mask, order, axis=-1)
    q_pos = jnp.arange(n * block_size).reshape(n, block_size)
    out = gathered_attention(to_blocks(q, block_size), to_blocks(k, block_size),
                             to_blocks(v, block_size), order, valid, q_pos, length=length,
                             scale=scale, causal=causal)
    return _unblock(out, length).astype(q.dtype)


def _block_reach(bad: jax.Array, block_mask: jax.Array, block_size: int, causal: bool
                 ) -> jax.Array:
    """Which queries read a bad key under ``block_mask`` (and the causal mask): bad bool
    [batch, length, heads] -> [batch, length, heads], without a [length, length] mask."""
    length = bad.shape[1]
    n = block_mask.shape[-1]
    block = jnp.arange(length) // block_size
    # Inside the query's own block: a bad key at or before it (anywhere when not causal).
    inside = nonfinite_reach(bad, jnp.broadcast_to(block, bad.shape[:2]), causal=causal)
    padded = jnp.pad(bad, [(0, 0), (0, n * block_size - length), (0, 0)])
    bad_blocks = jnp.any(padded.reshape(bad.shape[0], n, block_size, -1), axis=2)  # [b, n, h]
    i, j = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
    other = block_mask & ((j < i) if causal else (j != i))  # [b|1, h|1, n, n]
    from_other = jnp.any(other & jnp.moveaxis(bad_blocks, 1, 2)[:, :, None, :], axis=-1)
    diagonal = jnp.diagonal(block_mask, axis1=-2, axis2=-1)  # [b|1, h|1, n]
    to_tokens = lambda x: jnp.moveaxis(jnp.take(x, block, axis=-1), -1, 1)  # -> [b, L, h]
    return to_tokens(from_other) | (to_tokens(diagonal) & inside)


def _unblock(x: jax.Array, length: int) -> jax.Array:
    """[batch, heads, n, m, d] -> [batch, length, heads, d]."""
    batch, heads, n, m, d = x.shape
    return jnp.moveaxis(x.reshape(batch, heads, n * m, d), 1, 2)[:, :length]


@accepts_numpy
def lambda_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, window: int,
                     sink_tokens: int, block_size: int = 64, scale: float | None = None,
                     impl: str | Impl = "auto") -> jax.Array:
    """Causal attention under LM-Infinite's Λ mask (:func:`lambda_mask`).

    impl: "reference" (the mask materialized), "xla" (each query block gathers the sink blocks
    and its local blocks only: cost O(length · (sink_tokens + window))), "auto" (xla).
    Integer inputs are promoted to the default float; length 0 or batch 0 gives the empty
    result; a non-finite input at s sets NaN only in the outputs that read s.
    """
    op = "lambda_attention"
    q, k, v = as_floats(q, k, v)
    check_qkv(op, q, k, v)
    check_positive(op, "window", window, allow_none=False)
    check_positive(op, "block_size", block_size, allow_none=False)
    if not isinstance(sink_tokens, int) or sink_tokens < 0:
        raise ValueError(f"{op}: sink_tokens must be a non-negative integer, got "
                         f"{sink_tokens!r}")
    chosen = resolve_impl(op, impl, ("reference", "xla"))
    batch, length, heads, d = q.shape
    scale = d ** -0.5 if scale is None else float(scale)
    if batch == 0 or length == 0:
        return jnp.zeros((batch, length, heads, v.shape[-1]), q.dtype)
    if chosen is Impl.REFERENCE:
        mask = lambda_mask(length, window=window, sink_tokens=sink_tokens)[None, None]
        return masked_attention(q, k, v, mask, scale)
    n = -(-length // block_size)
    local_blocks, sink_blocks = (min(b, n) for b in lambda_blocks(window, sink_tokens,
                                                                   block_size))
    idx, valid = jax.vmap(lambda c: fixed_blocks(c, local_blocks=local_blocks,
                                                 sink_blocks=sink_blocks))(jnp.arange(n))
    idx = jnp.broadcast_to(idx, (batch, heads, *idx.shape))
    valid = jnp.broadcast_to(valid, idx.shape)
    q_pos = jnp.arange(n * block_size).reshape(n, block_size)
    out = gathered_attention(to_blocks(q, block_size), to_blocks(k, block_size),
                             to_blocks(v, block_size), idx, valid, q_pos, length=length,
                             scale=scale, window=window, sink_tokens=sink_tokens)
    return _unblock(out, length).astype(q.dtype)
