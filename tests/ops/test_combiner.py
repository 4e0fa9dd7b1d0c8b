"""Combiner attention (Combiner-Fixed, causal): the blockwise form equals the dense
[length, length] probability matrix built from the factorisation (values and gradients,
float64, relative error < 1e-10) at lengths that are not multiples of the block, batch 1,
grouped-query heads and packed rows; the probabilities cover the whole causal prefix of the
document and sum to 1; it is full attention where the factorisation is exact; the step loop
equals the parallel form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops import attention, combiner_attention, combiner_state, combiner_step
from tests.helpers import assert_forms_agree, forms_and_grads, normal, rel_err

TOL = 1e-10
combiner = jax.jit(combiner_attention,
                   static_argnames=("block_size", "pooling", "scale", "impl"))
full_attention = jax.jit(lambda q, k, v: attention(q, k, v, causal=True, impl="reference"))
# documents of 7 and 12 tokens; of 2, 9 and 8 (an id that comes back starts a new one)
PACKED = jnp.array([[0] * 7 + [1] * 12, [4] * 2 + [3] * 9 + [4] * 8])


def scan_steps(step, state, *xs):
    """A ``lax.scan`` of ``step(*x_t, state) -> (out_t, state)`` over axis 1 of xs."""
    def body(state, x):
        out, state = step(*x, state)
        return state, out

    _, ys = jax.jit(lambda s, xs: jax.lax.scan(body, s, xs))(
        state, tuple(jnp.swapaxes(x, 0, 1) for x in xs))
    return jnp.swapaxes(ys, 0, 1)


@pytest.mark.parametrize("batch, length, block, heads, kv_heads, pooling, packed", [
    (2, 19, 4, 2, 1, "mean", True),
    (1, 13, 5, 2, 2, "max", False),
])
def test_blockwise_equals_reference_with_gradients(batch, length, block, heads, kv_heads,
                                                   pooling, packed):
    floats = {"q": normal(0, (batch, length, heads, 3)),
              "k": normal(1, (batch, length, kv_heads, 3)),
              "v": normal(2, (batch, length, kv_heads, 2))}
    seg = PACKED[:batch] if packed else None

    def op(x, impl):
        return combiner_attention(x["q"], x["k"], x["v"], block_size=block, pooling=pooling,
                                  segment_ids=seg, impl=impl), jnp.zeros(())

    assert_forms_agree(forms_and_grads(op, floats, normal(3, (batch, length, heads, 2))), TOL)


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_probabilities_cover_the_causal_prefix_of_the_document(impl):
    """v = one-hot positions: o_t is row t of P. Every key j <= t of t's document gets a
    positive probability, no other key any, and each row sums to 1."""
    length = 11
    q, k = normal(4, (1, length, 1, 3)), normal(5, (1, length, 1, 3))
    v = jnp.eye(length)[None, :, None, :]
    seg = jnp.array([[0] * 9 + [1] * 2])
    probs = combiner(q, k, v, block_size=3, segment_ids=seg, impl=impl)[0, :, 0]
    doc = np.asarray(seg[0])
    allowed = np.tril(np.ones((length, length), bool)) & (doc[:, None] == doc[None, :])
    assert np.all(np.asarray(probs)[allowed] > 0)
    assert np.all(np.asarray(probs)[~allowed] == 0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)


def test_equal_keys_in_each_block_give_full_attention():
    """When a block's keys are equal its share exp(q·k̄ + log B) is its exact log-sum-exp and
    its weights are uniform, so Combiner is full causal attention."""
    length, block = 12, 4
    k = jnp.repeat(normal(6, (2, length // block, 2, 3)), block, axis=1)
    q, v = normal(7, (2, length, 2, 3)), normal(8, (2, length, 2, 3))
    full = full_attention(q, k, v)
    for impl in ("reference", "xla"):
        assert rel_err(combiner(q, k, v, block_size=block, impl=impl), full) < TOL


def test_one_block_is_full_attention():
    q, k, v = (normal(i, (1, 6, 2, 3)) for i in (9, 10, 11))
    out = combiner(q, k, v, block_size=8, impl="xla")
    assert rel_err(out, full_attention(q, k, v)) < TOL


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_step_loop_equals_parallel(pooling):
    length, block = 11, 3
    q = normal(12, (2, length, 2, 4))
    k, v = normal(13, (2, length, 1, 4)), normal(14, (2, length, 1, 2))
    parallel = combiner(q, k, v, block_size=block, pooling=pooling, impl="xla")
    state = combiner_state(2, 2, 1, 4, 2, block_size=block, max_length=length,
                           dtype=jnp.float64)

    steps = scan_steps(lambda *x: combiner_step(*x, pooling=pooling), state, q, k, v)
    assert rel_err(steps, parallel) < TOL


def test_bad_arguments_are_named():
    x = jnp.zeros((1, 4, 1, 2))
    with pytest.raises(ValueError, match="pooling='min'"):
        combiner_attention(x, x, x, block_size=2, pooling="min")
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        combiner_attention(x, x, x, block_size=0)
    with pytest.raises(ValueError, match=r"segment_ids must have shape \[batch, length\]"):
        combiner_attention(x, x, x, block_size=2, segment_ids=jnp.zeros((1, 3), int))
