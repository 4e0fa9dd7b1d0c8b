"""selective_scan and ssd: the chunked xla forms equal the sequential references (values and
gradients with respect to every input) in float64, tolerance 1e-10 relative (summation order
only); the reference equals a plain numpy loop of Mamba's equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops import selective_scan, ssd
from tests.helpers import assert_forms_agree, forms_and_grads, rel_err

TOL = 1e-10


def scan_inputs(key, batch, length, d_inner, d_state, groups, packed):
    ks = jax.random.split(key, 10)
    n = lambda k, shape: jax.random.normal(k, shape, jnp.float64)
    bc_shape = (batch, length, d_state) if groups is None else (batch, length, groups, d_state)
    return dict(
        u=n(ks[0], (batch, length, d_inner)), delta=n(ks[1], (batch, length, d_inner)),
        A=-jnp.exp(n(ks[2], (d_inner, d_state))), B=n(ks[3], bc_shape), C=n(ks[4], bc_shape),
        D=n(ks[5], (d_inner,)), z=n(ks[6], (batch, length, d_inner)),
        delta_bias=n(ks[7], (d_inner,)), initial_state=n(ks[8], (batch, d_inner, d_state)),
        segment_ids=(jnp.cumsum(jax.random.bernoulli(ks[9], 0.1, (batch, length)), axis=1)
                     if packed else None))


def numpy_selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state):
    """Mamba's equations, one token and one channel at a time (no segments, 3-D B and C)."""
    u, delta, A, B, C, D, z, bias, h0 = (np.asarray(x) for x in
                                         (u, delta, A, B, C, D, z, delta_bias, initial_state))
    batch, length, d_inner = u.shape
    y = np.zeros_like(u)
    for b in range(batch):
        h = h0[b].copy()
        for t in range(length):
            dt = np.log1p(np.exp(delta[b, t] + bias))
            for d in range(d_inner):
                h[d] = np.exp(dt[d] * A[d]) * h[d] + dt[d] * B[b, t] * u[b, t, d]
                y[b, t, d] = C[b, t] @ h[d] + D[d] * u[b, t, d]
        y[b] *= z[b] / (1 + np.exp(-z[b]))
    return y


def test_reference_matches_numpy_loop():
    x = scan_inputs(jax.random.key(0), 2, 9, 3, 4, None, False)
    args = {k: v for k, v in x.items() if k != "segment_ids"}
    y = selective_scan(**args, delta_softplus=True, impl="reference")
    assert rel_err(y, numpy_selective_scan(**args)) < TOL


# (batch, length, d_inner, d_state, groups, chunk, packed)
@pytest.mark.parametrize("case", [(2, 37, 6, 3, None, 8, True), (1, 20, 6, 2, 3, 64, True),
                                  (2, 16, 4, 3, 2, 4, False)])
def test_selective_scan_chunked_equals_reference(case):
    batch, length, d_inner, d_state, groups, chunk, packed = case
    x = scan_inputs(jax.random.key(length), batch, length, d_inner, d_state, groups, packed)
    weights = jax.random.normal(jax.random.key(1), (batch, length, d_inner), jnp.float64)
    seg = x.pop("segment_ids")
    op = lambda floats, impl: selective_scan(**floats, delta_softplus=True, segment_ids=seg,
                                             chunk_size=chunk, impl=impl,
                                             return_final_state=True)
    assert_forms_agree(forms_and_grads(op, x, weights), TOL)


# The Pallas kernel (one group of B and C) in Pallas' interpreter: ragged length, packed rows,
# channels split over programs (d_inner 6 in blocks of 4, padded), every input differentiated.
@pytest.mark.parametrize("batch, length", [(2, 37), (1, 9)])
def test_selective_scan_pallas_kernel_equals_reference(batch, length):
    x = scan_inputs(jax.random.key(length), batch, length, 6, 3, None, True)
    weights = jax.random.normal(jax.random.key(1), (batch, length, 6), jnp.float64)
    seg = x.pop("segment_ids")

    def op(floats, impl):
        if impl.startswith("pallas"):  # a small channel block, to cover several programs
            from jaxlm.kernels.selective_scan import selective_scan as kernel
            from jaxlm.ops.segments import segment_starts

            dt = jax.nn.softplus(floats["delta"] + floats["delta_bias"])
            y, h = kernel(floats["u"], dt, floats["A"], floats["B"], floats["C"],
                          segment_starts(seg, batch, length), floats["initial_state"],
                          chunk=8, block_d=4, interpret=True)
            y = (y + floats["D"] * floats["u"]) * jax.nn.silu(floats["z"])
            return y, h
        return selective_scan(**floats, delta_softplus=True, segment_ids=seg, impl=impl,
                              return_final_state=True)

    assert_forms_agree(forms_and_grads(op, x, weights, ("reference", "pallas_interpret")), TOL)


def test_selective_scan_op_runs_the_pallas_kernel():
    """impl="pallas_interpret" through the op (default blocks) equals the reference."""
    x = scan_inputs(jax.random.key(3), 1, 21, 5, 3, None, True)
    seg = x.pop("segment_ids")
    run = lambda impl: selective_scan(**x, delta_softplus=True, segment_ids=seg, impl=impl,
                                      return_final_state=True)
    assert rel_err(run("pallas_interpret"), run("reference")) < TOL


def test_selective_scan_pallas_kernel_in_float32_and_bfloat16():
    """The kernel accumulates in float32: float32 inputs within 1e-5 of float64; bfloat16
    inputs within 2e-2 of float64 on the same rounded inputs (the output is bfloat16)."""
    x = scan_inputs(jax.random.key(6), 1, 24, 4, 3, None, False)
    x.pop("segment_ids")
    for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
        low = jax.tree.map(lambda v: v.astype(dtype), x)
        ref = selective_scan(**jax.tree.map(lambda v: v.astype(jnp.float64), low),
                             delta_softplus=True, impl="reference")
        out = selective_scan(**low, delta_softplus=True, impl="pallas_interpret")
        assert out.dtype == dtype
        assert rel_err(out.astype(jnp.float64), ref) < tol


def test_selective_scan_pallas_refuses_groups():
    x = scan_inputs(jax.random.key(4), 1, 8, 4, 2, 2, False)
    x.pop("segment_ids")
    with pytest.raises(ValueError, match="takes one group of B and C"):
        selective_scan(**x, impl="pallas_interpret")


def test_selective_scan_halves_with_passed_state_equal_the_whole():
    x = scan_inputs(jax.random.key(2), 2, 30, 4, 3, None, False)
    args = {k: v for k, v in x.items() if k not in ("segment_ids", "initial_state", "z")}
    whole, state = selective_scan(**args, chunk_size=8, return_final_state=True)
    half = lambda a, sl: {k: (v[:, sl] if v.ndim == 3 and k not in ("A",) else v)
                          for k, v in a.items()}
    y1, s1 = selective_scan(**half(args, slice(0, 13)), chunk_size=8, return_final_state=True)
    y2, s2 = selective_scan(**half(args, slice(13, 30)), initial_state=s1, chunk_size=8,
                            return_final_state=True)
    assert rel_err(jnp.concatenate([y1, y2], 1), whole) < TOL
    assert rel_err(s2, state) < TOL


def ssd_inputs(key, batch, length, heads, head_dim, groups, d_state, packed):
    ks = jax.random.split(key, 8)
    n = lambda k, shape: jax.random.normal(k, shape, jnp.float64)
    return dict(
        x=n(ks[0], (batch, length, heads, head_dim)),
        dt=jax.nn.softplus(n(ks[1], (batch, length, heads))),
        A=-jnp.exp(n(ks[2], (heads,))), B=n(ks[3], (batch, length, groups, d_state)),
        C=n(ks[4], (batch, length, groups, d_state)), D=n(ks[5], (heads,)),
        initial_state=n(ks[6], (batch, heads, head_dim, d_state)),
        segment_ids=(jnp.cumsum(jax.random.bernoulli(ks[7], 0.1, (batch, length)), axis=1)
                     if packed else None))


@pytest.mark.parametrize("case", [(2, 37, 4, 3, 2, 5, 8, True), (1, 11, 2, 2, 1, 3, 64, False)])
def test_ssd_chunked_equals_reference(case):
    batch, length, heads, head_dim, groups, d_state, chunk, packed = case
    x = ssd_inputs(jax.random.key(length), batch, length, heads, head_dim, groups, d_state,
                   packed)
    weights = jax.random.normal(jax.random.key(3), (batch, length, heads, head_dim),
                                jnp.float64)
    seg = x.pop("segment_ids")
    op = lambda floats, impl: ssd(**floats, chunk_size=chunk, segment_ids=seg, impl=impl,
                                  return_final_state=True)
    assert_forms_agree(forms_and_grads(op, x, weights), TOL)


def test_ssd_pallas_kernel_equals_reference():
    """SSD through the gated-linear-attention kernel (interpreted): groups, packed rows."""
    x = ssd_inputs(jax.random.key(5), 2, 21, 4, 3, 2, 2, True)
    weights = jax.random.normal(jax.random.key(3), (2, 21, 4, 3), jnp.float64)
    seg = x.pop("segment_ids")
    op = lambda floats, impl: ssd(**floats, chunk_size=8, segment_ids=seg, impl=impl,
                                  return_final_state=True)
    assert_forms_agree(forms_and_grads(op, x, weights, ("reference", "pallas_interpret")), TOL)


def test_long_float32_stays_finite_and_close():
    """Length 16384 in float32: finite and within 1e-3 relative of the float64 reference."""
    x = scan_inputs(jax.random.key(4), 1, 16384, 4, 4, None, False)
    args = {k: v for k, v in x.items() if k not in ("segment_ids", "initial_state")}
    ref = jax.jit(lambda a: selective_scan(**a, delta_softplus=True, impl="reference"))(args)
    args32 = jax.tree.map(lambda v: v.astype(jnp.float32), args)
    with jax.default_matmul_precision("highest"):
        out = jax.jit(lambda a: selective_scan(**a, delta_softplus=True, impl="xla"))(args32)
    assert jnp.isfinite(out).all()
    assert rel_err(out.astype(jnp.float64), ref) < 1e-3

    s = ssd_inputs(jax.random.key(5), 1, 16384, 2, 4, 1, 4, False)
    s.pop("segment_ids")
    ref = jax.jit(lambda a: ssd(**a, impl="reference"))(s)
    with jax.default_matmul_precision("highest"):
        out = jax.jit(lambda a: ssd(**a, impl="xla"))(
            jax.tree.map(lambda v: v.astype(jnp.float32), s))
    assert jnp.isfinite(out).all()
    assert rel_err(out.astype(jnp.float64), ref) < 1e-3


def test_bad_shapes_are_named():
    x = scan_inputs(jax.random.key(6), 1, 8, 6, 3, None, False)
    with pytest.raises(ValueError, match=r"A must have shape \[d_inner, d_state\]"):
        selective_scan(x["u"], x["delta"], x["A"][:4], x["B"], x["C"])
    with pytest.raises(ValueError, match="groups=4, which must divide d_inner=6"):
        selective_scan(x["u"], x["delta"], x["A"], jnp.zeros((1, 8, 4, 3)),
                       jnp.zeros((1, 8, 4, 3)))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], chunk_size=-1)
    s = ssd_inputs(jax.random.key(7), 1, 8, 4, 2, 3, 2, False)
    with pytest.raises(ValueError, match="groups=3, which must divide heads=4"):
        ssd(s["x"], s["dt"], s["A"], s["B"], s["C"])
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        ssd(s["x"], s["dt"], s["A"], s["B"][:, :, :1], s["C"][:, :, :1], chunk_size=0)  # noqa
