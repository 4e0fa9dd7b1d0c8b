"""Diagonal SSM (S4D): the Vandermonde kernel equals unrolling the recurrence, the FFT
convolution equals a direct sum, and the xla forms (FFT, associative scan) equal the
sequential reference, values and gradients, in float64 (tolerance 1e-9 relative: FFTs round
at ~1e-15 per element, summed over the length)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops.ssm import (diagonal_ssm, diagonal_ssm_step, fft_causal_conv, s4d_init,
                           ssm_kernel, zoh)
from tests.helpers import assert_forms_agree, forms_and_grads, normal, rel_err

TOL = 1e-9


def params(key, channels, d_state, kind="lin"):
    log_re, im = s4d_init(kind, channels, d_state)
    k1, k2 = jax.random.split(key)
    c = jax.random.normal(k1, (2, channels, d_state), jnp.float64)
    log_dt = jax.random.uniform(k2, (channels,), jnp.float64, jnp.log(1e-2), jnp.log(0.5))
    return dict(log_re=log_re.astype(jnp.float64), im=im.astype(jnp.float64), c=c,
                log_dt=log_dt)


def ssm_args(p):
    a = -jnp.exp(p["log_re"]) + 1j * p["im"]
    return jnp.exp(p["log_dt"]), a, jnp.ones_like(a), p["c"][0] + 1j * p["c"][1]


@pytest.mark.parametrize("kind", ["lin", "inv", "real"])
def test_kernel_equals_unrolled_recurrence(kind):
    p = params(jax.random.key(0), 3, 5, kind)
    dt, a, b, c = ssm_args(p)
    a_bar, b_bar = zoh(dt, a, b)
    kernel = ssm_kernel(a_bar, b_bar, c, 12)
    impulse = jnp.zeros((1, 12, 3), jnp.float64).at[:, 0].set(1.0)
    state = jnp.zeros((1, 3, 5), jnp.complex128)
    outputs = []
    for t in range(12):
        y, state = diagonal_ssm_step(state, impulse[:, t], dt, a, b, c)
        outputs.append(y[0])
    assert rel_err(kernel, jnp.stack(outputs)) < TOL


def test_fft_conv_equals_direct_sum():
    u = jax.random.normal(jax.random.key(1), (2, 13, 3), jnp.float64)
    kernel = jax.random.normal(jax.random.key(2), (13, 3), jnp.float64)
    direct = np.zeros(u.shape)
    for t in range(13):
        for s in range(t + 1):
            direct[:, t] += np.asarray(kernel[t - s]) * np.asarray(u[:, s])
    assert rel_err(fft_causal_conv(u, kernel), direct) < TOL


@pytest.mark.parametrize("packed, discretization", [(False, "zoh"), (True, "zoh"),
                                                     (False, "bilinear")])
def test_forms_agree_with_gradients(packed, discretization):
    batch, length, channels, d_state = 2, 29, 3, 4
    p = params(jax.random.key(3), channels, d_state)
    u = jax.random.normal(jax.random.key(4), (batch, length, channels), jnp.float64)
    seg = (jnp.cumsum(jax.random.bernoulli(jax.random.key(5), 0.1, (batch, length)), axis=1)
           if packed else None)
    weights = jax.random.normal(jax.random.key(6), u.shape, jnp.float64)

    @jax.jit
    def run(p, u):
        def loss(p, u, impl):
            y = diagonal_ssm(u, *ssm_args(p), segment_ids=seg, discretization=discretization,
                             impl=impl)
            return jnp.sum(y * weights), y
        return {impl: jax.grad(loss, argnums=(0, 1), has_aux=True)(p, u, impl)
                for impl in ("reference", "xla")}

    results = run(p, u)
    (g_ref, y_ref), (g_xla, y_xla) = results["reference"], results["xla"]
    assert rel_err(y_xla, y_ref) < TOL
    assert rel_err(g_xla, g_ref) < TOL


def test_state_passing_equals_whole():
    p = params(jax.random.key(7), 2, 3)
    u = jax.random.normal(jax.random.key(8), (1, 20, 2), jnp.float64)
    whole = diagonal_ssm(u, *ssm_args(p))
    y1, s1 = diagonal_ssm(u[:, :9], *ssm_args(p), return_final_state=True)
    y2 = diagonal_ssm(u[:, 9:], *ssm_args(p), initial_state=s1)
    assert rel_err(jnp.concatenate([y1, y2], 1), whole) < TOL


def test_bad_arguments_are_named():
    dt, a, b, c = ssm_args(params(jax.random.key(9), 3, 4))
    u = jnp.ones((1, 5, 3))
    with pytest.raises(ValueError, match=r"A must have shape \[channels, d_state\]"):
        diagonal_ssm(u, dt, a[:2], b, c)
    with pytest.raises(ValueError, match=r"dt must have shape \[channels\]"):
        diagonal_ssm(u, dt[:1], a, b, c)
    with pytest.raises(ValueError, match="discretization='euler' is unknown"):
        diagonal_ssm(u, dt, a, b, c, discretization="euler")
    with pytest.raises(ValueError, match="kind='hippo' is unknown"):
        s4d_init("hippo", 3, 4)


@pytest.mark.parametrize("discretization, real, tol", [("zoh", jnp.float32, 1e-5),
                                                      ("bilinear", jnp.float64, 1e-12)])
def test_extreme_steps_match_the_reference(discretization, real, tol):
    """ΔA from 0 (A = 0: B̄ = ΔB) through the bilinear zero ΔA = −2 (Ā = 0) to ΔA = −1e30
    (exp(ΔA) underflows): the FFT form equals the sequential reference, values and gradients,
    all finite. (A = 0 with Δ = 1e30 is left out: its true gradient, Δ²/2, overflows.)"""
    cplx = jnp.promote_types(real, jnp.complex64)
    dt = jnp.array([1e-3, 2.0, 90.0, 1e6, 1e30], real)
    a = jnp.array([[-1, -0.5 + 3j, 0]] * 4 + [[-1, -0.5 + 3j, -2]])
    floats = {"dt": dt, "a_re": a.real.astype(real), "a_im": a.imag.astype(real),
              "u": normal(0, (1, 7, 5), real)}
    c = (normal(1, (5, 3)) + 1j * normal(2, (5, 3))).astype(cplx)

    def op(f, impl):
        a = (f["a_re"] + 1j * f["a_im"]).astype(cplx)
        return diagonal_ssm(f["u"], f["dt"], a, jnp.ones_like(a), c, impl=impl,
                            discretization=discretization), jnp.zeros((), real)

    results = forms_and_grads(op, floats, normal(3, (1, 7, 5), real))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(results))
    assert_forms_agree(results, tol)


def test_large_step_gives_the_limit():
    """dt·|Re A| = 90 (exp(ΔA) = 0 in float32): x_t = B̄ u_t with B̄ = −B/A = 1, so y = 2u."""
    u = jnp.ones((1, 4, 1), jnp.float32)
    for impl in ("reference", "xla"):
        y = diagonal_ssm(u, jnp.array([90.0], jnp.float32), jnp.array([[-1 + 0j]]),
                         jnp.array([[1 + 0j]]), jnp.array([[1 + 0j]]), impl=impl)
        np.testing.assert_allclose(y, 2 * u, rtol=1e-6)


def test_zoh_input_factor_near_zero():
    """B̄ = (exp(ΔA) − 1)/A · B is continuous through A = 0 (its limit ΔB) on both sides of
    the series' threshold."""
    dt = jnp.array([0.5, 0.5, 0.5])
    a = jnp.array([[0j], [-1e-9 + 1e-9j], [-1e-2 + 1e-2j]])
    _, b_bar = zoh(dt, a, jnp.ones_like(a))
    exact = np.expm1(0.5 * np.asarray(a)) / np.where(a == 0, 1, np.asarray(a))
    exact[0] = 0.5
    np.testing.assert_allclose(b_bar, exact, rtol=1e-15)
