"""Landmark attention as a sequence mixer ("Landmark Attention: Random-Access Infinite Context
Length for Transformers"): :mod:`jaxlm.ops.landmark_attention` behind the attention layer's
projections and rotary positions."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.attention import Attention
from jaxlm.layers.registry import register_mixer
from jaxlm.ops.landmark_attention import (earlier_blocks, grouped_attention,
                                          landmark_attention, landmark_scores,
                                          retrieved_blocks)


@dataclasses.dataclass(frozen=True)
class LandmarkAttentionConfig:
    """Options of :class:`LandmarkAttention`."""
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    rope: bool = True
    rope_theta: float = 10_000.0
    block_size: int = 7  # regular tokens per block; a landmark follows each (period 8)
    top_k: int | None = None  # None: every block (training); k: retrieve the k best blocks

    def __post_init__(self):
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"landmark_attention block_size must be a positive integer, got "
                             f"{self.block_size!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise ValueError(f"landmark_attention top_k must be a non-negative integer or None, "
                             f"got {self.top_k!r}")


class LandmarkAttention(Attention):
    """Causal attention whose queries read earlier blocks through their landmark tokens: the
    grouped softmax of "Landmark Attention" (:func:`jaxlm.ops.landmark_attention`).

    The position p (counted from each document's start) with p mod (block_size + 1) =
    block_size holds a landmark: :class:`jaxlm.models.DecoderLM` inserts a learned landmark
    embedding there whenever its pattern has this mixer (and drops those positions from its
    outputs), so the landmarks pass through every layer and gather their blocks' content. On
    input without landmarks the tokens at those positions act as them.

    ``top_k=None`` trains and decodes with every earlier block; ``top_k=k`` is the paper's
    inference: each query and head retrieves the k blocks whose landmarks score best.
    ``step`` keeps a KV cache of ``max_length`` tokens and reads it block by block.
    """

    def __init__(self, d_model: int, *, n_heads: int = 4, n_kv_heads: int | None = None,
                 head_dim: int | None = None, rope: bool = True, rope_theta: float = 10_000.0,
                 block_size: int = 7, top_k: int | None = None, rngs: nnx.Rngs):
        self.landmark = LandmarkAttentionConfig(n_heads, n_kv_heads, head_dim, rope, rope_theta,
                                                block_size, top_k)
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                         rope=rope, rope_theta=rope_theta, rngs=rngs)

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        batch, length, _ = x.shape
        q, k, v = self._qkv(x, self._positions(batch, length, segment_ids))
        out = landmark_attention(q, k, v, block_size=self.landmark.block_size,
                                 top_k=self.landmark.top_k, segment_ids=segment_ids)
        return self.o_proj(out.reshape(batch, length, -1))

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, jax.Array]:
        """KV cache k, v [batch, max_length, kv_heads, head_dim] and pos."""
        if max_length is None:
            raise ValueError("LandmarkAttention.init_state: max_length (the KV cache length) "
                             "is required; got None")
        shape = (batch_size, max_length, self.n_kv_heads, self.head_dim)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
                "pos": jnp.zeros((), jnp.int32)}

    def step(self, x_t: jax.Array, state: dict[str, jax.Array]):
        """x_t: [batch, d_model] -> (y_t [batch, d_model], new state)."""
        batch = x_t.shape[0]
        pos = state["pos"]
        bs, top_k = self.landmark.block_size, self.landmark.top_k
        q, k, v = self._qkv(x_t[:, None], jnp.broadcast_to(pos, (batch, 1)))
        cache_k = state["k"].at[:, pos].set(k[:, 0].astype(state["k"].dtype))
        cache_v = state["v"].at[:, pos].set(v[:, 0].astype(state["v"].dtype))
        n_blocks = -(-cache_k.shape[1] // (bs + 1))
        start = jnp.zeros((batch, 1), jnp.int32)
        q_pos = jnp.broadcast_to(pos, (batch, 1))
        if top_k is None:
            index, valid = earlier_blocks(q_pos, bs, n_blocks, self.n_heads)
        else:
            scale = self.head_dim ** -0.5
            scores = landmark_scores(q, cache_k, start, n_blocks, bs, scale)
            index, valid = retrieved_blocks(scores, q_pos, bs, top_k)
        out = grouped_attention(q, cache_k, cache_v, start, q_pos, index, valid, block_size=bs,
                                scale=self.head_dim ** -0.5)
        new_state = {"k": cache_k, "v": cache_v, "pos": pos + 1}
        return self.o_proj(out.reshape(batch, -1).astype(x_t.dtype)), new_state


register_mixer("landmark_attention", LandmarkAttentionConfig, LandmarkAttention)
