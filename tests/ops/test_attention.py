"""attention: the blockwise xla form equals the materialized reference, which equals a plain
per-query loop. Float64, so the tolerance (1e-10 relative) only absorbs summation order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops import attention
from tests.helpers import rel_err

TOL = 1e-10


def loop_attention(q, k, v, *, causal, window, segment_ids, bias=None):
    """The obviously-correct definition: one query at a time, in numpy float64 (``bias``
    [batch, length, length] added to the scores)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, length, heads, d = q.shape
    groups = heads // k.shape[2]
    seg = np.zeros((batch, length)) if segment_ids is None else np.asarray(segment_ids)
    out = np.zeros((batch, length, heads, v.shape[-1]))
    for b in range(batch):
        for i in range(length):
            for h in range(heads):
                keys = [j for j in range(length)
                        if (not causal or j <= i) and (window is None or abs(i - j) < window)
                        and seg[b, i] == seg[b, j]]
                s = np.array([q[b, i, h] @ k[b, j, h // groups] for j in keys]) / np.sqrt(d)
                if bias is not None:
                    s = s + np.asarray(bias)[b, i, keys]
                p = np.exp(s - s.max())
                out[b, i, h] = (p / p.sum()) @ v[b, keys, h // groups]
    return out


def random_inputs(key, batch, length, heads, kv_heads, d, packed):
    kq, kk, kv, ks = jax.random.split(key, 4)
    q = jax.random.normal(kq, (batch, length, heads, d), jnp.float64)
    k = jax.random.normal(kk, (batch, length, kv_heads, d), jnp.float64)
    v = jax.random.normal(kv, (batch, length, kv_heads, d + 2), jnp.float64)
    seg = (jnp.cumsum(jax.random.bernoulli(ks, 0.15, (batch, length)), axis=1)
           if packed else None)
    return q, k, v, seg


def test_score_bias_matches_the_loop_and_needs_the_reference_form():
    q, k, v, seg = random_inputs(jax.random.key(3), 2, 11, 2, 1, 4, True)
    bias = 3 * jax.random.normal(jax.random.key(4), (2, 11, 11), jnp.float64)
    out = attention(q, k, v, window=6, segment_ids=seg, bias=bias)  # "auto": the reference
    expected = loop_attention(q, k, v, causal=True, window=6, segment_ids=seg, bias=bias)
    assert rel_err(out, expected) < TOL
    with pytest.raises(ValueError, match="bias needs impl='reference'"):
        attention(q, k, v, bias=bias, impl="xla")
    with pytest.raises(ValueError, match="bias"):
        attention(q, k, v, bias=bias[:, :5])


# (batch, length, heads, kv_heads, head_dim, causal, window, packed, block_size)
CASES = [
    (2, 37, 4, 2, 8, True, None, False, 8),   # GQA, length not a multiple of the block
    (1, 50, 2, 1, 4, True, 5, True, 16),      # batch 1, MQA, window, packed documents
    (2, 33, 3, 3, 8, False, 7, True, 8),      # bidirectional window
    (1, 9, 2, 2, 4, True, 3, False, 4),       # window smaller than a block
]


@pytest.mark.parametrize("case", CASES)
def test_forms_match_loop_and_each_other(case):
    batch, length, heads, kv_heads, d, causal, window, packed, block = case
    q, k, v, seg = random_inputs(jax.random.key(length), batch, length, heads, kv_heads, d,
                                 packed)
    kw = dict(causal=causal, window=window, segment_ids=seg)
    weights = jax.random.normal(jax.random.key(1), (batch, length, heads, d + 2), jnp.float64)

    @jax.jit
    def value_and_grads(q, k, v):
        def run(impl):
            def loss(q, k, v):
                out = attention(q, k, v, impl=impl, block_size=block, **kw)
                return jnp.sum(out * weights), out
            return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return run("reference"), run("xla"), run("pallas_interpret")

    (g_ref, ref), *fast = value_and_grads(q, k, v)
    assert rel_err(ref, loop_attention(q, k, v, **kw)) < TOL
    for g_fast, out in fast:  # the blockwise xla form, then the Pallas kernel (interpreted)
        assert rel_err(out, ref) < TOL
        for a, b in zip(g_fast, g_ref):
            assert rel_err(a, b) < TOL


@pytest.mark.parametrize("impl", ["xla", "pallas_interpret"])
def test_fast_forms_in_float32_and_bfloat16(impl):
    """Lower precision: float32 within 1e-5 (rounding of ~length-term sums); bfloat16 inputs
    within 2e-2 (8-bit mantissa on the inputs, the probabilities fed to the value product and
    the output; accumulation is float32). Matrix products in full float32 (GPUs default to
    TF32)."""
    q, k, v, _ = random_inputs(jax.random.key(3), 2, 70, 4, 2, 16, False)
    ref = attention(q, k, v, impl="reference")
    for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
        with jax.default_matmul_precision("highest"):
            out = attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), impl=impl,
                            block_size=16)
        assert out.dtype == dtype
        assert rel_err(out.astype(jnp.float64), ref) < tol


def test_auto_picks_a_form_that_agrees():
    q, k, v, _ = random_inputs(jax.random.key(4), 1, 20, 2, 2, 4, False)
    assert rel_err(attention(q, k, v), attention(q, k, v, impl="reference")) < TOL


@pytest.mark.parametrize("kwargs, match", [
    (dict(window=0), "window must be a positive integer"),
    (dict(impl="fast"), "impl='fast' is not a known form"),
    (dict(impl="pallas"), "impl='pallas' cannot compile for backend 'cpu'; pass interpret"),
    (dict(block_size=0), "block_size must be a positive integer"),
])
def test_bad_arguments_are_named(kwargs, match):
    q, k, v, _ = random_inputs(jax.random.key(5), 1, 8, 2, 2, 4, False)
    with pytest.raises(ValueError, match=match):
        attention(q, k, v, **kwargs)


def test_bad_shapes_are_named():
    q, k, v, _ = random_inputs(jax.random.key(6), 1, 8, 4, 2, 4, False)
    with pytest.raises(ValueError, match=r"q must have shape \[batch, length, heads, head_dim\]"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="kv_heads=3"):
        attention(q, jnp.zeros((1, 8, 3, 4)), jnp.zeros((1, 8, 3, 4)))
    with pytest.raises(ValueError, match="k must have shape"):
        attention(q, k[:, :5], v)
    with pytest.raises(ValueError, match="segment_ids must have shape"):
        attention(q, k, v, segment_ids=jnp.zeros((1, 7), jnp.int32))
