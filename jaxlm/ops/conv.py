"""Causal depthwise convolution: the "short conv" of Mamba and DeltaNet, and H3's shift SSM."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import (accepts_numpy, as_floats, check_rank, check_shape, nonfinite_reach,
                              split_nonfinite)
from jaxlm.ops.segments import document_ids
from jaxlm.ops.ssm import fft_causal_conv

# Wider filters (without packed rows) convolve by FFT instead of one shifted add per tap.
_MAX_UNROLLED_WIDTH = 8


@accepts_numpy
def causal_conv1d(x: jax.Array, weight: jax.Array, bias: jax.Array | None = None, *,
                  segment_ids: jax.Array | None = None) -> jax.Array:
    """y_t[d] = Σ_{i<width} weight[i, d] · x_{t-i}[d] (+ bias[d]), never reading an earlier
    document of a packed row.

    x: [batch, length, channels]; weight: [width, channels] (weight[0] multiplies the current
    token); bias: [channels]; segment_ids: [batch, length], a document being a maximal run of
    equal ids ([0, 1, 0] are three documents). Returns [batch, length, channels] (integer
    inputs are promoted to the default float). Causal also under non-finite inputs: a NaN or
    Inf in x at s reaches y_t only for s <= t < s + width in its document.
    """
    op = "causal_conv1d"
    x, weight, bias = as_floats(x, weight, bias)
    check_rank(op, "x", x, "[batch, length, channels]")
    check_shape(op, "weight", weight, (None, x.shape[-1]), "[width, channels]")
    width, length = weight.shape[0], x.shape[1]
    dtype = jnp.result_type(x, weight)
    if width > _MAX_UNROLLED_WIDTH and segment_ids is None and length:  # H3's shift SSM
        # The FFT sums every input into every output: run it on finite inputs, then set NaN
        # where a non-finite one is read.
        clean, bad = split_nonfinite(x, 3)
        kernel = jnp.pad(weight, [(0, max(0, length - width)), (0, 0)])[:length]
        y = fft_causal_conv(clean.astype(dtype), kernel)
        y = jnp.where(nonfinite_reach(bad, None, window=width), jnp.asarray(jnp.nan, dtype), y)
        return y if bias is None else y + bias
    doc = document_ids(segment_ids)
    y = jnp.zeros(x.shape, dtype)
    for i in range(width):  # unrolled shifts
        y = y + _shifted(x, i, doc) * weight[i]
    return y if bias is None else y + bias


def _shifted(x: jax.Array, i: int, doc: jax.Array | None) -> jax.Array:
    """x_{t-i} at t ([batch, length, channels]), zero before t - i = 0 and where t - i lies in
    an earlier document (``doc``: [batch, length] document ids, or None)."""
    length = x.shape[1]
    shifted = jnp.pad(x, [(0, 0), (i, 0), (0, 0)])[:, :length]
    if doc is not None and i:
        same = jnp.pad(doc, [(0, 0), (i, 0)], constant_values=-1)[:, :length]
        shifted = jnp.where((same == doc)[..., None], shifted, 0)
    return shifted


@accepts_numpy
def dense_causal_conv1d(x: jax.Array, weight: jax.Array, bias: jax.Array | None = None, *,
                        segment_ids: jax.Array | None = None) -> jax.Array:
    """The full (channel-mixing) causal convolution y_t = Σ_{i<width} x_{t-i} · weight[i]
    (+ bias), never reading an earlier document of a packed row: a convolutional layer of
    LMUFormer's patch embedding ("LMUFormer: Low Complexity Yet Powerful Spiking Model With
    Legendre Memory Units"), made causal by padding on the left only.

    x: [batch, length, in_channels]; weight: [width, in_channels, out_channels] (weight[0]
    multiplies the current token); bias: [out_channels]; segment_ids: [batch, length].
    Returns [batch, length, out_channels].
    """
    op = "dense_causal_conv1d"
    x, weight, bias = as_floats(x, weight, bias)
    check_rank(op, "x", x, "[batch, length, in_channels]")
    check_rank(op, "weight", weight, "[width, in_channels, out_channels]")
    check_shape(op, "weight", weight, (None, x.shape[-1], None),
                "[width, in_channels, out_channels]")
    doc = document_ids(segment_ids)
    y = sum(jnp.einsum("blc,cd->bld", _shifted(x, i, doc), weight[i])
            for i in range(weight.shape[0]))
    return y if bias is None else y + bias


@accepts_numpy
def dense_causal_conv1d_step(window: jax.Array, x_t: jax.Array, weight: jax.Array,
                             bias: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """One token of :func:`dense_causal_conv1d`: window [batch, width - 1, in_channels] holds
    the previous inputs (oldest first); x_t: [batch, in_channels]. Returns (y_t [batch,
    out_channels], new window)."""
    full = jnp.concatenate([window, x_t[:, None]], axis=1)  # oldest .. newest
    y = jnp.einsum("bwc,wcd->bd", full, weight[::-1])
    return (y if bias is None else y + bias), full[:, 1:]


@accepts_numpy
def causal_conv1d_step(window: jax.Array, x_t: jax.Array, weight: jax.Array,
                       bias: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """One token: window [batch, width - 1, channels] holds the previous inputs (oldest first);
    x_t: [batch, channels]. Returns (y_t [batch, channels], new window)."""
    full = jnp.concatenate([window, x_t[:, None]], axis=1)  # oldest .. newest
    y = jnp.einsum("bwc,wc->bc", full, weight[::-1])
    return (y if bias is None else y + bias), full[:, 1:]
