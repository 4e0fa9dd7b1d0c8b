"""Block-sparse attention and block selection: with every block chosen they equal dense causal
attention; with any mask the gathered form equals the materialized reference, values and
gradients (float64, 1e-12 relative: the same sums in another order); no selection ever
reads a future block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxlm.ops import attention
from jaxlm.ops.sparse_attention import (block_sparse_attention, lambda_attention, lambda_mask,
                                        select_blocks)
from tests.helpers import normal, rel_err

TOL = 1e-12


def qkv(seed, batch, length, heads, kv_heads, d=8):
    return (normal(3 * seed, (batch, length, heads, d)),
            normal(3 * seed + 1, (batch, length, kv_heads, d)),
            normal(3 * seed + 2, (batch, length, kv_heads, d)))


def values_and_grads(fn, q, k, v):
    weights = normal(99, q.shape)
    return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * weights),
                                      argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("batch, length, heads, kv_heads, block_size",
                         [(2, 37, 4, 2, 8), (1, 16, 2, 2, 4), (1, 5, 1, 1, 8)])
def test_every_block_equals_dense_attention(batch, length, heads, kv_heads, block_size):
    q, k, v = qkv(length, batch, length, heads, kv_heads)
    n = -(-length // block_size)
    dense = values_and_grads(lambda q, k, v: attention(q, k, v, impl="reference"), q, k, v)
    for method in ("mean", "max", "hierarchical"):
        mask = select_blocks(q, k, block_size=block_size, top_k=n, method=method, branch=2)
        assert bool(jnp.all(mask == jnp.tril(jnp.ones((n, n), bool))))
        for impl in ("reference", "xla"):
            sparse = values_and_grads(lambda q, k, v: block_sparse_attention(
                q, k, v, mask, block_size=block_size, impl=impl), q, k, v)
            assert rel_err(sparse, dense) < TOL, (method, impl)


@pytest.mark.parametrize("length, block_size, causal", [(29, 4, True), (32, 8, False)])
def test_gathered_form_equals_reference_for_any_mask(length, block_size, causal):
    q, k, v = qkv(3, 2, length, 4, 1)
    n = -(-length // block_size)
    mask = jnp.asarray(np.random.default_rng(4).random((2, 4, n, n)) < 0.4)
    mask = mask.at[:, :, 0, 0].set(False)  # a query block that reads nothing gets 0
    most = int(jnp.max(jnp.sum(mask, axis=-1)))
    ref = values_and_grads(lambda q, k, v: block_sparse_attention(
        q, k, v, mask, block_size=block_size, causal=causal, impl="reference"), q, k, v)
    xla = values_and_grads(lambda q, k, v: block_sparse_attention(
        q, k, v, mask, block_size=block_size, causal=causal, max_blocks=most, impl="xla"), q, k, v)
    assert rel_err(xla, ref) < TOL
    kernel = values_and_grads(lambda q, k, v: block_sparse_attention(  # Pallas, interpreted
        q, k, v, mask, block_size=block_size, causal=causal, impl="pallas_interpret"), q, k, v)
    assert rel_err(kernel, ref) < TOL
    if causal:  # query block 0 may read only key block 0, which the mask rules out
        out = block_sparse_attention(q, k, v, mask, block_size=block_size)
        assert float(jnp.abs(out[:, :block_size]).max()) == 0.0


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), length=st.integers(1, 40), block_size=st.integers(1, 8),
       top_k=st.integers(0, 4), local=st.integers(0, 2), sink=st.integers(0, 2),
       method=st.sampled_from(["mean", "max", "hierarchical"]), branch=st.integers(1, 3))
def test_no_selected_block_is_in_the_future(seed, length, block_size, top_k, local, sink,
                                            method, branch):
    q, k, _ = qkv(seed, 1, length, 2, 1)
    mask = np.asarray(select_blocks(q, k, block_size=block_size, top_k=top_k,
                                    local_blocks=local, sink_blocks=sink, method=method,
                                    branch=branch))
    n = mask.shape[-1]
    assert not np.any(mask & ~np.tril(np.ones((n, n), bool)))
    assert mask.sum(-1).max() <= top_k + local + sink
    if local:
        assert np.all(mask[..., np.arange(n), np.arange(n)])


def test_top_k_picks_the_best_scoring_blocks():
    """A key block made to match the last query block is chosen over the others."""
    q, k, _ = qkv(5, 1, 32, 1, 1)
    target = q[:, 24:].mean(axis=1, keepdims=True)
    k = k.at[:, 8:12].set(10 * target)  # block 2 of 8 (block size 4)
    mask = select_blocks(q, k, block_size=4, top_k=1, local_blocks=1, sink_blocks=0)
    assert np.flatnonzero(np.asarray(mask[0, 0, 6])).tolist() == [2, 6]


@pytest.mark.parametrize("window, sink_tokens, block_size", [(5, 3, 4), (9, 0, 8), (1, 1, 4)])
def test_lambda_attention(window, sink_tokens, block_size):
    mask = np.asarray(lambda_mask(12, window=3, sink_tokens=2))
    i, j = np.indices((12, 12))
    assert np.array_equal(mask, (j <= i) & ((j < 2) | (i - j < 3)))
    q, k, v = qkv(6, 2, 33, 2, 1)
    ref, xla = (values_and_grads(lambda q, k, v: lambda_attention(
        q, k, v, window=window, sink_tokens=sink_tokens, block_size=block_size, impl=impl),
        q, k, v) for impl in ("reference", "xla"))
    assert rel_err(xla, ref) < TOL


def test_bad_arguments_are_named():
    q, k, v = qkv(7, 1, 10, 2, 1)
    with pytest.raises(ValueError, match="block_mask must have shape"):
        block_sparse_attention(q, k, v, jnp.ones((1, 1, 2, 2), bool), block_size=4)
    with pytest.raises(ValueError, match="method='median' is unknown"):
        select_blocks(q, k, block_size=4, top_k=1, method="median")
    with pytest.raises(ValueError, match="top_k must be a non-negative integer"):
        select_blocks(q, k, block_size=4, top_k=-1)
    with pytest.raises(ValueError, match="kv_heads=2 must divide heads=3"):
        block_sparse_attention(q[:, :, :1].repeat(3, 2), k.repeat(2, 2), v.repeat(2, 2),
                               jnp.ones((1, 1, 3, 3), bool), block_size=4)
