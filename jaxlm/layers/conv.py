"""Short causal depthwise convolution layer with a step form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.ops import causal_conv1d, causal_conv1d_step


class ShortConv(nnx.Module):
    """Depthwise causal conv over ``width`` tokens. x: [batch, length, channels] -> same.
    Its step state is the window of the last ``width - 1`` inputs."""

    def __init__(self, channels: int, width: int = 4, *, rngs: nnx.Rngs):
        if width < 1:
            raise ValueError(f"ShortConv: width must be >= 1, got {width}")
        init = nnx.initializers.uniform(scale=2.0 / width)
        self.weight = nnx.Param(init(rngs.params(), (width, channels)) - 1.0 / width)
        self.bias = nnx.Param(jnp.zeros((channels,)))
        self.width, self.channels = width, channels

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        return causal_conv1d(x, self.weight[...], self.bias[...], segment_ids=segment_ids)

    def init_state(self, batch_size: int, dtype=jnp.float32) -> jax.Array:
        return jnp.zeros((batch_size, self.width - 1, self.channels), dtype)

    def step(self, x_t: jax.Array, window: jax.Array) -> tuple[jax.Array, jax.Array]:
        return causal_conv1d_step(window, x_t, self.weight[...], self.bias[...])
