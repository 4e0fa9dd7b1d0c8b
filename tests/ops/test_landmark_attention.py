"""Landmark attention: the gathered xla form equals the dense reference (float64, 1e-12
relative, values and gradients), for the full grouped softmax and for top-k retrieval, at
lengths that are not a multiple of the block, batch 1, grouped-query heads and packed rows;
the reference equals the paper's weights written by hand, and the limits (one block: causal
attention; top_k >= blocks: the full form; top_k = 0: the own block only)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops import attention, masked_attention
from jaxlm.ops.landmark_attention import (insert_landmarks, landmark_attention,
                                          landmark_slots, remove_landmarks)
from tests.helpers import normal, rel_err

TOL = 1e-12


def qkv(seed, batch, length, heads, kv_heads, d=4):
    return (normal(3 * seed, (batch, length, heads, d)),
            normal(3 * seed + 1, (batch, length, kv_heads, d)),
            normal(3 * seed + 2, (batch, length, kv_heads, d)))


def values_and_grads(fn, q, k, v):
    weights = normal(99, q.shape)
    return jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * weights),
                              argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("batch, length, heads, kv_heads, block_size, top_k, packed", [
    (2, 19, 4, 2, 3, None, False), (1, 17, 2, 2, 4, None, True), (2, 19, 4, 2, 2, 2, True),
    (1, 10, 2, 1, 2, 1, False)])
def test_xla_equals_reference(batch, length, heads, kv_heads, block_size, top_k, packed):
    q, k, v = qkv(length, batch, length, heads, kv_heads)
    seg = None
    if packed:  # three documents, the middle one restarting the block count
        seg = jnp.broadcast_to(jnp.repeat(jnp.array([4, 2, 4]), jnp.array(
            [5, length - 9, 4]), total_repeat_length=length), (batch, length))

    @jax.jit
    def both(q, k, v):
        return [values_and_grads(lambda q, k, v: landmark_attention(
            q, k, v, block_size=block_size, top_k=top_k, segment_ids=seg, impl=impl), q, k, v)
            for impl in ("reference", "xla")]

    (ref, g_ref), (fast, g_fast) = both(q, k, v)
    assert rel_err(fast, ref) < TOL
    for a, b in zip(g_fast, g_ref):
        assert rel_err(a, b) < TOL


def test_reference_is_the_papers_grouped_softmax():
    """block_size 2: positions 0, 1 | landmark 2 | 3, 4. Query 4 reads 3 and 4 directly, and
    block 0 through its landmark: a_4j = softmax_{0,1}(s)_j · softmax_{2,3,4}(s)_2."""
    q, k, _ = qkv(1, 1, 5, 1, 1)
    v = jnp.eye(5)[None, :, None, :]  # out_i = the weights a_i.
    a, fast = jax.jit(lambda q, k, v: [landmark_attention(
        q, k, v, block_size=2, scale=1.0, impl=impl)[0, 4, 0]
        for impl in ("reference", "xla")])(q, k, v)
    s = np.asarray(jnp.einsum("d,jd->j", q[0, 4, 0], k[0, :, 0]))
    main = np.exp(s[2:]) / np.exp(s[2:]).sum()
    block = np.exp(s[:2]) / np.exp(s[:2]).sum()
    np.testing.assert_allclose(a, np.concatenate([block * main[0], [0.0], main[1:]]),
                               rtol=1e-13)
    np.testing.assert_allclose(fast, a, rtol=1e-13)


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_limits(impl):
    own = (jnp.arange(11)[:, None] // 3 == jnp.arange(11)[None, :] // 3) & jnp.tri(11, dtype=bool)

    @jax.jit
    def run(q, k, v):
        lm = lambda **kw: landmark_attention(q, k, v, impl=impl, **kw)
        return (lm(block_size=2), lm(block_size=11), attention(q, k, v, impl="reference"),
                lm(block_size=2, top_k=4), lm(block_size=2, top_k=0),
                masked_attention(q, k, v, own[None], 4 ** -0.5), lm(block_size=2, top_k=1))

    full, one_block, causal, every, none, own_only, one = run(*qkv(5, 1, 11, 2, 1))
    assert rel_err(one_block, causal) < TOL and rel_err(every, full) < TOL
    assert rel_err(none, own_only) < TOL and rel_err(one, full) > 1e-3


def test_insert_and_remove_landmarks():
    tokens = jnp.arange(1, 10)[None]
    marked = insert_landmarks(tokens, 4, 0)
    np.testing.assert_array_equal(marked[0], [1, 2, 3, 4, 0, 5, 6, 7, 8, 0, 9])
    np.testing.assert_array_equal(marked == 0, landmark_slots(11, 4)[None])
    np.testing.assert_array_equal(remove_landmarks(marked, 4), tokens)
    x = normal(0, (2, 5, 3))
    embedded = insert_landmarks(x, 2, jnp.array([7.0, 8.0, 9.0]))
    assert embedded.shape == (2, 7, 3) and np.all(embedded[:, 2] == jnp.array([7.0, 8.0, 9.0]))
    np.testing.assert_array_equal(remove_landmarks(embedded, 2), x)


def test_bad_arguments_are_named():
    q, k, v = qkv(0, 1, 6, 2, 2)
    with pytest.raises(ValueError, match="block_size"):
        landmark_attention(q, k, v, block_size=0)
    with pytest.raises(ValueError, match="top_k"):
        landmark_attention(q, k, v, block_size=2, top_k=-1)
    with pytest.raises(ValueError, match="segment_ids"):
        landmark_attention(q, k, v, block_size=2, segment_ids=jnp.zeros((1, 5), int))
