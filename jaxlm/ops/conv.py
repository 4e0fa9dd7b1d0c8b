"""Causal depthwise convolution: the "short conv" of Mamba and DeltaNet, and H3's shift SSM."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import accepts_numpy, check_rank, check_shape
from jaxlm.ops.ssm import fft_causal_conv

# Wider filters (without packed rows) convolve by FFT instead of one shifted add per tap.
_MAX_UNROLLED_WIDTH = 8


@accepts_numpy
def causal_conv1d(x: jax.Array, weight: jax.Array, bias: jax.Array | None = None, *,
                  segment_ids: jax.Array | None = None) -> jax.Array:
    """y_t[d] = Σ_{i<width} weight[i, d] · x_{t-i}[d] (+ bias[d]), never reading an earlier
    document of a packed row.

    x: [batch, length, channels]; weight: [width, channels] (weight[0] multiplies the current
    token); bias: [channels]; segment_ids: [batch, length]. Returns [batch, length, channels].
    """
    op = "causal_conv1d"
    check_rank(op, "x", x, "[batch, length, channels]")
    check_shape(op, "weight", weight, (None, x.shape[-1]), "[width, channels]")
    width, length = weight.shape[0], x.shape[1]
    if width > _MAX_UNROLLED_WIDTH and segment_ids is None:  # long filters (H3's shift SSM)
        kernel = jnp.pad(weight, [(0, max(0, length - width)), (0, 0)])[:length]
        y = fft_causal_conv(x.astype(jnp.result_type(x, weight)), kernel)
        return y if bias is None else y + bias
    y = jnp.zeros(x.shape, jnp.result_type(x, weight))
    for i in range(width):  # unrolled shifts
        shifted = jnp.pad(x, [(0, 0), (i, 0), (0, 0)])[:, : x.shape[1]]
        if segment_ids is not None and i:
            same = jnp.pad(segment_ids, [(0, 0), (i, 0)], constant_values=-1)[:, : x.shape[1]]
            shifted = jnp.where((same == segment_ids)[..., None], shifted, 0)
        y = y + shifted * weight[i]
    return y if bias is None else y + bias


@accepts_numpy
def causal_conv1d_step(window: jax.Array, x_t: jax.Array, weight: jax.Array,
                       bias: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """One token: window [batch, width - 1, channels] holds the previous inputs (oldest first);
    x_t: [batch, channels]. Returns (y_t [batch, channels], new window)."""
    full = jnp.concatenate([window, x_t[:, None]], axis=1)  # oldest .. newest
    y = jnp.einsum("bwc,wc->bc", full, weight[::-1])
    return (y if bias is None else y + bias), full[:, 1:]
