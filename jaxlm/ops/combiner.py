"""Combiner attention ("Combiner: Full Attention Transformer with Sparse Computation Cost"),
causal, in its Combiner-Fixed form: full attention through a structured factorisation.

Attention is a conditional expectation ``o_t = E_{p(j|t)}[v_j]``. Combiner factorises
``p(j|t)`` over a partition of the keys ``j <= t``: the direct region ``Ω_t^0`` (the keys of
``t``'s own block of ``B`` tokens, up to ``t``) and one region ``Ω_t^r`` per earlier block
``r`` of the document:

    p(j|t) = exp(s_tj) / Z_t                                  for j ∈ Ω_t^0,
    p(j|t) = p(Ω_t^r | t) · q(j | Ω_t^r)                      for j ∈ Ω_t^r,
    s_tj = scale · q_t·k_j,
    p(Ω_t^r | t) = exp(scale · q_t·k̄_r + log B) / Z_t,
    q(j | Ω_t^r) = softmax_{j∈r}(scale · q̄_r·k_j),
    Z_t = Σ_{j∈Ω_t^0} exp(s_tj) + Σ_r exp(scale · q_t·k̄_r + log B),

with ``q̄_r``, ``k̄_r`` the mean- (``pooling="mean"``) or max-pooled (``"max"``) queries and
keys of block ``r``. Every key ``j <= t`` of the document gets a positive probability, in one
normaliser ``Z_t``, so the support is the full causal prefix; the output is

    o_t = (Σ_{j∈Ω_t^0} e^{s_tj} v_j + Σ_r e^{scale·q_t·k̄_r + log B} v̄_r) / Z_t,
    v̄_r = Σ_{j∈r} q(j | Ω_t^r) v_j   (the block's abstraction, shared by every later query).

The block's share ``scale·q_t·k̄_r + log B`` stands for the log-sum-exp of its ``B`` scores
``log Σ_{j∈r} exp(s_tj)``: with mean pooling it is that log-sum-exp's Jensen lower bound, and it
equals it when the block's keys are equal (then Combiner equals full attention). Cost per
query: B direct keys and length / B summaries, O(length · (B + length / B)), O(length^1.5) at
B = √length, as the paper's Combiner-Fixed.

Packed rows (``segment_ids``): blocks are cut from each document's start and no query reads
another document, so a packed row equals its documents run one by one.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxlm.ops.attention import masked_attention
from jaxlm.ops.checks import Impl, accepts_numpy, as_floats, check_positive, poison
from jaxlm.ops.sparse_attention import repeat_kv_heads
from jaxlm.ops.summary_attention import (check_inputs, dense_probabilities, fused_attention,
                                         gather_blocks, local_reach, prepare, reads_summary,
                                         region_ids, segment_softmax, summary_reach)

_OP = "combiner_attention"
POOLINGS = ("mean", "max")


def _pool(x: jax.Array, axis: int, pooling: str) -> jax.Array:
    return jnp.max(x, axis=axis) if pooling == "max" else jnp.mean(x, axis=axis)


def combiner_summaries(q_blocks: jax.Array, k_blocks: jax.Array, v_blocks: jax.Array, *,
                       pooling: str, scale: float) -> tuple[jax.Array, jax.Array]:
    """Each block's summary key ``k̄_r`` and abstraction ``v̄_r``.

    q_blocks, k_blocks: [..., B, heads, d]; v_blocks: [..., B, heads, dv] (the block's tokens
    on axis -3). Returns (k̄ [..., heads, d], v̄ [..., heads, dv]) in the inputs' dtype.
    """
    q_bar = _pool(q_blocks, -3, pooling)
    k_bar = _pool(k_blocks, -3, pooling)
    w = jax.nn.softmax(jnp.einsum("...hd,...jhd->...jh", q_bar, k_blocks) * scale, axis=-2)
    return k_bar, jnp.einsum("...jh,...jhd->...hd", w, v_blocks)


@accepts_numpy
def combiner_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, block_size: int,
                       pooling: str = "mean", segment_ids: jax.Array | None = None,
                       scale: float | None = None, impl: str | Impl = "auto") -> jax.Array:
    """Causal Combiner-Fixed attention (equations in the module docstring).

    Args:
      q: [batch, length, heads, head_dim].
      k: [batch, length, kv_heads, head_dim]; ``kv_heads`` divides ``heads`` (grouped-query:
        the summaries are per query head).
      v: [batch, length, kv_heads, v_head_dim].
      block_size: B, the block length (direct region and summarised block).
      pooling: "mean" or "max": how a block's queries and keys pool into q̄_r, k̄_r.
      segment_ids: [batch, length] ids of packed rows (a document is a maximal run of equal
        ids); blocks start at each document's start and nothing is read across documents.
      scale: multiplies q·k; defaults to head_dim ** -0.5.
      impl: "reference" (the dense [length, length] probability matrix built from the
        factorisation), "xla" (blockwise: [.., B, 2B] direct scores and length // B summary
        slots per query, O(length · (B + length / B))) or "auto" (xla).

    Returns:
      [batch, length, heads, v_head_dim] in q's dtype (integer inputs promoted to the default
      float); scores and softmax in at least float32; empty for length 0 or batch 0. A NaN or
      Inf input at s sets NaN only in the outputs that read s (never an earlier one).

    Raises:
      ValueError: on mismatched shapes, a non-positive block_size or an unknown pooling/impl.
    """
    q, k, v = as_floats(q, k, v)
    chosen, scale = check_inputs(_OP, q, k, v, segment_ids, impl, scale)
    check_positive(_OP, "block_size", block_size, allow_none=False)
    if pooling not in POOLINGS:
        raise ValueError(f"{_OP}: pooling={pooling!r} is unknown; expected one of {POOLINGS}")
    batch, length, heads, _ = q.shape
    if batch == 0 or length == 0:
        return jnp.zeros((batch, length, heads, v.shape[-1]), q.dtype)
    dtype = q.dtype
    (q, k, v), (q_bad, k_bad, v_bad), layout = prepare(q, k, v, segment_ids, block_size)
    regions = region_ids(layout)
    if chosen is Impl.REFERENCE:
        out = _reference(q, k, v, layout, regions, pooling, scale)
    else:
        blocks = [gather_blocks(x, layout) for x in (q, k, v)]
        kappa, nu = combiner_summaries(*blocks, pooling=pooling, scale=scale)
        reads = reads_summary(layout, layout.first, layout.doc)
        out = fused_attention(q, k, v, kappa, nu, math.log(block_size), reads, regions,
                              block_size, scale)
    reach = (q_bad | local_reach(k_bad | v_bad, regions, block_size)
             | summary_reach(q_bad | k_bad | v_bad, layout))
    return poison(out, reach).astype(dtype)


def _reference(q, k, v, layout, regions, pooling, scale):
    batch, length = q.shape[:2]

    def per_row(q, k, regions):  # [length, heads, d]: each token carries its block's summary
        if pooling == "max":
            pool = lambda x: jax.ops.segment_max(x, regions, num_segments=length)[regions]
        else:
            count = jax.ops.segment_sum(jnp.ones(length), regions, num_segments=length)
            pool = lambda x: (jax.ops.segment_sum(x, regions, num_segments=length)
                              / count[:, None, None])[regions]
        q_bar, k_bar = pool(q), pool(k)
        w = segment_softmax(jnp.einsum("jhd,jhd->jh", q_bar, k) * scale, regions,
                                     length)
        return k_bar, w

    k_bar, w = jax.vmap(per_row)(q, k, regions)
    t, j = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
    local = (regions[:, :, None] == regions[:, None, :]) & (j <= t)
    reads = (layout.complete[:, None, :] & (layout.doc[:, :, None] == layout.doc[:, None, :])
             & (layout.first[:, None, :] + layout.block <= layout.first[:, :, None]))
    probs = dense_probabilities(q, k, local, reads, k_bar, w, math.log(layout.block), scale,
                                layout.pos % layout.block == 0)
    return jnp.einsum("bhtj,bjhd->bthd", probs, v)


# --------------------------------------------------------------------------------------------
# Recurrent form (generation).


def combiner_state(batch: int, heads: int, kv_heads: int, head_dim: int, v_head_dim: int, *,
                   block_size: int, max_length: int, dtype=jnp.float32) -> dict[str, jax.Array]:
    """The decoding state of :func:`combiner_step`: the current block's queries ``q``
    [batch, B, heads, head_dim], keys ``k`` and values ``v`` [batch, B, kv_heads, ...], the
    summaries ``k_bar`` [batch, max_length // B, heads, head_dim] and ``v_bar`` (..., v_head_dim)
    of the complete blocks, and ``pos`` (the next token's position). Summaries of blocks past
    ``max_length`` are not kept."""
    slots = max_length // block_size
    zeros = lambda *shape: jnp.zeros(shape, dtype)
    return {"q": zeros(batch, block_size, heads, head_dim),
            "k": zeros(batch, block_size, kv_heads, head_dim),
            "v": zeros(batch, block_size, kv_heads, v_head_dim),
            "k_bar": zeros(batch, slots, heads, head_dim),
            "v_bar": zeros(batch, slots, heads, v_head_dim),
            "pos": jnp.zeros((), jnp.int32)}


@accepts_numpy
def combiner_step(q_t: jax.Array, k_t: jax.Array, v_t: jax.Array, state: dict[str, jax.Array],
                  *, pooling: str = "mean", scale: float | None = None
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One token of :func:`combiner_attention` (one document): q_t [batch, heads, head_dim],
    k_t [batch, kv_heads, head_dim], v_t [batch, kv_heads, v_head_dim], the state of
    :func:`combiner_state`. Returns (o_t [batch, heads, v_head_dim] in q_t's dtype, new
    state); when the token completes its block, the block's summary joins the state."""
    block = state["q"].shape[1]
    heads = q_t.shape[1]
    scale = q_t.shape[-1] ** -0.5 if scale is None else float(scale)
    pos = state["pos"]
    slot = pos % block
    put = lambda name, x: state[name].at[:, slot].set(x.astype(state[name].dtype))
    qs, ks, vs = put("q", q_t), put("k", k_t), put("v", v_t)
    k_h, v_h = repeat_kv_heads(ks, heads, axis=2), repeat_kv_heads(vs, heads, axis=2)
    slots = state["k_bar"].shape[1]
    keys = jnp.concatenate([k_h, state["k_bar"]], axis=1)
    values = jnp.concatenate([v_h, state["v_bar"]], axis=1)
    mask = jnp.concatenate([jnp.arange(block) <= slot, jnp.arange(slots) < pos // block])
    bias = jnp.concatenate([jnp.zeros(block), jnp.full(slots, math.log(block))])
    batch = q_t.shape[0]
    out = masked_attention(q_t[:, None], keys, values,
                           jnp.broadcast_to(mask, (batch, 1, block + slots)), scale,
                           bias=jnp.broadcast_to(bias, (batch, 1, block + slots)))[:, 0]
    acc = jnp.promote_types(qs.dtype, jnp.float32)
    k_bar, v_bar = combiner_summaries(qs.astype(acc), k_h.astype(acc), v_h.astype(acc),
                                      pooling=pooling, scale=scale)
    full = slot == block - 1
    keep = lambda name, x: jnp.where(full, state[name].at[:, pos // block].set(
        x.astype(state[name].dtype)), state[name])
    new = {"q": qs, "k": ks, "v": vs, "k_bar": keep("k_bar", k_bar),
           "v_bar": keep("v_bar", v_bar), "pos": pos + 1}
    return out, new
