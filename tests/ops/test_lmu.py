"""The LMU's LegT memory: the FFT convolution equals the sequential scan (values and gradients,
float64, 1e-10 relative), and the discretised memory does what the LMU paper says it does:
its Legendre coefficients decode the input's window [t − θ, t]."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import eval_sh_legendre

from jaxlm.ops import hippo_legt, legt_zoh, lmu_memory
from tests.helpers import normal, rel_err

TOL = 1e-10


@pytest.mark.parametrize("batch, length", [(2, 37), (1, 5)])
def test_fft_form_equals_scan(batch, length):
    a_bar, b_bar = (jnp.asarray(x) for x in legt_zoh(6, 9.0))
    u = normal(length, (batch, length, 3))
    weights = normal(1, (batch, length, 3, 6))

    @jax.jit
    def forms(u):
        loss = lambda u, impl: jnp.sum(lmu_memory(u, a_bar, b_bar, impl=impl) * weights)
        return {impl: (lmu_memory(u, a_bar, b_bar, impl=impl), jax.grad(loss)(u, impl))
                for impl in ("reference", "xla")}

    out = forms(u)
    assert rel_err(out["xla"], out["reference"]) < TOL


def test_memory_decodes_the_delayed_input():
    """u(t − rθ) ≈ Σ_i m_i(t) P̃_i(r) (shifted Legendre) for a slow sine; observed error
    0.014-0.026 at order 12, θ = 50."""
    order, theta = 12, 50.0
    t = np.arange(400)
    u = jnp.asarray(np.sin(2 * np.pi * t / 120.0))[None, :, None]
    memory = np.asarray(lmu_memory(u, *(jnp.asarray(x) for x in legt_zoh(order, theta)),
                                   impl="reference"))[0, :, 0]
    late = t[200:]
    for r in (0.0, 0.5, 1.0):
        decoded = memory[late] @ np.array([eval_sh_legendre(n, r) for n in range(order)])
        assert np.abs(decoded - np.sin(2 * np.pi * (late - r * theta) / 120.0)).max() < 0.05


def test_legt_matrices_and_errors():
    A, B = hippo_legt(3)
    assert (A == [[-1, -1, -1], [3, -3, -3], [-5, 5, -5]]).all() and (B == [1, -3, 5]).all()
    with pytest.raises(ValueError, match="theta must be > 0"):
        hippo_legt(3, 0.0)
    with pytest.raises(ValueError, match="b_bar must have shape"):
        lmu_memory(jnp.zeros((1, 4, 2)), jnp.eye(3), jnp.zeros(2))
