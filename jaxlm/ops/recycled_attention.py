"""Recycled attention for decoding ("Recycled Attention: Efficient inference for long-context
language models").

Generation alternates two kinds of step. Every ``S`` steps a *full* step attends over the whole
KV cache and remembers, per KV head, the K cached tokens it attended to most:

    p_{h,s} = softmax_s(q_h · k_s / √d)                      (each query head h)
    score_{j,s} = Σ_{h ∈ group j} p_{h,s}                     (KV head j: its query heads)
    R_j = top-K_s score_{j,s}                                 (the recycled set)

The steps in between attend only over R_j and the tokens generated since the full step (which
the paper appends to the recycled cache), so they read K + S keys instead of the whole cache.
With K at least the cache length, every step is full attention. The parallel (training) form
of attention is unchanged; this is a decoding mode.

The KV cache here is the attention layer's: k, v [batch, slots, kv_heads, head_dim] with
``slot_pos`` [slots] the position held by each slot (-1: empty) and position p in slot
p mod slots (a ring buffer). The recycled set is kept as positions, so a slot overwritten since
the full step is recognised and skipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops.attention import attention_mask
from jaxlm.ops.checks import accepts_numpy


def _scores(q, k, scale):
    """q [batch, heads, d], k [batch, n, kv_heads, d] -> scores [batch, kv_heads, groups, n]
    in at least float32 (query head h belongs to KV head h // groups)."""
    batch, heads, d = q.shape
    kv_heads = k.shape[2]
    acc = jnp.promote_types(q.dtype, jnp.float32)
    qg = q.reshape(batch, kv_heads, heads // kv_heads, d).astype(acc)
    return jnp.einsum("bjgd,bnjd->bjgn", qg, k.astype(acc)) * scale


@accepts_numpy
def select_recycled_keys(q: jax.Array, cache_k: jax.Array, slot_pos: jax.Array,
                         mask: jax.Array, scale: float, top_k: int) -> jax.Array:
    """The full step's choice: the positions of the ``top_k`` cached tokens with the largest
    attention probability summed over each KV head's query heads.

    q: [batch, heads, head_dim] (this step's queries); cache_k: [batch, slots, kv_heads,
    head_dim]; slot_pos: [slots] int; mask: bool [batch, slots] (the keys this step may read);
    top_k: K (at most ``slots`` are chosen). Returns int32 [batch, kv_heads, min(K, slots)],
    the chosen positions by decreasing score, -1 where fewer than K keys were readable.
    """
    scores = _scores(q, cache_k, scale)
    scores = jnp.where(mask[:, None, None], scores, -jnp.inf)
    probs = jnp.where(mask[:, None, None], jax.nn.softmax(scores, axis=-1), 0.0).sum(axis=2)
    ranked = jnp.where(mask[:, None], probs, -1.0)  # unreadable slots rank last
    _, slots = jax.lax.top_k(ranked, min(top_k, cache_k.shape[1]))
    chosen = jnp.take_along_axis(jnp.broadcast_to(mask[:, None], ranked.shape), slots, axis=-1)
    return jnp.where(chosen, slot_pos[slots], -1).astype(jnp.int32)


@accepts_numpy
def recycled_attention(q: jax.Array, cache_k: jax.Array, cache_v: jax.Array,
                       slot_pos: jax.Array, positions: jax.Array, pos: jax.Array,
                       scale: float, *, window: int | None = None) -> jax.Array:
    """Attention of this step's queries over the cached tokens at ``positions`` only.

    q: [batch, heads, head_dim]; cache_k, cache_v: [batch, slots, kv_heads, head_dim];
    slot_pos: [slots]; positions: int [batch, kv_heads, n] (the recycled set and the tokens
    since the full step; -1 or a position whose slot was overwritten is skipped); pos: this
    step's position (scalar); window: the layer's sliding window, if any.
    Returns [batch, heads, head_dim] in q's dtype.
    """
    n_slots = slot_pos.shape[0]
    slots = jnp.maximum(positions, 0) % n_slots
    held = slot_pos[slots]
    valid = (positions >= 0) & (held == positions)
    valid &= attention_mask(pos[None], positions, causal=True, window=window)[..., 0, :]
    k = jnp.take_along_axis(cache_k.transpose(0, 2, 1, 3), slots[..., None], axis=2)
    v = jnp.take_along_axis(cache_v.transpose(0, 2, 1, 3), slots[..., None], axis=2)
    scores = jnp.einsum("bjgd,bjnd->bjgn",
                        q.reshape(*positions.shape[:2], -1, q.shape[-1]).astype(
                            jnp.promote_types(q.dtype, jnp.float32)), k) * scale
    scores = jnp.where(valid[:, :, None], scores, -jnp.inf)
    probs = jnp.where(valid.any(-1)[:, :, None, None], jax.nn.softmax(scores, axis=-1), 0.0)
    out = jnp.einsum("bjgn,bjnd->bjgd", probs, v.astype(probs.dtype))
    return out.reshape(q.shape).astype(q.dtype)
