"""Routing attention ("Efficient Content-Based Sparse Attention with Routing Transformers").

Queries and keys are routed to the centroids of an online spherical k-means; query i reads key j
only when both are routed to the same centroid (and j <= i, and both are in one document):

* ``cluster_size=None``: every token goes to its nearest centroid, the paper's definition of the
  attention pattern. Exact and causal (a token's cluster depends on that token only), so a
  decode step reads the same keys; the xla form materialises the [length, length] mask.
* ``cluster_size=w``: balanced clusters, the paper's implementation: each centroid takes the w
  queries and the w keys nearest to it, and attention runs inside each cluster, so the cost is
  O(n_clusters · w²) = O(length · w) when n_clusters · w ≈ length. A query in several clusters
  averages their outputs; a query in none (or whose clusters hold no earlier key) gets 0.
  Membership is a top-w over the whole row, so it depends on other tokens, later ones included:
  this form trains, and decoding uses the nearest-centroid rule.

:func:`update_centroids` is one exponential-moving-average step of the k-means, outside the
gradient. Layout as :mod:`jaxlm.ops.attention`: q [batch, length, heads, head_dim], k and v
[batch, length, kv_heads, head_dim]; centroids [heads, n_clusters, head_dim].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops.attention import attention_mask, masked_attention
from jaxlm.ops.checks import (accepts_numpy, as_floats, check_positive, check_qkv, check_rank,
                              check_shape)
from jaxlm.ops.segments import document_ids
from jaxlm.ops.sparse_attention import repeat_kv_heads

_OP = "routing_attention"


def unit_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / |x| along the last axis (the sphere the k-means runs on)."""
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def route(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """The nearest centroid (largest cosine) of each vector: x [..., heads, d] -> int [..., heads]."""
    sim = jnp.einsum("...hd,hcd->...hc", unit_norm(x), centroids.astype(x.dtype))
    return jnp.argmax(sim, axis=-1).astype(jnp.int32)


def _check(q, k, v, centroids, segment_ids):
    check_qkv(_OP, q, k, v)
    batch, length, heads, head_dim = q.shape
    check_rank(_OP, "centroids", centroids, "[heads, n_clusters, head_dim]")
    check_shape(_OP, "centroids", centroids, (heads, None, head_dim),
                "[heads, n_clusters, head_dim]")
    if segment_ids is not None:
        check_shape(_OP, "segment_ids", segment_ids, (batch, length), "[batch, length]")


def routing_mask(q: jax.Array, k: jax.Array, centroids: jax.Array,
                 segment_ids: jax.Array | None = None) -> jax.Array:
    """The nearest-centroid pattern of queries q [batch, length, heads, d] and keys k
    [batch, length, kv_heads, d]: bool [batch, heads, length, length], causal, per document
    (a maximal run of equal ``segment_ids``)."""
    segment_ids = document_ids(segment_ids)
    length, heads = q.shape[1], q.shape[2]
    q_cluster = jnp.moveaxis(route(q, centroids), 1, 2)  # [batch, heads, length]
    k_cluster = jnp.moveaxis(route(repeat_kv_heads(k, heads, axis=2), centroids), 1, 2)
    pos = jnp.arange(length)
    seg = None if segment_ids is None else segment_ids[:, None]
    allowed = attention_mask(pos, pos, causal=True, window=None, q_segment=seg, k_segment=seg)
    return allowed & (q_cluster[..., :, None] == k_cluster[..., None, :])


def _members(x: jax.Array, centroids: jax.Array, size: int) -> jax.Array:
    """The ``size`` positions nearest each centroid, in position order: x [b, L, h, d] ->
    int [b, h, n_clusters, size]."""
    sim = jnp.einsum("blhd,hcd->bhcl", unit_norm(x), centroids.astype(x.dtype))
    return jnp.sort(jax.lax.top_k(sim, size)[1], axis=-1)


def _gather(x: jax.Array, index: jax.Array) -> jax.Array:
    """x [b, L, h, d], index [b, h, C, w] -> [b, h, C, w, d]."""
    xh = jnp.moveaxis(x, 1, 2)  # [b, h, L, d]
    b, h, c, w = index.shape
    out = jnp.take_along_axis(xh, index.reshape(b, h, c * w)[..., None], axis=2)
    return out.reshape(b, h, c, w, x.shape[-1])


def _balanced_attention(q, k, v, q_route, k_route, centroids, size, segment_ids, scale):
    batch, length, heads, _ = q.shape
    k, v = repeat_kv_heads(k, heads, axis=2), repeat_kv_heads(v, heads, axis=2)
    qi = _members(q_route, centroids, size)  # [b, h, C, w]
    ki = _members(repeat_kv_heads(k_route, heads, axis=2), centroids, size)
    acc = jnp.promote_types(q.dtype, jnp.float32)
    qc, kc, vc = _gather(q, qi).astype(acc), _gather(k, ki).astype(acc), _gather(v, ki).astype(acc)
    mask = ki[..., None, :] <= qi[..., :, None]  # [b, h, C, w, w]
    if segment_ids is not None:
        seg = jnp.broadcast_to(segment_ids[:, None, None], (batch, heads, 1, length))
        q_seg = jnp.take_along_axis(seg, qi.reshape(batch, heads, 1, -1), axis=-1).reshape(qi.shape)
        k_seg = jnp.take_along_axis(seg, ki.reshape(batch, heads, 1, -1), axis=-1).reshape(ki.shape)
        mask &= q_seg[..., :, None] == k_seg[..., None, :]
    scores = jnp.where(mask, jnp.einsum("bhcqd,bhckd->bhcqk", qc, kc) * scale, jnp.finfo(acc).min)
    has_key = jnp.any(mask, axis=-1)  # [b, h, C, w]
    probs = jnp.where(has_key[..., None], jax.nn.softmax(scores, axis=-1), 0)
    out_c = jnp.einsum("bhcqk,bhckd->bhcqd", probs, vc)

    def scatter(values, index, weight):  # one (batch, head): [C, w, dv], [C, w], [C, w]
        flat = index.reshape(-1)
        total = jnp.zeros((length, values.shape[-1]), acc).at[flat].add(
            values.reshape(flat.shape[0], -1))
        count = jnp.zeros((length,), acc).at[flat].add(weight.reshape(-1).astype(acc))
        return total / jnp.maximum(count, 1)[:, None]

    out = jax.vmap(jax.vmap(scatter))(out_c, qi, has_key)  # [b, h, L, dv]
    return jnp.moveaxis(out, 1, 2).astype(q.dtype)


@accepts_numpy
def routing_attention(q: jax.Array, k: jax.Array, v: jax.Array, centroids: jax.Array, *,
                      cluster_size: int | None = None, segment_ids: jax.Array | None = None,
                      scale: float | None = None, q_route: jax.Array | None = None,
                      k_route: jax.Array | None = None) -> jax.Array:
    """Causal attention inside k-means clusters of queries and keys.

    Args:
      q: [batch, length, heads, head_dim]; k: [batch, length, kv_heads, head_dim];
      v: [batch, length, kv_heads, v_head_dim].
      centroids: [heads, n_clusters, head_dim], unit vectors (from :func:`update_centroids`).
      cluster_size: None for nearest-centroid routing, or w for balanced clusters of the w
        nearest queries and keys per centroid (min(w, length) is used).
      segment_ids: [batch, length] ids of packed rows; a document is a maximal run of equal
        ids ([0, 1, 0] are three documents).
      scale: multiplies q·k; defaults to head_dim ** -0.5.
      q_route, k_route: the vectors routed, shaped as q and k (default: q and k themselves),
        e.g. the projections before rotary positions, so clusters follow content, not position.

    Returns:
      [batch, length, heads, v_head_dim] in q's dtype (integer inputs are promoted to the
      default float); empty for length 0 or batch 0.
    """
    q, k, v, centroids, q_route, k_route = as_floats(q, k, v, centroids, q_route, k_route)
    _check(q, k, v, centroids, segment_ids)
    segment_ids = document_ids(segment_ids)
    if q.shape[0] == 0 or q.shape[1] == 0:
        return jnp.zeros(q.shape[:3] + v.shape[-1:], q.dtype)
    q_route = q if q_route is None else q_route
    k_route = k if k_route is None else k_route
    check_shape(_OP, "q_route", q_route, q.shape, "q.shape")
    check_shape(_OP, "k_route", k_route, k.shape, "k.shape")
    check_positive(_OP, "cluster_size", cluster_size)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if cluster_size is None:
        mask = routing_mask(q_route, k_route, centroids, segment_ids)
        return masked_attention(q, k, v, mask, scale)
    return _balanced_attention(q, k, v, q_route, k_route, centroids,
                               min(cluster_size, q.shape[1]), segment_ids, scale)


def init_centroids(key: jax.Array, heads: int, n_clusters: int, head_dim: int,
                   dtype=jnp.float32) -> jax.Array:
    """Random unit centroids [heads, n_clusters, head_dim]."""
    return unit_norm(jax.random.normal(key, (heads, n_clusters, head_dim), dtype))


@accepts_numpy
def update_centroids(centroids: jax.Array, q: jax.Array, k: jax.Array, *, decay: float
                     ) -> jax.Array:
    """One step of online spherical k-means: each centroid moves to
    ``decay · centroid + (1 - decay) · mean of the unit queries and keys routed to it``, then
    back onto the sphere; a centroid no vector chose stays. No gradient flows through it.

    q: [batch, length, heads, d]; k: [batch, length, kv_heads, d]; centroids [heads, C, d].
    Returns [heads, C, d].
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"update_centroids: decay must be in [0, 1), got {decay}")
    heads, n_clusters = centroids.shape[:2]
    x = jnp.concatenate([q, repeat_kv_heads(k, heads, axis=2)], axis=1)
    x = jax.lax.stop_gradient(unit_norm(x.astype(jnp.float32)))
    onehot = jax.nn.one_hot(route(x, centroids), n_clusters, dtype=jnp.float32)  # [b, 2L, h, C]
    sums = jnp.einsum("blhc,blhd->hcd", onehot, x)
    counts = jnp.sum(onehot, axis=(0, 1))[..., None]  # [h, C, 1]
    moved = decay * centroids + (1 - decay) * sums / jnp.maximum(counts, 1)
    return jax.lax.stop_gradient(jnp.where(counts > 0, unit_norm(moved), centroids)
                                 ).astype(centroids.dtype)
