"""PoNet's multi-granularity pooling: the linear forms equal the dense-mask reference (values
and gradients, float64, 1e-10 relative) in both variants, on packed rows at lengths that are
not multiples of the segment; the causal step loop equals the parallel form; and the pooling
does what the paper says (segment max, local max, mean-query attention pooling)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops import (multi_granularity_pooling, multi_granularity_pooling_state,
                       multi_granularity_pooling_step)
from tests.helpers import normal, rel_err

TOL = 1e-10
NAMES = ("q", "k", "v", "o", "s", "l")
pooling = jax.jit(multi_granularity_pooling,
                  static_argnames=("causal", "segment_size", "window", "impl"))


def inputs(seed, batch, length, heads=2, dim=3):
    return {n: normal(seed + i, (batch, length, heads, dim)) for i, n in enumerate(NAMES)}


@pytest.mark.parametrize("causal, window", [(True, 3), (False, 5)])
def test_linear_forms_equal_reference_with_gradients(causal, window):
    x = inputs(0, 2, 19)
    segment_ids = jnp.array([[0] * 7 + [1] * 12, [3] * 19])
    weights = normal(9, (2, 19, 2, 3))

    @jax.jit
    def forms(x):
        def loss(x, impl):
            out = multi_granularity_pooling(*(x[n] for n in NAMES), causal=causal,
                                            segment_size=4, window=window,
                                            segment_ids=segment_ids, impl=impl)
            return jnp.sum(out * weights), out
        return {impl: jax.grad(loss, has_aux=True)(x, impl) for impl in ("reference", "xla")}

    out = forms(x)
    (g_ref, ref), (g_fast, fast) = out["reference"], out["xla"]
    assert rel_err(fast, ref) < TOL
    for name in NAMES:
        assert rel_err(g_fast[name], g_ref[name]) < TOL, name


def test_step_loop_equals_parallel():
    x = inputs(1, 1, 11)
    parallel = pooling(*(x[n] for n in NAMES), segment_size=4, window=2)

    def body(state, xs):
        return multi_granularity_pooling_step(state, *xs, segment_size=4)[::-1]

    state = multi_granularity_pooling_state(1, 2, 3, window=2, dtype=jnp.float64)
    _, ys = jax.jit(lambda state, xs: jax.lax.scan(body, state, xs))(
        state, tuple(jnp.swapaxes(x[n], 0, 1) for n in NAMES))
    assert rel_err(jnp.swapaxes(ys, 0, 1), parallel) < TOL


def test_pooling_granularities_by_hand():
    """With H_O = 0 the output is the local max; with H_L = -inf-ish and H_O = 1 it is the
    global pooling plus the segment max."""
    length = 7
    x = inputs(2, 1, length, heads=1, dim=1)
    l = x["l"][0, :, 0, 0]
    zero = jnp.zeros_like(x["o"])
    local = pooling(x["q"], x["k"], x["v"], zero, x["s"], x["l"], window=3)
    expected = [max(l[max(0, t - 2):t + 1]) for t in range(length)]
    np.testing.assert_allclose(local[0, :, 0, 0], expected)
    both = pooling(x["q"], x["k"], x["v"], zero, x["s"], x["l"], window=3,
                                     causal=False)
    np.testing.assert_allclose(both[0, :, 0, 0],
                               [max(l[max(0, t - 1):t + 2]) for t in range(length)])
    # bidirectional global + segment pooling at the last token of a 7-token document
    ones, low = jnp.ones_like(x["o"]), jnp.full_like(x["l"], -1e9)
    out = pooling(x["q"], x["k"], x["v"], ones, x["s"], low, window=1,
                                    causal=False, segment_size=3)
    q, k, v, s = (np.asarray(x[n][0, :, 0, 0]) for n in ("q", "k", "v", "s"))
    w = np.exp(q.mean() * k)
    g = (w * v).sum() / w.sum()
    np.testing.assert_allclose(np.asarray(out[0, :, 0, 0]) + 1e9,
                               g + np.array([s[0:3].max()] * 3 + [s[3:6].max()] * 3 + [s[6]]),
                               rtol=1e-6)


def test_errors_name_the_argument():
    x = inputs(3, 1, 5)
    with pytest.raises(ValueError, match="window must be odd"):
        multi_granularity_pooling(*(x[n] for n in NAMES), causal=False, window=2)
    with pytest.raises(ValueError, match="segment_size must be a positive integer"):
        multi_granularity_pooling(*(x[n] for n in NAMES), segment_size=0)
    with pytest.raises(ValueError, match="o must have shape"):
        multi_granularity_pooling(x["q"], x["k"], x["v"], x["o"][:, :4], x["s"], x["l"])
