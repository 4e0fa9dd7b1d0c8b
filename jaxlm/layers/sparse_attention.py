"""Sparse attention as a sequence mixer: content-selected key blocks, k-means routing or the Λ
mask."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.attention import Attention
from jaxlm.layers.registry import register_mixer
from jaxlm.ops.attention import masked_attention
from jaxlm.ops.routing_attention import init_centroids, route, routing_attention, update_centroids
from jaxlm.ops.sparse_attention import (block_summaries, choose_blocks, gathered_attention,
                                        group_summaries, lambda_attention, lambda_blocks,
                                        repeat_kv_heads, to_blocks)

SELECTIONS = ("topk_blocks", "hierarchical", "routing", "lambda")


@dataclasses.dataclass(frozen=True)
class SparseAttentionConfig:
    """Options of :class:`SparseAttention`."""
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    rope: bool = True
    rope_theta: float = 10_000.0
    selection: str = "topk_blocks"  # "topk_blocks" | "hierarchical" | "routing" | "lambda"
    block_size: int = 8
    top_k: int = 2  # content-selected blocks per query (topk_blocks, hierarchical)
    local_blocks: int = 1
    sink_blocks: int = 1
    summary: str = "mean"  # block summary of topk_blocks: "mean" | "max"
    branch: int = 4  # blocks per coarse group (hierarchical)
    window: int = 16  # local window (lambda)
    sink_tokens: int = 4  # global tokens (lambda)
    n_clusters: int = 4  # k-means centroids per head (routing)
    cluster_size: int | None = None  # routing: None = nearest centroid; w = balanced clusters
    centroid_decay: float = 0.99  # moving-average decay of the centroids (routing)

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise ValueError(f"sparse_attention selection={self.selection!r} is unknown; "
                             f"expected one of {SELECTIONS}")
        if self.summary not in ("mean", "max"):
            raise ValueError(f"sparse_attention summary={self.summary!r} is unknown; expected "
                             f"'mean' or 'max'")
        for name in ("block_size", "branch", "window", "n_clusters"):
            if getattr(self, name) < 1:
                raise ValueError(f"sparse_attention {name} must be >= 1, got "
                                 f"{getattr(self, name)}")
        for name in ("top_k", "local_blocks", "sink_blocks", "sink_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"sparse_attention {name} must be >= 0, got "
                                 f"{getattr(self, name)}")
        if self.cluster_size is not None and self.cluster_size < 1:
            raise ValueError(f"sparse_attention cluster_size must be >= 1 or None, got "
                             f"{self.cluster_size}")
        if not 0.0 <= self.centroid_decay < 1.0:
            raise ValueError(f"sparse_attention centroid_decay must be in [0, 1), got "
                             f"{self.centroid_decay}")


class Centroids(nnx.Variable):
    """k-means centroids of routing attention: state updated by a moving average in training,
    not a trained parameter (the optimizer never sees it)."""


class SparseAttention(Attention):
    """Causal attention in which each query reads a few key blocks.

    ``selection="topk_blocks"``: its sink blocks, its local blocks and the ``top_k`` complete
    earlier blocks whose pooled keys score highest against it ("Landmark Attention",
    "InfLLM"); ``"hierarchical"``: the same, choosing among groups of ``branch`` blocks first
    ("HiP Attention"); ``"routing"``: queries read the keys routed to the same k-means centroid
    ("Efficient Content-Based Sparse Attention with Routing Transformers"; see
    :mod:`jaxlm.ops.routing_attention`); ``"lambda"``: LM-Infinite's sink tokens plus a local
    window.

    Routing centroids are a :class:`Centroids` variable; after ``model.train()`` (which sets
    ``deterministic=False``) each call moves them one moving-average step toward the unit
    queries and keys routed to them. Routing with ``cluster_size=None`` (nearest centroid) is
    what ``step`` decodes; balanced clusters (``cluster_size=w``) train in O(length · w), and
    their decode step uses the nearest-centroid rule.

    Each query chooses for itself, so ``__call__`` and ``step`` read the same keys; ``step``
    keeps the block summaries with the KV cache and gathers only the chosen blocks. The
    parallel form holds [batch, heads, length, slots · block_size] scores, slots = sink +
    local + top_k. Packed rows are refused except by routing: blocks are cut on row positions.
    """

    def __init__(self, d_model: int, *, n_heads: int = 4, n_kv_heads: int | None = None,
                 head_dim: int | None = None, rope: bool = True, rope_theta: float = 10_000.0,
                 selection: str = "topk_blocks", block_size: int = 8, top_k: int = 2,
                 local_blocks: int = 1, sink_blocks: int = 1, summary: str = "mean",
                 branch: int = 4, window: int = 16, sink_tokens: int = 4, n_clusters: int = 4,
                 cluster_size: int | None = None, centroid_decay: float = 0.99,
                 rngs: nnx.Rngs):
        self.sparse = SparseAttentionConfig(
            n_heads, n_kv_heads, head_dim, rope, rope_theta, selection, block_size, top_k,
            local_blocks, sink_blocks, summary, branch, window, sink_tokens, n_clusters,
            cluster_size, centroid_decay)
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                         rope=rope, rope_theta=rope_theta, rngs=rngs)
        self.deterministic = True  # False (model.train()): routing centroids learn
        if selection == "routing":
            self.centroids = Centroids(init_centroids(rngs.params(), n_heads, n_clusters,
                                                      self.head_dim))

    def _choice(self):
        c = self.sparse
        if c.selection == "lambda":
            local, sink = lambda_blocks(c.window, c.sink_tokens, c.block_size)
            return dict(top_k=0, local_blocks=local, sink_blocks=sink)
        method = "hierarchical" if c.selection == "hierarchical" else c.summary
        return dict(top_k=c.top_k, local_blocks=c.local_blocks, sink_blocks=c.sink_blocks,
                    method=method, branch=c.branch)

    def _select(self, q, summaries, current):
        """q: [batch, heads, m, d]; summaries [batch, heads, n_blocks, d]; current [m].
        Returns indices, valid [batch, heads, m, S]."""
        choice = self._choice()
        hierarchical = choice.get("method") == "hierarchical"
        coarse = group_summaries(summaries, self.sparse.branch) if hierarchical else None

        def one(query, summ, coarse_h, cur):
            return choose_blocks(query, summ, cur, coarse=coarse_h, **choice)

        per_query = jax.vmap(one, in_axes=(0, None, None, 0))
        return jax.vmap(jax.vmap(per_query, in_axes=(0, 0, 0, None)),
                        in_axes=(0, 0, 0, None))(q, summaries, coarse, current)

    def _attend(self, q, k_blocks, v_blocks, indices, valid, q_pos, length):
        c = self.sparse
        lam = c.selection == "lambda"
        return gathered_attention(q[:, :, :, None], k_blocks, v_blocks, indices, valid,
                                  q_pos[:, None], length=length, scale=self.head_dim ** -0.5,
                                  window=c.window if lam else None,
                                  sink_tokens=c.sink_tokens if lam else 0)

    def _summaries(self, k):
        """[batch, length, kv_heads, d] -> [batch, kv_heads, n_blocks, d]."""
        pooled = "max" if self.sparse.summary == "max" else "mean"
        return block_summaries(k, self.sparse.block_size, pooled)

    def _routing(self, x, segment_ids):
        """Routing runs on the projections before rotary positions: clusters by content."""
        batch, length, _ = x.shape
        q_raw, k_raw, v = self._project(x)
        positions = self._positions(batch, length, segment_ids)
        centroids = self.centroids[...]
        q, k = self._rotate(q_raw, positions), self._rotate(k_raw, positions)
        c = self.sparse
        out = routing_attention(q, k, v, centroids, cluster_size=c.cluster_size,
                                segment_ids=segment_ids, q_route=q_raw, k_route=k_raw)
        if not self.deterministic:
            self.centroids[...] = update_centroids(centroids, q_raw, k_raw,
                                                    decay=c.centroid_decay)
        return self.o_proj(out.reshape(batch, length, -1))

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        if self.sparse.selection == "routing":
            return self._routing(x, segment_ids)
        if segment_ids is not None:
            raise ValueError("SparseAttention: segment_ids (packed rows) are not supported: "
                             "key blocks are cut on row positions")
        batch, length, _ = x.shape
        c = self.sparse
        q, k, v = self._qkv(x, self._positions(batch, length, None))
        if c.selection == "lambda":
            out = lambda_attention(q, k, v, window=c.window, sink_tokens=c.sink_tokens,
                                   block_size=c.block_size)
            return self.o_proj(out.reshape(batch, length, -1))
        positions = jnp.arange(length)
        qh = jnp.moveaxis(q, 2, 1)  # [batch, heads, length, d]
        indices, valid = self._select(qh, repeat_kv_heads(self._summaries(k), self.n_heads),
                                      positions // c.block_size)
        out = self._attend(qh, to_blocks(k, c.block_size), to_blocks(v, c.block_size), indices,
                           valid, positions, length)  # [batch, heads, length, 1, d]
        out = jnp.moveaxis(out[:, :, :, 0], 1, 2).astype(x.dtype)
        return self.o_proj(out.reshape(batch, length, -1))

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, jax.Array]:
        """KV cache k, v [batch, slots, kv_heads, head_dim] (max_length rounded up to whole
        blocks), the block summaries [batch, kv_heads, n_blocks, head_dim], and pos; routing
        keeps each cached key's centroid, key_cluster [batch, slots, heads], instead of
        summaries."""
        if max_length is None:
            raise ValueError("SparseAttention.init_state: max_length (the KV cache length) is "
                             "required; got None")
        bs = self.sparse.block_size
        n_blocks = -(-max_length // bs)
        shape = (batch_size, n_blocks * bs, self.n_kv_heads, self.head_dim)
        if self.sparse.selection == "routing":
            return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
                    "key_cluster": jnp.full((batch_size, n_blocks * bs, self.n_heads), -1,
                                            jnp.int32),
                    "pos": jnp.zeros((), jnp.int32)}
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
                "summaries": jnp.zeros((batch_size, self.n_kv_heads, n_blocks, self.head_dim),
                                       dtype),
                "pos": jnp.zeros((), jnp.int32)}

    def step(self, x_t: jax.Array, state: dict[str, jax.Array]):
        """x_t: [batch, d_model] -> (y_t [batch, d_model], new state)."""
        if self.sparse.selection == "routing":
            return self._routing_step(x_t, state)
        batch = x_t.shape[0]
        bs = self.sparse.block_size
        pos = state["pos"]
        q, k, v = self._qkv(x_t[:, None], jnp.broadcast_to(pos, (batch, 1)))
        cache_k = state["k"].at[:, pos].set(k[:, 0].astype(state["k"].dtype))
        cache_v = state["v"].at[:, pos].set(v[:, 0].astype(state["v"].dtype))
        current = pos // bs
        summaries = state["summaries"]
        if self.sparse.selection != "lambda":  # the Λ mask reads no summaries
            block = jax.lax.dynamic_slice_in_dim(cache_k, current * bs, bs, axis=1)
            summary = self._summaries(block)[:, :, 0].astype(summaries.dtype)
            summaries = jnp.where((pos + 1) % bs == 0, summaries.at[:, :, current].set(summary),
                                  summaries)
        qh = jnp.moveaxis(q, 2, 1)  # [batch, heads, 1, d]
        indices, valid = self._select(qh, repeat_kv_heads(summaries, self.n_heads),
                                      current[None])
        out = self._attend(qh, to_blocks(cache_k, bs), to_blocks(cache_v, bs), indices, valid,
                           pos[None], cache_k.shape[1])
        new_state = {"k": cache_k, "v": cache_v, "summaries": summaries, "pos": pos + 1}
        return self.o_proj(out.reshape(batch, -1).astype(x_t.dtype)), new_state

    def _routing_step(self, x_t, state):
        """Reads the cached keys routed to the query's nearest centroid."""
        batch = x_t.shape[0]
        pos = state["pos"]
        q_raw, k_raw, v = self._project(x_t[:, None])
        positions = jnp.broadcast_to(pos, (batch, 1))
        q, k = self._rotate(q_raw, positions), self._rotate(k_raw, positions)
        centroids = self.centroids[...]
        cache_k = state["k"].at[:, pos].set(k[:, 0].astype(state["k"].dtype))
        cache_v = state["v"].at[:, pos].set(v[:, 0].astype(state["v"].dtype))
        k_cluster = route(repeat_kv_heads(k_raw[:, 0], self.n_heads), centroids)
        key_cluster = state["key_cluster"].at[:, pos].set(k_cluster)
        q_cluster = route(q_raw[:, 0], centroids)  # [batch, heads]
        # empty slots hold cluster -1, which no query is routed to: [batch, slots, heads]
        mask = key_cluster == q_cluster[:, None]
        mask = jnp.moveaxis(mask, 1, 2)[:, :, None]  # [batch, heads, 1, slots]
        out = masked_attention(q, cache_k, cache_v, mask, self.head_dim ** -0.5)
        new_state = {"k": cache_k, "v": cache_v, "key_cluster": key_cluster, "pos": pos + 1}
        return self.o_proj(out.reshape(batch, -1).astype(x_t.dtype)), new_state


register_mixer("sparse_attention", SparseAttentionConfig, SparseAttention)
