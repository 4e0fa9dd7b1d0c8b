"""Causal depthwise convolution: the unrolled and FFT paths equal a direct double loop, packed
rows never read an earlier document, and the step form equals the parallel form (float64,
1e-12 relative: FFTs round at ~1e-15 per element)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops.conv import (causal_conv1d, causal_conv1d_step, dense_causal_conv1d,
                            dense_causal_conv1d_step)
from tests.helpers import rel_err


def direct(x, weight, segment_ids=None):
    x, weight = np.asarray(x), np.asarray(weight)
    y = np.zeros_like(x)
    for t in range(x.shape[1]):
        for i in range(min(weight.shape[0], t + 1)):
            keep = 1.0 if segment_ids is None else (
                np.asarray(segment_ids[:, t - i]) == np.asarray(segment_ids[:, t]))[:, None]
            y[:, t] += keep * weight[i] * x[:, t - i]
    return y


@pytest.mark.parametrize("width, length", [(4, 9), (12, 9), (12, 30)])
@pytest.mark.parametrize("packed", [False, True])
def test_conv_equals_direct_sum_and_steps(width, length, packed):
    x = jax.random.normal(jax.random.key(width), (2, length, 3), jnp.float64)
    weight = jax.random.normal(jax.random.key(length), (width, 3), jnp.float64)
    segment_ids = (jnp.cumsum(jax.random.bernoulli(jax.random.key(0), 0.2, (2, length)), axis=1)
                   if packed else None)
    y = causal_conv1d(x, weight, segment_ids=segment_ids)
    assert rel_err(y, direct(x, weight, segment_ids)) < 1e-12
    window, steps = jnp.zeros((2, width - 1, 3), jnp.float64), []
    for t in range(length):
        y_t, window = causal_conv1d_step(window, x[:, t], weight)
        steps.append(y_t)
    if not packed:
        assert rel_err(jnp.stack(steps, axis=1), y) < 1e-12


def test_fft_path_gradients_equal_unrolled_path():
    """A width over 8 goes by FFT; one-document segment_ids force the unrolled shifts."""
    x = jax.random.normal(jax.random.key(1), (2, 19, 3), jnp.float64)
    weight = jax.random.normal(jax.random.key(2), (12, 3), jnp.float64)
    cot = jax.random.normal(jax.random.key(3), x.shape, jnp.float64)
    one_doc = jnp.zeros((2, 19), jnp.int32)

    def grads(segment_ids):
        return jax.grad(lambda x, w: jnp.sum(causal_conv1d(x, w, segment_ids=segment_ids) * cot),
                        argnums=(0, 1))(x, weight)

    assert rel_err(grads(None), grads(one_doc)) < 1e-12


def test_dense_conv_equals_direct_sum_steps_and_gradients():
    """The channel-mixing convolution (LMUFormer's patch embedding) against a double loop of
    x_{t-i} @ weight[i], packed rows included; its gradients against the loop's; the step form
    on an unpacked row."""
    length, width = 7, 3
    x = jax.random.normal(jax.random.key(4), (2, length, 3), jnp.float64)
    weight = jax.random.normal(jax.random.key(5), (width, 3, 5), jnp.float64)
    segment_ids = jnp.cumsum(jax.random.bernoulli(jax.random.key(6), 0.25, (2, length)), axis=1)

    def loop(x, weight, segment_ids):
        ys = []
        for t in range(length):
            y = jnp.zeros((2, 5), x.dtype)
            for i in range(min(width, t + 1)):
                keep = (segment_ids[:, t - i] == segment_ids[:, t])[:, None]
                y = y + jnp.where(keep, x[:, t - i] @ weight[i], 0.0)
            ys.append(y)
        return jnp.stack(ys, axis=1)

    cotangent = jax.random.normal(jax.random.key(7), (2, length, 5), jnp.float64)
    def fast(x, w):
        return jnp.sum(dense_causal_conv1d(x, w, segment_ids=segment_ids) * cotangent)

    def slow(x, w):
        return jnp.sum(loop(x, w, segment_ids) * cotangent)

    def steps(x, weight):
        step = lambda window, x_t: dense_causal_conv1d_step(window, x_t, weight)[::-1]
        _, ys = jax.lax.scan(step, jnp.zeros((2, width - 1, 3), x.dtype), jnp.swapaxes(x, 0, 1))
        return jnp.swapaxes(ys, 0, 1)

    @jax.jit
    def run(x, weight):
        return (dense_causal_conv1d(x, weight, segment_ids=segment_ids),
                loop(x, weight, segment_ids), jax.grad(fast, (0, 1))(x, weight),
                jax.grad(slow, (0, 1))(x, weight), steps(x, weight), dense_causal_conv1d(x, weight))

    y, y_loop, g, g_loop, y_steps, y_unpacked = run(x, weight)
    assert rel_err(y, y_loop) < 1e-12 and rel_err(g, g_loop) < 1e-12
    assert rel_err(y_steps, y_unpacked) < 1e-12
    with pytest.raises(ValueError, match="weight"):
        dense_causal_conv1d(x, jnp.zeros((3, 4, 5)))
