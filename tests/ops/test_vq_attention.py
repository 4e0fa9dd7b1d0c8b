"""LongVQ's vector-quantised attention: the per-code cumulative form equals the dense softmax
(values and gradients, float64, 1e-12 absolute) at awkward shapes and packed rows; the step form
equals both; the quantiser's straight-through gradient and the codebook's moving average do
what "LongVQ" / "Transformer-VQ" define."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops import (codebook_ema_update, commitment_loss, nearest_code, quantize,
                       vq_attention, vq_attention_init_state, vq_attention_step)
from tests.helpers import normal, rel_err


def inputs(batch, length, window, seed=0, d_k=3, d_v=4, size=5):
    return (normal(seed, (batch, length, d_k)), normal(seed + 1, (batch, length, d_k)),
            normal(seed + 2, (batch, length, d_v)), normal(seed + 3, (size, d_k)),
            normal(seed + 4, (window,)))


@pytest.mark.parametrize("batch, length, window, packed", [
    (2, 13, 4, True), (1, 9, 0, False), (2, 7, 1, True), (1, 11, 16, False)])
def test_cumulative_equals_dense_values_and_gradients(batch, length, window, packed):
    q, k, v, codebook, bias = inputs(batch, length, window, seed=length)
    segment_ids = (jnp.asarray(np.sort(np.random.default_rng(length).integers(
        0, 3, (batch, length)), axis=1)) if packed else None)
    weights = normal(9, (batch, length, v.shape[-1]))

    def loss(q, k, v, bias, impl):
        out = vq_attention(q, k, v, codebook, bias, segment_ids=segment_ids, impl=impl)
        return jnp.sum(out * weights), out

    results = jax.jit(lambda *args: {
        impl: jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(*args, impl)
        for impl in ("reference", "xla")})(q, k, v, bias)
    (g_ref, out_ref), (g_fast, out_fast) = results["reference"], results["xla"]
    np.testing.assert_allclose(out_fast, out_ref, rtol=0, atol=1e-12)
    for a, b in zip(g_fast, g_ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    if not packed:  # the decoding step, token by token
        def step(state, inputs):
            o, state = vq_attention_step(state, *inputs, codebook, bias)
            return state, o

        state, outs = jax.lax.scan(step, vq_attention_init_state(batch, window, 5, 3, 4,
                                                                 jnp.float64),
                                   tuple(jnp.swapaxes(a, 0, 1) for a in (q, k, v)))
        np.testing.assert_allclose(jnp.swapaxes(outs, 0, 1), out_ref, rtol=0, atol=1e-12)
        assert state["sums"].shape == (batch, 5, 4)  # per-code sums: constant in length


def test_quantizer_straight_through_and_commitment():
    k, codebook = normal(0, (4, 6, 3)), normal(1, (5, 3))
    k_hat, codes = quantize(k, codebook)
    brute = np.argmin(((np.asarray(k)[..., None, :] - np.asarray(codebook)) ** 2).sum(-1), -1)
    assert (np.asarray(codes) == brute).all() and (nearest_code(k, codebook) == codes).all()
    np.testing.assert_allclose(k_hat, codebook[codes], atol=1e-15)
    w = normal(2, k.shape)
    np.testing.assert_allclose(jax.grad(lambda k: jnp.sum(quantize(k, codebook)[0] * w))(k), w)
    expected = np.mean(((np.asarray(k) - np.asarray(codebook)[brute]) ** 2).sum(-1))
    assert abs(commitment_loss(k, codebook) - expected) < 1e-12
    np.testing.assert_allclose(jax.grad(commitment_loss)(k, codebook),
                               2 * (k - codebook[codes]) / (4 * 6), atol=1e-12)


def test_codebook_moving_average():
    """Keys near two codewords pull them toward the keys' means; an unused code decays; a
    decay near 0 puts each used code at the mean of its keys."""
    codebook = jnp.array([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]])
    keys = jnp.array([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    counts, sums = jnp.ones(3), codebook
    counts, sums, new = codebook_ema_update(counts, sums, keys, decay=0.5)
    np.testing.assert_allclose(counts, [0.5 + 1.0, 0.5 + 0.5, 0.5])
    np.testing.assert_allclose(sums[0], 0.5 * codebook[0] + 0.5 * (keys[0] + keys[1]))
    assert jnp.linalg.norm(new[1] - keys[2]) < jnp.linalg.norm(codebook[1] - keys[2])
    _, _, fast = codebook_ema_update(jnp.ones(3), codebook, keys, decay=1e-9, eps=0.0)
    np.testing.assert_allclose(fast[:2], [[0.5, 0.5], [9.0, 9.0]], atol=1e-6)
    with pytest.raises(ValueError, match="decay"):
        codebook_ema_update(counts, sums, keys, decay=1.0)


def test_bad_input():
    q, k, v, codebook, bias = inputs(1, 5, 2)
    with pytest.raises(ValueError, match="codebook"):
        vq_attention(q, k, v, codebook[:, :2], bias)
    with pytest.raises(ValueError, match="k"):
        vq_attention(q, k[:, :3], v, codebook, bias)
