"""Combiner attention as a sequence mixer: full attention through a structured factorisation
(local blocks plus summaries of the earlier blocks)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.attention import Attention
from jaxlm.layers.registry import register_mixer
from jaxlm.ops.checks import check_positive_fields
from jaxlm.ops.combiner import POOLINGS, combiner_attention, combiner_state, combiner_step


@dataclasses.dataclass(frozen=True)
class CombinerConfig:
    """Options of :class:`Combiner`: blocks of ``block_size`` tokens, queries and keys pooled
    by ``pooling`` ("mean" or "max") into each block's summary."""
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    rope: bool = True
    rope_theta: float = 10_000.0
    block_size: int = 8
    pooling: str = "mean"
    impl: str = "auto"

    def __post_init__(self):
        check_positive_fields("combiner", self, ("n_heads", "block_size"))
        if self.pooling not in POOLINGS:
            raise ValueError(f"combiner.pooling={self.pooling!r} is unknown; expected one of "
                             f"{POOLINGS}")


class Combiner(Attention):
    """Causal Combiner-Fixed attention ("Combiner: Full Attention Transformer with Sparse
    Computation Cost"; equations in :mod:`jaxlm.ops.combiner`): each query reads the keys of
    its own block directly and every earlier block of its document through the block's
    abstraction (a softmax-weighted mean of its values), all in one normaliser, so it attends
    to the full prefix at O(length · (block + length / block)) cost.

    Projections and rotary positions are :class:`Attention`'s (positions restart at every
    document of a packed row). x: [batch, length, d_model] -> same. ``step`` keeps the current
    block's queries, keys and values and one summary per complete block: a state of
    block_size + max_length / block_size entries per head.
    """

    def __init__(self, d_model: int, *, n_heads: int = 4, n_kv_heads: int | None = None,
                 head_dim: int | None = None, rope: bool = True, rope_theta: float = 10_000.0,
                 block_size: int = 8, pooling: str = "mean", impl: str = "auto",
                 rngs: nnx.Rngs):
        CombinerConfig(n_heads, n_kv_heads, head_dim, rope, rope_theta, block_size, pooling,
                       impl)
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                         rope=rope, rope_theta=rope_theta, rngs=rngs)
        self.block_size, self.pooling, self.impl = block_size, pooling, impl

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        batch, length, _ = x.shape
        q, k, v = self._qkv(x, self._positions(batch, length, segment_ids))
        out = combiner_attention(q, k, v, block_size=self.block_size, pooling=self.pooling,
                                 segment_ids=segment_ids, impl=self.impl)
        return self.o_proj(out.reshape(batch, length, -1))

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, jax.Array]:
        """:func:`jaxlm.ops.combiner_state`; ``max_length`` (required) bounds the summaries."""
        if max_length is None:
            raise ValueError("Combiner.init_state: max_length (the longest generation, which "
                             "bounds the block summaries kept) is required; got None")
        return combiner_state(batch_size, self.n_heads, self.n_kv_heads, self.head_dim,
                              self.head_dim, block_size=self.block_size, max_length=max_length,
                              dtype=dtype)

    def step(self, x_t: jax.Array, state: dict[str, jax.Array]):
        """x_t: [batch, d_model] -> (y_t [batch, d_model], new state)."""
        batch = x_t.shape[0]
        q, k, v = self._qkv(x_t[:, None], jnp.broadcast_to(state["pos"], (batch, 1)))
        out, state = combiner_step(q[:, 0], k[:, 0], v[:, 0], state, pooling=self.pooling)
        return self.o_proj(out.reshape(batch, -1)), state


register_mixer("combiner", CombinerConfig, Combiner)
