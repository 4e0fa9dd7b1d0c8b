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
from tests.helpers import assert_forms_agree, forms_and_grads, normal, rel_err
from tests.ops.test_combiner import PACKED, scan_steps

TOL = 1e-10
cca = jax.jit(core_context_attention,
              static_argnames=("group_size", "window", "scale", "impl"))


@pytest.mark.parametrize("batch, length, group, window, kv_heads, packed", [
    (2, 19, 4, 3, 1, True),   # window < group: some of a query's own group is unread
    (1, 13, 3, 5, 2, False),
])
def test_blockwise_equals_reference_with_gradients(batch, length, group, window, kv_heads,
                                                   packed):
    floats = {"q": normal(0, (batch, length, 2, 3)), "k": normal(1, (batch, length, kv_heads, 3)),
              "v": normal(2, (batch, length, kv_heads, 2))}
    seg = PACKED[:batch] if packed else None

    def op(x, impl):
        return core_context_attention(x["q"], x["k"], x["v"], group_size=group, window=window,
                                      segment_ids=seg, impl=impl), jnp.zeros(())

    assert_forms_agree(forms_and_grads(op, floats, normal(3, (batch, length, 2, 2))), TOL)


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_core_token_by_hand(impl):
    """g = 2, w = 1, length 3: query 2 reads itself and the core token of group {0, 1}, whose
    significance is the attention of token 1's query to keys 0 and 1."""
    q, k, v = normal(4, (1, 3, 1, 2)), normal(5, (1, 3, 1, 2)), normal(6, (1, 3, 1, 2))
    out = cca(q, k, v, group_size=2, window=1, scale=1.0, impl=impl)
    q, k, v = (np.asarray(x[0, :, 0]) for x in (q, k, v))
    a = np.exp(k[:2] @ q[1]) / np.exp(k[:2] @ q[1]).sum()
    k_core, v_core = a @ k[:2], a @ v[:2]
    logits = np.array([q[2] @ k_core, q[2] @ k[2]])
    p = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(out[0, 2, 0], p[0] * v_core + p[1] * v[2], rtol=1e-12)
    np.testing.assert_allclose(out[0, :2, 0], v[:2], rtol=1e-12)  # window 1: itself


def test_without_complete_groups_it_is_window_attention():
    q, k, v = (normal(i, (2, 9, 2, 3)) for i in (7, 8, 9))
    window = jax.jit(lambda q, k, v: attention(q, k, v, window=4, impl="reference"))(q, k, v)
    out = cca(q, k, v, group_size=10, window=4, impl="xla")
    assert rel_err(out, window) < TOL


def test_step_loop_equals_parallel():
    length, group, window = 12, 3, 2
    q = normal(10, (2, length, 2, 4))
    k, v = normal(11, (2, length, 1, 4)), normal(12, (2, length, 1, 2))
    parallel = cca(q, k, v, group_size=group, window=window, impl="xla")
    state = core_context_state(2, 2, 1, 4, 2, group_size=group, window=window,
                               max_length=length, dtype=jnp.float64)

    steps = scan_steps(lambda *x: core_context_step(*x, group_size=group, window=window), state,
                       q, k, v)
    assert rel_err(steps, parallel) < TOL


def test_bad_arguments_are_named():
    x = jnp.zeros((1, 4, 1, 2))
    with pytest.raises(ValueError, match="group_size must be a positive integer"):
        core_context_attention(x, x, x, group_size=0, window=2)
    with pytest.raises(ValueError, match="window must be a positive integer"):
        core_context_attention(x, x, x, group_size=2, window=None)
