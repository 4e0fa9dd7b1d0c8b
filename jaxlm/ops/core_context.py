"""Core Context Aware attention ("Core Context Aware Attention for Long Context Language
Modeling"), causal: globality-pooling attention over one core token per group of ``g`` tokens,
and locality-preserved attention over a window of ``w`` tokens, fused in one softmax.

Globality pooling. The tokens are cut into groups of ``g`` (from each document's start). The
group's significance weights are the attention of its last token ``q_m^last`` to its tokens,
and the core token is the significance-weighted mean of the group; its key and value are the
same mean of the group's keys and values (the projections are linear, so pooling the tokens
and then projecting is pooling the keys and values):

    a_mj = softmax_{j∈m}(scale · q_m^last·k_j),
    k^C_m = Σ_{j∈m} a_mj k_j,        v^C_m = Σ_{j∈m} a_mj v_j.

Fusion. Query ``t`` reads the core tokens of the complete groups of its document that end
before its own group starts, and the keys ``j`` of its local window ``t - w < j <= t``,
in one softmax:

    o_t = (Σ_{m<g(t)} e^{scale·q_t·k^C_m} v^C_m + Σ_{t-w<j<=t} e^{scale·q_t·k_j} v_j) / Z_t,
    Z_t = Σ_{m<g(t)} e^{scale·q_t·k^C_m} + Σ_{t-w<j<=t} e^{scale·q_t·k_j}.

A query thus sees length / g core tokens and w neighbours: O(length · (length / g + w)) time
and memory. With ``w >= g`` every earlier token is read, directly or through its core token.
Packed rows (``segment_ids``): groups start at each document's start and nothing is read
across documents, so a packed row equals its documents run one by one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops.attention import masked_attention
from jaxlm.ops.checks import Impl, accepts_numpy, as_floats, check_positive, poison
from jaxlm.ops.sparse_attention import repeat_kv_heads
from jaxlm.ops.summary_attention import (check_inputs, dense_probabilities, fused_attention,
                                         gather_blocks, local_reach, prepare, reads_summary,
                                         region_ids, segment_softmax, summary_reach)

_OP = "core_context_attention"


def core_tokens(q_last: jax.Array, k_group: jax.Array, v_group: jax.Array, *, scale: float
                ) -> tuple[jax.Array, jax.Array]:
    """Globality pooling of groups: q_last [..., heads, d] (the query of each group's last
    token), k_group [..., g, heads, d], v_group [..., g, heads, dv]. Returns the core keys
    [..., heads, d] and values [..., heads, dv]."""
    a = jax.nn.softmax(jnp.einsum("...hd,...jhd->...jh", q_last, k_group) * scale, axis=-2)
    return (jnp.einsum("...jh,...jhd->...hd", a, k_group),
            jnp.einsum("...jh,...jhd->...hd", a, v_group))


@accepts_numpy
def core_context_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, group_size: int,
                           window: int, segment_ids: jax.Array | None = None,
                           scale: float | None = None, impl: str | Impl = "auto") -> jax.Array:
    """Causal Core Context Aware attention (equations in the module docstring).

    Args:
      q: [batch, length, heads, head_dim].
      k: [batch, length, kv_heads, head_dim]; ``kv_heads`` divides ``heads`` (the core tokens
        are per query head: the significance is the query's).
      v: [batch, length, kv_heads, v_head_dim].
      group_size: g, tokens per group (one core token each).
      window: w, the local window: query t reads keys t - w < j <= t.
      segment_ids: [batch, length] ids of packed rows (a document is a maximal run of equal
        ids); groups start at each document's start and nothing is read across documents.
      scale: multiplies q·k; defaults to head_dim ** -0.5.
      impl: "reference" (the dense [length, length] probability matrix: each key's share is
        its window term plus its group's core share times its significance), "xla" (blocks of
        w queries over 2w keys and length // g core slots) or "auto" (xla).

    Returns:
      [batch, length, heads, v_head_dim] in q's dtype (integer inputs promoted to the default
      float); scores and softmax in at least float32; empty for length 0 or batch 0. A NaN or
      Inf input at s sets NaN only in the outputs that read s (never an earlier one).

    Raises:
      ValueError: on mismatched shapes, a non-positive group_size or window, an unknown impl.
    """
    q, k, v = as_floats(q, k, v)
    chosen, scale = check_inputs(_OP, q, k, v, segment_ids, impl, scale)
    check_positive(_OP, "group_size", group_size, allow_none=False)
    check_positive(_OP, "window", window, allow_none=False)
    batch, length, heads, _ = q.shape
    if batch == 0 or length == 0:
        return jnp.zeros((batch, length, heads, v.shape[-1]), q.dtype)
    dtype = q.dtype
    (q, k, v), (q_bad, k_bad, v_bad), layout = prepare(q, k, v, segment_ids, group_size)
    if chosen is Impl.REFERENCE:
        out = _reference(q, k, v, layout, window, scale)
    else:
        q_last = gather_blocks(q, layout)[:, :, -1]
        k_core, v_core = core_tokens(q_last, gather_blocks(k, layout), gather_blocks(v, layout),
                                     scale=scale)
        reads = reads_summary(layout, layout.first, layout.doc)
        out = fused_attention(q, k, v, k_core, v_core, 0.0, reads, layout.doc, window, scale)
    is_last = (layout.pos % group_size == group_size - 1)[..., None]
    reach = (q_bad | local_reach(k_bad | v_bad, layout.doc, window)
             | summary_reach((q_bad & is_last) | k_bad | v_bad, layout))
    return poison(out, reach).astype(dtype)


def _reference(q, k, v, layout, window, scale):
    batch, length = q.shape[:2]
    regions = region_ids(layout)
    last = jnp.minimum(layout.first + layout.block - 1, length - 1)

    def per_row(q, k, regions, last):  # each token carries its group's core key, its weight
        a = segment_softmax(jnp.einsum("jhd,jhd->jh", q[last], k) * scale, regions, length)
        k_core = jax.ops.segment_sum(a[..., None] * k, regions, num_segments=length)[regions]
        return k_core, a

    k_core, a = jax.vmap(per_row)(q, k, regions, last)
    t, j = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
    local = (layout.doc[:, :, None] == layout.doc[:, None, :]) & (j <= t) & (t - j < window)
    reads = (layout.complete[:, None, :] & (layout.doc[:, :, None] == layout.doc[:, None, :])
             & (layout.first[:, None, :] + layout.block <= layout.first[:, :, None]))
    probs = dense_probabilities(q, k, local, reads, k_core, a, 0.0, scale,
                                layout.pos % layout.block == 0)
    return jnp.einsum("bhtj,bjhd->bthd", probs, v)


# --------------------------------------------------------------------------------------------
# Recurrent form (generation).


def core_context_state(batch: int, heads: int, kv_heads: int, head_dim: int, v_head_dim: int,
                       *, group_size: int, window: int, max_length: int, dtype=jnp.float32
                       ) -> dict[str, jax.Array]:
    """The decoding state of :func:`core_context_step`: a ring buffer of the last
    max(window, group_size) keys ``k`` and values ``v`` [batch, slots, kv_heads, ...] with
    their positions ``slot_pos`` [slots] (-1: empty), the core keys ``k_core`` [batch,
    max_length // group_size, heads, head_dim] and values ``v_core`` of the complete groups,
    and ``pos``. Core tokens of groups past ``max_length`` are not kept."""
    slots = max(window, group_size)
    cores = max_length // group_size
    zeros = lambda *shape: jnp.zeros(shape, dtype)
    return {"k": zeros(batch, slots, kv_heads, head_dim),
            "v": zeros(batch, slots, kv_heads, v_head_dim),
            "slot_pos": jnp.full((slots,), -1, jnp.int32),
            "k_core": zeros(batch, cores, heads, head_dim),
            "v_core": zeros(batch, cores, heads, v_head_dim),
            "pos": jnp.zeros((), jnp.int32)}


@accepts_numpy
def core_context_step(q_t: jax.Array, k_t: jax.Array, v_t: jax.Array,
                      state: dict[str, jax.Array], *, group_size: int, window: int,
                      scale: float | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One token of :func:`core_context_attention` (one document): q_t [batch, heads,
    head_dim], k_t [batch, kv_heads, head_dim], v_t [batch, kv_heads, v_head_dim], the state
    of :func:`core_context_state`. Returns (o_t [batch, heads, v_head_dim] in q_t's dtype, new
    state); the last token of a group adds the group's core token to the state."""
    batch, heads = q_t.shape[:2]
    scale = q_t.shape[-1] ** -0.5 if scale is None else float(scale)
    pos = state["pos"]
    n_slots = state["slot_pos"].shape[0]
    slot = pos % n_slots
    ks = state["k"].at[:, slot].set(k_t.astype(state["k"].dtype))
    vs = state["v"].at[:, slot].set(v_t.astype(state["v"].dtype))
    slot_pos = state["slot_pos"].at[slot].set(pos)
    k_h, v_h = repeat_kv_heads(ks, heads, axis=2), repeat_kv_heads(vs, heads, axis=2)
    cores = state["k_core"].shape[1]
    keys = jnp.concatenate([k_h, state["k_core"]], axis=1)
    values = jnp.concatenate([v_h, state["v_core"]], axis=1)
    mask = jnp.concatenate([(slot_pos >= 0) & (pos - slot_pos < window),
                            jnp.arange(cores) < pos // group_size])
    out = masked_attention(q_t[:, None], keys, values,
                           jnp.broadcast_to(mask, (batch, 1, n_slots + cores)), scale)[:, 0]
    acc = jnp.promote_types(ks.dtype, jnp.float32)
    group = (pos - group_size + 1 + jnp.arange(group_size)) % n_slots
    k_core, v_core = core_tokens(q_t.astype(acc), k_h[:, group].astype(acc),
                                 v_h[:, group].astype(acc), scale=scale)
    full = pos % group_size == group_size - 1
    keep = lambda name, x: jnp.where(full, state[name].at[:, pos // group_size].set(
        x.astype(state[name].dtype)), state[name])
    new = {"k": ks, "v": vs, "slot_pos": slot_pos, "k_core": keep("k_core", k_core),
           "v_core": keep("v_core", v_core), "pos": pos + 1}
    return out, new
