"""Core Context Aware attention as a sequence mixer: pooled core tokens of groups plus a local
window, fused in one softmax."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.attention import Attention
from jaxlm.layers.registry import register_mixer
from jaxlm.ops.checks import check_positive_fields
from jaxlm.ops.core_context import (core_context_attention, core_context_state,
                                    core_context_step)


@dataclasses.dataclass(frozen=True)
class CoreContextConfig:
    """Options of :class:`CoreContext`: one core token per group of ``group_size`` tokens,
    and a local window of ``window`` tokens."""
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    rope: bool = True
    rope_theta: float = 10_000.0
    group_size: int = 8
    window: int = 8
    impl: str = "auto"

    def __post_init__(self):
        check_positive_fields("core_context", self, ("n_heads", "group_size", "window"))


class CoreContext(Attention):
    """Causal Core Context Aware attention ("Core Context Aware Attention for Long Context
    Language Modeling"; equations in :mod:`jaxlm.ops.core_context`): globality-pooling
    attention over one core token per complete earlier group (the group's tokens weighted by
    the attention of its last token) and locality-preserved attention over the last
    ``window`` tokens, in one softmax.

    Projections and rotary positions are :class:`Attention`'s (positions restart at every
    document of a packed row); with RoPE a core token's key is the weighted mean of its group's
    rotated keys. x: [batch, length, d_model] -> same. ``step`` keeps the last
    max(window, group_size) keys and values and one core token per complete group.
    """

    def __init__(self, d_model: int, *, n_heads: int = 4, n_kv_heads: int | None = None,
                 head_dim: int | None = None, rope: bool = True, rope_theta: float = 10_000.0,
                 group_size: int = 8, window: int = 8, impl: str = "auto", rngs: nnx.Rngs):
        CoreContextConfig(n_heads, n_kv_heads, head_dim, rope, rope_theta, group_size, window,
                          impl)
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                         rope=rope, rope_theta=rope_theta, rngs=rngs)
        self.group_size, self.impl = group_size, impl
        self.local_window = window  # ``window`` is Attention's (None: no sliding window)

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        batch, length, _ = x.shape
        q, k, v = self._qkv(x, self._positions(batch, length, segment_ids))
        out = core_context_attention(q, k, v, group_size=self.group_size,
                                     window=self.local_window, segment_ids=segment_ids,
                                     impl=self.impl)
        return self.o_proj(out.reshape(batch, length, -1))

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, jax.Array]:
        """:func:`jaxlm.ops.core_context_state`; ``max_length`` (required) bounds the core
        tokens."""
        if max_length is None:
            raise ValueError("CoreContext.init_state: max_length (the longest generation, which "
                             "bounds the core tokens kept) is required; got None")
        return core_context_state(batch_size, self.n_heads, self.n_kv_heads, self.head_dim,
                                  self.head_dim, group_size=self.group_size,
                                  window=self.local_window, max_length=max_length, dtype=dtype)

    def step(self, x_t: jax.Array, state: dict[str, jax.Array]):
        """x_t: [batch, d_model] -> (y_t [batch, d_model], new state)."""
        batch = x_t.shape[0]
        q, k, v = self._qkv(x_t[:, None], jnp.broadcast_to(state["pos"], (batch, 1)))
        out, state = core_context_step(q[:, 0], k[:, 0], v[:, 0], state,
                                       group_size=self.group_size, window=self.local_window)
        return self.o_proj(out.reshape(batch, -1)), state


register_mixer("core_context", CoreContextConfig, CoreContext)
