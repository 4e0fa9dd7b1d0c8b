"""The PoNet mixer: multi-granularity pooling token mixing (global, segment, local)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.registry import register_mixer
from jaxlm.ops.checks import check_positive_fields
from jaxlm.ops.pooling import (multi_granularity_pooling, multi_granularity_pooling_state,
                               multi_granularity_pooling_step)


@dataclasses.dataclass(frozen=True)
class PoNetConfig:
    """Options of the ``ponet`` mixer: ``n_heads`` heads, segments of ``segment_size`` tokens,
    local max-pooling over ``window`` tokens; ``causal=False`` is the paper's bidirectional
    form (no ``step``: its outputs depend on later tokens)."""
    n_heads: int = 4
    segment_size: int = 16
    window: int = 3
    causal: bool = True
    impl: str = "auto"

    def __post_init__(self):
        check_positive_fields("ponet", self, ("n_heads", "segment_size", "window"))
        if not self.causal and self.window % 2 == 0:
            raise ValueError(f"ponet.window must be odd when ponet.causal=False, "
                             f"got {self.window}")


class PoNet(nnx.Module):
    """PoNet's token mixer ("PoNet: Pooling Network for Efficient Token Mixing in Long
    Sequences"): six projections of x per head, H_Q, H_K, H_V, H_O, H_S, H_L, then

        g' = Σ_n softmax_n(mean(H_Q)·H_K,n / √d) H_V,n          (global aggregation)
        s  = max of H_S over the token's segment                (segment max-pooling)
        L  = max of H_L over a window of ``window`` tokens       (local max-pooling)
        O  = (g' + s) ∘ H_O + L                                  (pooling fusion)

    and an output projection of O. ``causal=True`` (the default, for language models) uses
    prefix means, causal segment pooling and a causal local max
    (:mod:`jaxlm.ops.pooling` has the equations of both variants); it is linear in length and
    its ``step`` carries a constant-size state. x: [batch, length, d_model] -> same.

    Raises ValueError when n_heads does not divide d_model, and from ``step`` /
    ``init_state`` when causal=False.
    """

    def __init__(self, d_model: int, *, n_heads: int = 4, segment_size: int = 16,
                 window: int = 3, causal: bool = True, impl: str = "auto", rngs: nnx.Rngs):
        PoNetConfig(n_heads, segment_size, window, causal, impl)
        if d_model % n_heads:
            raise ValueError(f"ponet: n_heads={n_heads} must divide d_model={d_model}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.segment_size, self.window, self.causal, self.impl = (segment_size, window, causal,
                                                                  impl)
        self.in_proj = nnx.Linear(d_model, 6 * d_model, rngs=rngs)  # H_Q, H_K, H_V, H_O, H_S, H_L
        self.out_proj = nnx.Linear(d_model, d_model, rngs=rngs)

    def _projections(self, x):
        parts = self.in_proj(x).reshape(*x.shape[:-1], 6, self.n_heads, self.head_dim)
        return [parts[..., i, :, :] for i in range(6)]

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        out = multi_granularity_pooling(*self._projections(x), causal=self.causal,
                                        segment_size=self.segment_size, window=self.window,
                                        segment_ids=segment_ids, impl=self.impl)
        return self.out_proj(out.reshape(x.shape))

    def _check_causal(self, method):
        if not self.causal:
            raise ValueError(f"ponet.{method}: the bidirectional mixer (causal=False) has no "
                             f"recurrent form (each output pools later tokens too); use "
                             f"causal=True to generate")

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, jax.Array]:
        self._check_causal("init_state")
        return multi_granularity_pooling_state(batch_size, self.n_heads, self.head_dim,
                                               window=self.window,
                                               dtype=jnp.promote_types(dtype, jnp.float32))

    def step(self, x_t: jax.Array, state: dict[str, jax.Array]):
        self._check_causal("step")
        out, state = multi_granularity_pooling_step(state, *self._projections(x_t),
                                                    segment_size=self.segment_size)
        return self.out_proj(out.reshape(x_t.shape).astype(x_t.dtype)), state


register_mixer("ponet", PoNetConfig, PoNet)
