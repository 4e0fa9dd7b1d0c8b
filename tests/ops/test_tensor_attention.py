"""Tensor attention: the paper's Kronecker form (reference) equals an explicit loop over pairs of
keys, and the chunked form equals the reference, values and gradients (float64, 1e-10
relative), causal and not, on packed rows at a length that is not a multiple of the chunk; the
decoding step equals the parallel form."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops import tensor_attention, tensor_attention_step
from tests.helpers import normal, rel_err

TOL = 1e-10
NAMES = ("q", "k1", "k2", "v1", "v2")


def inputs(seed, batch, length, heads=2, dim=3, v_dim=4):
    return {n: normal(seed + i, (batch, length, heads, v_dim if n[0] == "v" else dim))
            for i, n in enumerate(NAMES)}


def loop_over_pairs(x, segment_ids, causal, scale):
    """out_i = Σ_{(j,k) allowed} exp(s_ijk) (v1_j ⊙ v2_k) / Σ exp(s_ijk), one pair at a time."""
    q, k1, k2, v1, v2 = (np.asarray(x[n]) for n in NAMES)
    batch, n, heads, _ = q.shape
    out = np.zeros(v1.shape)
    for b, i, h in itertools.product(range(batch), range(n), range(heads)):
        num, den = 0.0, 0.0
        for j, k in itertools.product(range(n), repeat=2):
            if causal and (j > i or k > i):
                continue
            if segment_ids is not None and not (segment_ids[b, j] == segment_ids[b, i]
                                                == segment_ids[b, k]):
                continue
            w = np.exp(scale * np.sum(q[b, i, h] * k1[b, j, h] * k2[b, k, h]))
            num, den = num + w * v1[b, j, h] * v2[b, k, h], den + w
        out[b, i, h] = num / den
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_reference_equals_a_loop_over_pairs(causal):
    x = inputs(0, 2, 6)
    segment_ids = np.array([[0, 0, 0, 1, 1, 1], [2] * 6])
    ref = jax.jit(lambda x: tensor_attention(*(x[n] for n in NAMES), causal=causal,
                                             segment_ids=segment_ids, impl="reference"))(x)
    assert rel_err(ref, loop_over_pairs(x, segment_ids, causal, 3 ** -0.5)) < TOL


@pytest.mark.parametrize("causal, batch", [(True, 2), (False, 1)])
def test_chunked_equals_reference_with_gradients(causal, batch):
    length = 11  # not a multiple of query_chunk=4
    x = inputs(1, batch, length)
    segment_ids = jnp.array([[0] * 4 + [1] * 7, [5] * 11])[:batch]
    weights = normal(9, (batch, length, 2, 4))

    @jax.jit
    def forms(x):
        def loss(x, impl):
            out = tensor_attention(*(x[n] for n in NAMES), causal=causal, impl=impl,
                                   segment_ids=segment_ids, query_chunk=4)
            return jnp.sum(out * weights), out
        return {impl: jax.grad(loss, has_aux=True)(x, impl) for impl in ("reference", "xla")}

    out = forms(x)
    (g_ref, ref), (g_fast, fast) = out["reference"], out["xla"]
    assert rel_err(fast, ref) < TOL
    for name in NAMES:
        assert rel_err(g_fast[name], g_ref[name]) < TOL, name


def test_step_equals_parallel():
    x = inputs(2, 1, 7)
    valid = jnp.arange(7)[None, :] <= jnp.arange(7)[:, None]

    @jax.jit
    def both(x):
        step = jax.vmap(lambda q_t, valid_t: tensor_attention_step(
            q_t, x["k1"], x["k2"], x["v1"], x["v2"], valid_t[None]), in_axes=(1, 0), out_axes=1)
        return tensor_attention(*(x[n] for n in NAMES), impl="reference"), step(x["q"], valid)

    parallel, steps = both(x)
    assert rel_err(steps, parallel) < TOL


def test_bad_shapes_name_the_argument():
    x = inputs(3, 1, 5)
    with pytest.raises(ValueError, match="k2"):
        tensor_attention(x["q"], x["k1"], x["k2"][:, :4], x["v1"], x["v2"])
    with pytest.raises(ValueError, match="query_chunk"):
        tensor_attention(*(x[n] for n in NAMES), query_chunk=0)
