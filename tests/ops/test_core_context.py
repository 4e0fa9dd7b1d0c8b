"""Core Context Aware attention (causal): the blockwise form equals the dense [length, length]
probability matrix (values and gradients, float64, relative error < 1e-10) at lengths that are
not multiples of the group or window, batch 1, grouped-query heads and packed rows; the core
token is the group's tokens weighted by the attention of its last token; without complete
groups it is sliding-window attention; the step loop equals the parallel form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops import (attention, core_context_attention, core_context_state,
                       core_context_step)
from tests.helpers import normal, rel_err

TOL = 1e-10


@pytest.mark.parametrize("batch, length, group, window, kv_heads, packed", [
    (2, 19, 4, 3, 1, True),   # window < group: some of a query's own group is unread
    (1, 13, 3, 5, 2, False),
])
def test_blockwise_equals_reference_with_gradients(batch, length, group, window, kv_heads,
                                                   packed):
    q = normal(0, (batch, length, 2, 3))
    k = normal(1, (batch, length, kv_heads, 3))
    v = normal(2, (batch, length, kv_heads, 2))
    weights = normal(3, (batch, length, 2, 2))
    seg = None
    if packed:
        seg = jnp.array([[0] * 7 + [1] * 12, [4] * 2 + [3] * 9 + [4] * 8][:batch])

    @jax.jit
    def forms(q, k, v):
        def loss(q, k, v, impl):
            out = core_context_attention(q, k, v, group_size=group, window=window,
                                         segment_ids=seg, impl=impl)
            return jnp.sum(out * weights), out
        return {impl: jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, impl)
                for impl in ("reference", "xla")}

    out = forms(q, k, v)
    (g_ref, ref), (g_fast, fast) = out["reference"], out["xla"]
    assert rel_err(fast, ref) < TOL
    for a, b in zip(g_fast, g_ref):
        assert rel_err(a, b) < TOL


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_core_token_by_hand(impl):
    """g = 2, w = 1, length 3: query 2 reads itself and the core token of group {0, 1}, whose
    significance is the attention of token 1's query to keys 0 and 1."""
    q, k, v = normal(4, (1, 3, 1, 2)), normal(5, (1, 3, 1, 2)), normal(6, (1, 3, 1, 2))
    out = core_context_attention(q, k, v, group_size=2, window=1, scale=1.0, impl=impl)
    a = jax.nn.softmax(k[0, :2, 0] @ q[0, 1, 0])
    k_core, v_core = a @ k[0, :2, 0], a @ v[0, :2, 0]
    p = jax.nn.softmax(jnp.stack([q[0, 2, 0] @ k_core, q[0, 2, 0] @ k[0, 2, 0]]))
    np.testing.assert_allclose(out[0, 2, 0], p[0] * v_core + p[1] * v[0, 2, 0], rtol=1e-12)
    np.testing.assert_allclose(out[0, :2, 0], v[0, :2, 0], rtol=1e-12)  # window 1: itself


def test_without_complete_groups_it_is_window_attention():
    q, k, v = (normal(i, (2, 9, 2, 3)) for i in (7, 8, 9))
    window = attention(q, k, v, causal=True, window=4, impl="reference")
    out = core_context_attention(q, k, v, group_size=10, window=4, impl="xla")
    assert rel_err(out, window) < TOL


def test_step_loop_equals_parallel():
    length, group, window = 12, 3, 2
    q = normal(10, (2, length, 2, 4))
    k, v = normal(11, (2, length, 1, 4)), normal(12, (2, length, 1, 2))
    parallel = core_context_attention(q, k, v, group_size=group, window=window, impl="xla")
    state = core_context_state(2, 2, 1, 4, 2, group_size=group, window=window,
                               max_length=length, dtype=jnp.float64)

    def body(state, x):
        out, state = core_context_step(*x, state, group_size=group, window=window)
        return state, out

    _, ys = jax.jit(lambda s, xs: jax.lax.scan(body, s, xs))(
        state, tuple(jnp.swapaxes(x, 0, 1) for x in (q, k, v)))
    assert rel_err(jnp.swapaxes(ys, 0, 1), parallel) < TOL


def test_bad_arguments_are_named():
    x = jnp.zeros((1, 4, 1, 2))
    with pytest.raises(ValueError, match="group_size must be a positive integer"):
        core_context_attention(x, x, x, group_size=0, window=2)
    with pytest.raises(ValueError, match="window must be a positive integer"):
        core_context_attention(x, x, x, group_size=2, window=None)
