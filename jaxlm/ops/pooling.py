"""PoNet's multi-granularity pooling token mixing ("PoNet: Pooling Network for Efficient Token
Mixing in Long Sequences"), bidirectional as in the paper and causal for language models.

Per head, from six projections of the tokens (H_Q, H_K, H_V, H_O, H_S, H_L, each
[length, head_dim]), the paper's three poolings and its pooling fusion are

    global aggregation (GA):   g  = (1/N) Σ_n H_Q,n                       (mean query)
                               g' = Σ_n softmax_n(g·H_K,n / √d) H_V,n      (attention pooling)
    segment max-pooling (SMP): s_k = max_{n ∈ segment k} H_S,n             (channel-wise)
    local max-pooling (LMP):   L_n = max_{|m − n| ≤ w//2} H_L,m             (window w, stride 1)
    pooling fusion (PF):       O_n = (g' + s_{k(n)}) ∘ H_O,n + L_n

(the authors' code ties H_V to H_K; here it is its own projection, as in the paper's
equations). Segments are the runs of ``segment_size`` tokens of a document (the paper uses
sentences for text and a fixed number of segments for LRA).

The causal variant, for language models, lets token t see only tokens s <= t of its document:

    g_t   = (1/(t+1)) Σ_{s≤t} H_Q,s                                   (prefix mean)
    g'_t  = Σ_{s≤t} exp(a_s) H_V,s / Σ_{s≤t} exp(a_s),  a_s = g_s·H_K,s / √d
    s_t   = max over the tokens of t's segment up to t                 (causal segment pooling)
    L_t   = max_{t−w < s ≤ t} H_L,s                                     (causal local max)
    O_t   = (g'_t + s_t) ∘ H_O,t + L_t

Each key is scored once, against the mean query of its own prefix (a query that changed with t
would need every key again: quadratic, and a KV cache at generation), so the whole mixer is a
set of prefix scans: linear in length, with a constant-size state for ``step`` (running sums,
the online-softmax max / numerator / denominator, the segment's running max, the last w − 1
local values).

Forms: ``reference`` builds the [length, length] masks (same document, causal, same segment,
in the window) and pools under them: quadratic, obviously correct. ``xla``: causal, segmented
parallel scans (prefix sums and prefix maxima restarting at document and segment starts, the
online-softmax pooling as a linear recurrence); bidirectional, per-document and per-segment
reductions (``jax.ops.segment_sum`` / ``segment_max``); the local max is w shifted maxima.
Both are O(length · w).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import Impl, accepts_numpy, check_positive, check_rank, check_shape, resolve_impl
from jaxlm.ops.chunking import linear_recurrence
from jaxlm.ops.segments import segment_positions, segment_starts

_NAMES = ("q", "k", "v", "o", "s", "l")


def _check(op, tensors, segment_ids, segment_size, window, causal):
    check_rank(op, "q", tensors[0], "[batch, length, heads, head_dim]")
    for name, x in zip(_NAMES, tensors):
        check_shape(op, name, x, tensors[0].shape, "[batch, length, heads, head_dim]")
    batch, length = tensors[0].shape[:2]
    if segment_ids is not None:
        check_shape(op, "segment_ids", segment_ids, (batch, length), "[batch, length]")
    check_positive(op, "segment_size", segment_size, allow_none=False)
    check_positive(op, "window", window, allow_none=False)
    if not causal and window % 2 == 0:
        raise ValueError(f"{op}: window must be odd when causal=False (a window centred on the "
                         f"token, window // 2 on each side), got {window}")


@accepts_numpy
def multi_granularity_pooling(q: jax.Array, k: jax.Array, v: jax.Array, o: jax.Array,
                              s: jax.Array, l: jax.Array, *, causal: bool = True,
                              segment_size: int = 16, window: int = 3,
                              segment_ids: jax.Array | None = None,
                              scale: float | None = None,
                              impl: str | Impl = "auto") -> jax.Array:
    """PoNet's token mixing O = (g' + s) ∘ H_O + L (see the module docstring).

    Args:
      q, k, v, o, s, l: [batch, length, heads, head_dim] each: H_Q, H_K, H_V, H_O, H_S, H_L.
      causal: True for the prefix (language-model) variant, False for the paper's
        bidirectional one.
      segment_size: tokens per segment of the segment max-pooling (counted inside each
        document).
      window: local max-pooling width w (causal: the last w tokens; bidirectional: w // 2 on
        each side, w odd).
      segment_ids: [batch, length] packed documents (a document is a maximal run of equal
        ids); nothing is pooled across documents. None: one document per row.
      scale: score scale of the global attention pooling; 1/√head_dim when None.
      impl: "reference" (dense [length, length] masks), "xla" (linear scans and segment
        reductions), "auto" (= "xla").

    Returns:
      [batch, length, heads, head_dim] in the inputs' result dtype.

    Raises:
      ValueError: shapes that disagree, a non-positive segment_size or window, an even window
        with causal=False, or an unknown impl (the message names the argument).
    """
    op = "multi_granularity_pooling"
    tensors = (q, k, v, o, s, l)
    _check(op, tensors, segment_ids, segment_size, window, causal)
    chosen = resolve_impl(op, impl, ("reference", "xla"))
    batch, length, _, head_dim = q.shape
    scale = head_dim ** -0.5 if scale is None else scale
    dtype = jnp.result_type(*tensors)
    tensors = tuple(x.astype(dtype) for x in tensors)
    if segment_ids is None:
        segment_ids = jnp.zeros((batch, length), jnp.int32)
    form = _reference if chosen is Impl.REFERENCE else (_causal_scan if causal else
                                                        _bidirectional)
    return form(*tensors, segment_ids=segment_ids, causal=causal, segment_size=segment_size,
                window=window, scale=scale)


def _layout(segment_ids, segment_size):
    """(document index, position in the document, pooling-segment index) [batch, length]."""
    batch, length = segment_ids.shape
    starts = segment_starts(segment_ids, batch, length)
    doc = jnp.cumsum(starts, axis=1)
    pos = segment_positions(segment_ids)
    chunk = jnp.cumsum(pos % segment_size == 0, axis=1) - 1
    return doc, pos, chunk


def _masked_max(mask, x):
    """max over s of x[b, s] where mask[b, t, s]: [batch, length, heads, dim]."""
    return jnp.where(mask[..., None, None], x[:, None], -jnp.inf).max(axis=2)


def _reference(q, k, v, o, s, l, *, segment_ids, causal, segment_size, window, scale):
    doc, pos, chunk = _layout(segment_ids, segment_size)
    index = jnp.arange(q.shape[1])
    same_doc = doc[:, :, None] == doc[:, None, :]
    before = index[:, None] >= index[None, :]
    seen = same_doc & before if causal else same_doc
    # global aggregation: mean query over what token t sees, then attention pooling
    mean_q = jnp.einsum("bts,bshd->bthd", seen.astype(q.dtype), q) / seen.sum(-1)[..., None,
                                                                                   None]
    if causal:  # key s is scored against the mean query of its own prefix
        scores = jnp.broadcast_to(jnp.einsum("bshd,bshd->bhs", mean_q, k)[:, :, None, :],
                                  (q.shape[0], q.shape[2], q.shape[1], q.shape[1]))
    else:
        scores = jnp.einsum("bthd,bshd->bhts", mean_q, k)
    scores = jnp.where(seen[:, None], scores * scale, -jnp.inf)
    pooled = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), v)
    # segment and local max-pooling
    in_segment = same_doc & (chunk[:, :, None] == chunk[:, None, :])
    offset = index[:, None] - index[None, :]
    near = (offset >= 0) & (offset < window) if causal else jnp.abs(offset) <= window // 2
    segment = _masked_max(in_segment & before if causal else in_segment, s)
    local = _masked_max(same_doc & near, l)
    return (pooled + segment) * o + local


def _segmented_cummax(x, resets):
    """Prefix maximum of x [batch, length, ...] along axis 1, restarting where resets
    [batch, length] is True."""
    resets = jnp.broadcast_to(resets.reshape(resets.shape + (1,) * (x.ndim - 2)), x.shape)

    def combine(left, right):
        return left[0] | right[0], jnp.where(right[0], right[1], jnp.maximum(left[1], right[1]))

    return jax.lax.associative_scan(combine, (resets, x), axis=1)[1]


def _shifted_max(l, offsets, valid):
    """max over the offsets j of l[t - j] where valid(j) [batch, length] holds."""
    length = l.shape[1]
    out = jnp.full_like(l, -jnp.inf)
    for j in offsets:
        if abs(j) >= length:
            continue
        shifted = jnp.roll(l, j, axis=1)
        out = jnp.maximum(out, jnp.where(valid(j)[..., None, None], shifted, -jnp.inf))
    return out


def _causal_scan(q, k, v, o, s, l, *, segment_ids, causal, segment_size, window, scale):
    batch, length = segment_ids.shape
    starts = segment_starts(segment_ids, batch, length)
    pos = segment_positions(segment_ids)
    keep = (~starts).astype(q.dtype)[..., None, None]
    zeros = jnp.zeros_like(q[:, 0])
    mean_q = linear_recurrence(keep, q, zeros) / (pos + 1).astype(q.dtype)[..., None, None]
    scores = jnp.einsum("bthd,bthd->bth", mean_q, k) * scale
    running = _segmented_cummax(scores, starts | (jnp.arange(length) == 0))
    previous = jnp.concatenate([running[:, :1], running[:, :-1]], axis=1)
    decay = jnp.where(starts[..., None], 0.0, jnp.exp(previous - running))
    weights = jnp.exp(scores - running)
    num = linear_recurrence(decay[..., None], weights[..., None] * v, zeros)
    den = linear_recurrence(decay, weights, zeros[..., 0])
    pooled = num / den[..., None]
    segment = _segmented_cummax(s, pos % segment_size == 0)
    local = _shifted_max(l, range(window), lambda j: pos >= j)
    return (pooled + segment) * o + local


def _bidirectional(q, k, v, o, s, l, *, segment_ids, causal, segment_size, window, scale):
    length = q.shape[1]
    doc, pos, chunk = _layout(segment_ids, segment_size)

    def per_row(q, k, v, s, doc, chunk):
        def gather(fn, x, ids):
            return fn(x, ids, num_segments=length)[ids]
        count = gather(jax.ops.segment_sum, jnp.ones(length, q.dtype), doc)
        mean_q = gather(jax.ops.segment_sum, q, doc) / count[:, None, None]
        scores = jnp.einsum("thd,thd->th", mean_q, k) * scale
        weights = jnp.exp(scores - gather(jax.ops.segment_max, scores, doc))
        pooled = (gather(jax.ops.segment_sum, weights[..., None] * v, doc)
                  / gather(jax.ops.segment_sum, weights, doc)[..., None])
        return pooled, gather(jax.ops.segment_max, s, chunk)

    pooled, segment = jax.vmap(per_row)(q, k, v, s, doc, chunk)
    half = window // 2
    index = jnp.arange(length)

    def valid(j):  # token t - j exists and is in t's document
        inside = (index - j >= 0) & (index - j < length)
        return inside & (jnp.roll(doc, j, axis=1) == doc)

    local = _shifted_max(l, range(-half, half + 1), valid)
    return (pooled + segment) * o + local


def multi_granularity_pooling_state(batch: int, heads: int, head_dim: int, *, window: int = 3,
                                    dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """The causal variant's state before a document: running query sum, online-softmax
    maximum / numerator / denominator of the global pooling, the segment's running maximum,
    the position in the document, and the last ``window`` − 1 local values (-inf: none)."""
    check_positive("multi_granularity_pooling_state", "window", window, allow_none=False)
    zeros = jnp.zeros((batch, heads, head_dim), dtype)
    return {"q_sum": zeros, "max": jnp.full((batch, heads), -jnp.inf, dtype), "num": zeros,
            "den": jnp.zeros((batch, heads), dtype), "segment": zeros,
            "position": jnp.zeros((batch,), jnp.int32),
            "recent": jnp.full((batch, window - 1, heads, head_dim), -jnp.inf, dtype)}


@accepts_numpy
def multi_granularity_pooling_step(state: dict[str, jax.Array], q_t, k_t, v_t, o_t, s_t, l_t,
                                   *, segment_size: int = 16, scale: float | None = None
                                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One token of the causal variant: q_t ... l_t [batch, heads, head_dim] and the state of
    :func:`multi_granularity_pooling_state` -> (O_t [batch, heads, head_dim], new state)."""
    scale = q_t.shape[-1] ** -0.5 if scale is None else scale
    position = state["position"]
    q_sum = state["q_sum"] + q_t
    mean_q = q_sum / (position + 1).astype(q_sum.dtype)[:, None, None]
    score = jnp.einsum("bhd,bhd->bh", mean_q, k_t) * scale
    new_max = jnp.maximum(state["max"], score)
    decay, weight = jnp.exp(state["max"] - new_max), jnp.exp(score - new_max)
    num = state["num"] * decay[..., None] + weight[..., None] * v_t
    den = state["den"] * decay + weight
    fresh = (position % segment_size == 0)[:, None, None]
    segment = jnp.where(fresh, s_t, jnp.maximum(state["segment"], s_t))
    recent = jnp.concatenate([state["recent"], l_t[:, None]], axis=1)
    out = (num / den[..., None] + segment) * o_t + recent.max(axis=1)
    new_state = {"q_sum": q_sum, "max": new_max, "num": num, "den": den, "segment": segment,
                 "position": position + 1, "recent": recent[:, 1:]}
    return out, new_state
