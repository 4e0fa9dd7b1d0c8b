"""S4 and LSSL: HiPPO-LegS and its NPLR form, bilinear discretization, the Cauchy and Krylov
kernels against unrolling the recurrence, and the xla forms against the sequential reference,
values and gradients. Float64 tolerance 1e-9 relative: the kernels go through an LU solve,
log₂(L) matrix squarings and FFTs, each rounding at ~1e-15 and summed over the length."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops.hippo import hippo_legs, nplr_legs
from jaxlm.ops.s4 import (bilinear_lower, bilinear_nplr, dense_ssm,
                          dense_ssm_step, krylov_kernel, s4_discrete, s4_kernel, s4_ssm)
from jaxlm.ops.ssm import bilinear
from tests.helpers import assert_forms_agree, forms_and_grads, rel_err

TOL = 1e-9


def test_hippo_legs_entries():
    A, B = hippo_legs(3)
    r = np.sqrt([1.0, 3.0, 5.0])
    expected = np.array([[-1, 0, 0], [-r[1] * r[0], -2, 0], [-r[2] * r[0], -r[2] * r[1], -3]])
    np.testing.assert_allclose(A, expected, rtol=1e-15)
    np.testing.assert_allclose(B, r, rtol=1e-15)


@pytest.mark.parametrize("d_state", [2, 8, 64])
def test_nplr_reconstructs_legs(d_state):
    Lambda, P, B, V = nplr_legs(d_state)
    V_full = np.concatenate([V, V.conj()], axis=1)
    assert np.abs(V_full.conj().T @ V_full - np.eye(d_state)).max() < 1e-12
    np.testing.assert_allclose(Lambda.real, -0.5)
    A, B_legs = hippo_legs(d_state)
    p = np.sqrt(np.arange(d_state) + 0.5)
    lam = np.concatenate([Lambda, Lambda.conj()])
    rebuilt = V_full @ np.diag(lam) @ V_full.conj().T - np.outer(p, p)
    assert np.abs(rebuilt - A).max() < 1e-10 * d_state
    np.testing.assert_allclose(V_full @ np.concatenate([B, B.conj()]), B_legs, atol=1e-10)


def bilinear_dense(dt, A, B):
    """The obvious bilinear discretization, by NumPy's float64 solve."""
    A, B = np.asarray(A), np.asarray(B)
    eye = np.eye(A.shape[-1])
    half = np.asarray(dt)[:, None, None] / 2 * A
    a_bar = np.linalg.solve(eye - half, eye + half)
    b_bar = np.linalg.solve(eye - half, (np.asarray(dt)[:, None] * B)[..., None])[..., 0]
    return jnp.asarray(a_bar), jnp.asarray(b_bar)


def test_bilinear_forms_equal_the_solve():
    key = jax.random.key(0)
    dt = jnp.array([0.1, 0.5, 1.0])
    a = -jnp.exp(jax.random.normal(key, (3, 4))) + 1j * jax.random.normal(key, (3, 4))
    b = jax.random.normal(jax.random.key(1), (3, 4)) + 0j
    a_bar, b_bar = bilinear(dt, a, b)
    dense_a, dense_b = bilinear_dense(dt, jax.vmap(jnp.diag)(a), b)
    assert rel_err(dense_a, jax.vmap(jnp.diag)(a_bar)) < 1e-14
    assert rel_err(dense_b, b_bar) < 1e-14
    p = jax.random.normal(jax.random.key(2), (3, 4)) + 1j * jax.random.normal(key, (3, 4))
    A = jax.vmap(jnp.diag)(a) - p[:, :, None] * jnp.conj(p)[:, None, :]
    assert rel_err(bilinear_nplr(dt, a, p, b), bilinear_dense(dt, A, b)) < 1e-13
    legs, legs_b = hippo_legs(6)
    assert rel_err(bilinear_lower(dt, jnp.asarray(legs), jnp.asarray(legs_b)),
                   bilinear_dense(dt, legs, np.broadcast_to(legs_b, (3, 6)))) < 1e-13


def legs_system(key, channels, d_state):
    """The real LegS system with random C and Δ, and the same system in S4's NPLR basis."""
    A, B = hippo_legs(d_state)
    k1, k2 = jax.random.split(key)
    C = jax.random.normal(k1, (channels, d_state), jnp.float64)
    dt = jnp.exp(jax.random.uniform(k2, (channels,), jnp.float64, jnp.log(1e-2), 0.0))
    Lambda, P, B_tilde, V = nplr_legs(d_state)

    def tile(x):
        return jnp.broadcast_to(jnp.asarray(x), (channels, d_state // 2))

    nplr = (dt, tile(Lambda), tile(P), tile(B_tilde), C @ jnp.asarray(V))
    return (dt, jnp.asarray(A), jnp.broadcast_to(jnp.asarray(B), (channels, d_state)), C), nplr


def unrolled_kernel(a_bar, b_bar, C, length):
    x, out = b_bar, []
    for _ in range(length):
        out.append(jnp.real(jnp.sum(C * x, axis=-1)))
        x = jnp.einsum("cnm,cm->cn", a_bar, x)
    return jnp.stack(out)


@pytest.mark.parametrize("length", [1, 12, 13])
def test_kernels_equal_unrolled_recurrence(length):
    (dt, A, B, C), nplr = legs_system(jax.random.key(length), 3, 8)
    a_bar, b_bar = bilinear_dense(dt, A, B)
    expected = unrolled_kernel(a_bar, b_bar, C, length)
    assert rel_err(krylov_kernel(a_bar, b_bar, C, length), expected) < TOL
    assert rel_err(s4_kernel(*nplr, length), expected) < TOL


def test_s4_discrete_is_the_same_system():
    (dt, A, B, C), (_, Lambda, P, B_t, C_t) = legs_system(jax.random.key(5), 2, 6)
    a_nplr, b_nplr, c_full = s4_discrete(dt, Lambda, P, B_t, C_t)
    a_bar, b_bar = bilinear_dense(dt, A, B)
    assert rel_err(unrolled_kernel(a_nplr, b_nplr, c_full, 9),
                   unrolled_kernel(a_bar, b_bar, C, 9)) < TOL


def random_nplr(key, channels, half):
    """Random S4 parameters (not LegS), so gradients see every entry."""
    ks = jax.random.split(key, 6)
    cplx = [jax.random.normal(k, (2, channels, half), jnp.float64) for k in ks[:4]]
    log_dt = jax.random.uniform(ks[4], (channels,), jnp.float64, jnp.log(1e-2), jnp.log(0.3))
    return {"lam": cplx[0], "p": cplx[1] * 0.5, "b": cplx[2], "c": cplx[3], "log_dt": log_dt}


def s4_args(f):
    lam = -jnp.exp(f["lam"][0]) + 1j * f["lam"][1] * 3
    p, b, c = (f[k][0] + 1j * f[k][1] for k in ("p", "b", "c"))
    return jnp.exp(f["log_dt"]), lam, p, b, c


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("batch, length", [(2, 21), (1, 8)])
def test_s4_forms_agree_with_gradients(batch, length, packed):
    channels, half = 3, 4
    floats = random_nplr(jax.random.key(length), channels, half)
    floats["u"] = jax.random.normal(jax.random.key(1), (batch, length, channels), jnp.float64)
    weights = jax.random.normal(jax.random.key(2), (batch, length, channels), jnp.float64)
    segment_ids = (jnp.cumsum(jax.random.bernoulli(jax.random.key(3), 0.2, (batch, length)),
                              axis=1) if packed else None)

    def op(f, impl):
        return s4_ssm(f["u"], *s4_args(f), segment_ids=segment_ids, impl=impl), jnp.zeros(())

    assert_forms_agree(forms_and_grads(op, floats, weights), TOL)


def test_lssl_forms_agree_with_gradients():
    (dt, A, B, C), _ = legs_system(jax.random.key(6), 3, 6)
    floats = {"log_dt": jnp.log(dt), "c": C,
              "u": jax.random.normal(jax.random.key(7), (2, 19, 3), jnp.float64)}
    weights = jax.random.normal(jax.random.key(8), (2, 19, 3), jnp.float64)

    def op(f, impl):
        a_bar, b_bar = bilinear_lower(jnp.exp(f["log_dt"]), A, B[0])
        return dense_ssm(f["u"], a_bar, b_bar, f["c"], impl=impl), jnp.zeros(())

    assert_forms_agree(forms_and_grads(op, floats, weights), TOL)


def test_s4_state_carries_across_halves_and_equals_steps():
    floats = random_nplr(jax.random.key(9), 2, 3)
    args = s4_args(floats)
    u = jax.random.normal(jax.random.key(10), (2, 14, 2), jnp.float64)
    whole, final = s4_ssm(u, *args, return_final_state=True)
    first, state = s4_ssm(u[:, :6], *args, return_final_state=True)
    second, state = s4_ssm(u[:, 6:], *args, initial_state=state, return_final_state=True)
    assert rel_err(jnp.concatenate([first, second], axis=1), whole) < TOL
    assert rel_err(state, final) < TOL
    discrete = s4_discrete(*args)
    state = jnp.zeros((2, 2, 6), jnp.complex128)
    steps = []
    for t in range(14):
        y, state = dense_ssm_step(state, u[:, t], *discrete)
        steps.append(y)
    assert rel_err(jnp.stack(steps, axis=1), whole) < TOL


def test_float32_long_sequence():
    """float32 at length 16384 stays finite and within 1e-3 of the float64 reference, for S4's
    Cauchy kernel and LSSL's Krylov kernel."""
    (dt, A, B, C), nplr = legs_system(jax.random.key(11), 2, 16)
    u = jax.random.normal(jax.random.key(12), (1, 16384, 2), jnp.float64)
    exact = s4_ssm(u, *nplr, impl="reference")
    fast = s4_ssm(u.astype(jnp.float32), nplr[0].astype(jnp.float32),
                  *(x.astype(jnp.complex64) for x in nplr[1:]), impl="xla")
    assert bool(jnp.all(jnp.isfinite(fast)))
    assert rel_err(fast, exact) < 1e-3
    exact = dense_ssm(u, *bilinear_lower(dt, A, B[0]), C, impl="reference")
    f32 = (dt.astype(jnp.float32), A.astype(jnp.float32), B[0].astype(jnp.float32))
    fast = dense_ssm(u.astype(jnp.float32), *bilinear_lower(*f32), C.astype(jnp.float32),
                     impl="xla")
    assert bool(jnp.all(jnp.isfinite(fast)))
    assert rel_err(fast, exact) < 1e-3


def test_bad_shapes_name_the_argument():
    _, nplr = legs_system(jax.random.key(13), 3, 4)
    u = jnp.ones((1, 5, 3))
    with pytest.raises(ValueError, match="dt"):
        s4_ssm(u, nplr[0][:2], *nplr[1:])
    with pytest.raises(ValueError, match="C"):
        s4_ssm(u, *nplr[:4], nplr[4][:, :1])
    a_bar = jnp.ones((3, 4, 4))
    with pytest.raises(ValueError, match="b_bar"):
        dense_ssm(u, a_bar, jnp.ones((3, 5)), jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="d_state must be an even"):
        nplr_legs(5)
    with pytest.raises(ValueError, match=r"s4_kernel: P must have shape"):
        s4_kernel(nplr[0], nplr[1], nplr[2][:, :1], *nplr[3:], 8)
    with pytest.raises(ValueError, match=r"krylov_kernel: C must have shape"):
        krylov_kernel(a_bar, jnp.ones((3, 4)), jnp.ones((3, 5)), 8)
