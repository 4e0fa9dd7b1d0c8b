"""The Mosaic GPU (Hopper) gated delta rule kernels of
:mod:`jaxlm.kernels.mosaic_gpu.delta_rule`.

On CPU they run in Mosaic GPU's interpreter at tiny shapes (batch 1, 1-2 heads, 2-3 chunks of
64, head width 64) against the op's float64 sequential reference; each test covers several
features at once: ragged length, packed rows, a -inf log-decay, initial and final states.
k is L2-normalised (as DeltaNet does) and β in (0, 1), so the UT solve is well conditioned.
The lowering tests run Mosaic GPU's compiler front end for CUDA at head width 128 on the CPU
host; tests marked ``gpu`` compile for a real GPU and compare with the op's XLA form.

The forward test runs bfloat16, the gradient test float16. Tolerances: 16-bit operands (q, k,
v, W, Ũ, U and the state as read by the products; in the backward also dU and the scores'
gradient) give relative errors of 2e-3 to 4e-3 against float64 in bfloat16 (values and
gradients alike) and near 5e-4 in float16; the tests allow 1e-2.
"""

import jax
import jax.numpy as jnp
import pytest

from jaxlm.ops.delta_rule import gated_delta_rule as op
from tests.helpers import rel_err
from tests.kernels.mosaic_gpu_helpers import (assert_gradients_close, gradients, needs_gpu,
                                              needs_mosaic_gpu)

pytestmark = needs_mosaic_gpu
TOL = 1e-2
NAMES = ("q", "k", "v", "beta", "log_a", "state")


def mgpu():
    from jaxlm.kernels.mosaic_gpu import delta_rule

    return delta_rule


def inputs(batch, heads, length, d, seed=0, dtype=jnp.bfloat16, dv=None):
    """q (scaled), k (unit rows) of width d, v of width dv (default d), beta, log-decays (one
    -inf), starts (one packed document boundary), initial state, and output / state weights
    for a loss."""
    dv = dv or d
    ks = jax.random.split(jax.random.key(seed), 8)
    normal = lambda i, shape: jax.random.normal(ks[i], shape, jnp.float32)
    q = (normal(0, (batch, heads, length, d)) * d ** -0.5).astype(dtype)
    k = normal(1, (batch, heads, length, d))
    k = (k / jnp.linalg.norm(k, axis=-1, keepdims=True)).astype(dtype)
    v = normal(2, (batch, heads, length, dv)).astype(dtype)
    beta = jax.nn.sigmoid(normal(3, (batch, heads, length)))
    log_a = -0.1 * jax.nn.softplus(normal(4, (batch, heads, length)))
    log_a = log_a.at[0, heads - 1, (2 * length) // 3].set(-jnp.inf)
    starts = jnp.zeros((batch, length), bool).at[:, length // 2].set(True)
    state = normal(5, (batch, heads, d, dv)) * 0.3
    return (q, k, v, beta, log_a, starts, state), (normal(6, (batch, heads, length, dv)),
                                                   normal(7, (batch, heads, d, dv)))


def reference(q, k, v, beta, log_a, starts, state, impl="reference"):
    """The op's form in float64 (heads-first in and out, q already scaled)."""
    t = lambda x: jnp.moveaxis(x, 1, 2).astype(jnp.float64)
    out, final = op(t(q), t(k), t(v), t(beta), t(log_a), scale=1.0,
                    initial_state=state.astype(jnp.float64), return_final_state=True,
                    segment_ids=jnp.cumsum(starts, axis=1), impl=impl)
    return jnp.moveaxis(out, 2, 1), final


def kernel(*args):
    return mgpu().gated_delta_rule(*args, interpret=True)


def test_delta_forward_matches_reference_in_interpreter():
    args, _ = inputs(1, 2, 150, 64)  # 3 chunks, the last ragged
    out, final = kernel(*args)
    ref_out, ref_final = reference(*args)
    assert out.dtype == jnp.bfloat16 and final.dtype == jnp.float32
    assert rel_err(out, ref_out) < TOL
    assert rel_err(final, ref_final) < TOL


@pytest.mark.slow
def test_delta_gradients_match_reference_in_interpreter():
    # 2 chunks, ragged; d_v = 128: two thread blocks share a row, each with 64 state columns
    args, weights = inputs(1, 1, 100, 64, seed=1, dtype=jnp.float16, dv=128)
    q, k, v, beta, log_a, starts, state = args
    diff = (q, k, v, beta, log_a, state)
    assert_gradients_close(gradients(kernel, weights, starts, diff),
                           gradients(reference, weights, starts, diff), NAMES, TOL)


def test_wy_factors_solve_the_ut_system():
    """Stage 1 alone: (I + tril_strict(diag(β) Γ ⊙ K Kᵀ)) [W, Ũ] = diag(β) [diag(γ) K, V],
    and the blocked solve is exact in float64."""
    (_, k, v, beta, log_a, starts, _), _ = inputs(1, 1, 64, 64, seed=3)

    @jax.jit
    def solves(k, v, beta, log_a, starts):
        flat = lambda x: x.reshape(1, 64, *x.shape[3:])
        b, seg, qd, _, _ = mgpu().decay_factors(flat(log_a).astype(jnp.float32), starts, 64)
        w, u = mgpu().wy_factors(flat(k), flat(v), flat(beta), b, seg, qd)
        k64, v64, beta64, b64 = (flat(x)[0].astype(jnp.float64) for x in (k, v, beta, b[None]))
        same = (seg[0, :, None] == seg[0, None, :]) & jnp.tril(jnp.ones((64, 64), bool), -1)
        decay = jnp.where(same, jnp.exp(jnp.where(same, b64[:, None] - b64[None, :], 0)), 0)
        n = beta64[:, None] * decay * (k64 @ k64.T)
        system = jnp.eye(64) + n
        rhs = beta64[:, None] * jnp.concatenate([qd[0, :, None] * k64, v64], axis=1)
        return (jnp.concatenate([w[0], u[0]], axis=1), jnp.linalg.solve(system, rhs),
                mgpu()._ut_inverse(n[None])[0], jnp.linalg.inv(system))

    solved, expected, inverse, exact = solves(k, v, beta, log_a, starts)
    assert rel_err(solved, expected) < TOL
    assert rel_err(inverse, exact) < 1e-12


@pytest.mark.parametrize("backward", [False, True])
def test_delta_kernels_lower_for_cuda_at_production_widths(backward):
    """The forward (and backward) kernels go through Mosaic GPU's lowering for CUDA on this
    host: layouts, transforms, wgmma shapes and the shared-memory budget at head width 128."""
    batch, heads, length, d = 2, 2, 256, 128
    spec = lambda *s, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(s, dtype)
    starts = jnp.zeros((batch, length), bool)

    def run(q, k, v, beta, log_a, state):
        out, final = mgpu().gated_delta_rule(q, k, v, beta, log_a, starts, state)
        return jnp.sum(out.astype(jnp.float32)) + jnp.sum(final)

    fn = jax.grad(run, argnums=range(6)) if backward else run
    args = (spec(batch, heads, length, d),) * 3 + (
        spec(batch, heads, length, dtype=jnp.float32),) * 2 + (
        spec(batch, heads, d, d, dtype=jnp.float32),)
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("mosaic_gpu") >= (2 if backward else 1)


def test_delta_rejects_what_it_cannot_run():
    (q, k, v, beta, log_a, starts, state), _ = inputs(1, 1, 64, 64)
    run = mgpu().gated_delta_rule
    with pytest.raises(ValueError, match="16-bit dtype"):
        run(q.astype(jnp.float32), k, v, beta, log_a, starts, state, interpret=True)
    with pytest.raises(ValueError, match="beta must have shape"):
        run(q, k, v, beta[..., None], log_a, starts, state, interpret=True)
    with pytest.raises(ValueError, match="multiples of 64"):
        run(q[..., :32], k[..., :32], v, beta, log_a, starts, state[:, :, :32], interpret=True)


def test_dispatch_sends_compiled_gpu_calls_to_mosaic_gpu():
    """kernels.delta_rule picks the Mosaic GPU kernel for compiled 16-bit GPU calls at
    supported widths, and the portable kernel otherwise."""
    from jaxlm.kernels.delta_rule import _mosaic_gpu_takes

    (q, k, v, _, _, _, state), _ = inputs(1, 1, 64, 64)
    assert _mosaic_gpu_takes(q, k, v, state, 64, False, "gpu")
    assert not _mosaic_gpu_takes(q, k, v, state, 64, True, "gpu")
    assert not _mosaic_gpu_takes(q, k, v, state, 64, False, "tpu")
    assert not _mosaic_gpu_takes(q, k, v, state, 32, False, "gpu")
    assert not _mosaic_gpu_takes(q.astype(jnp.float32), k, v, state, 64, False, "gpu")
    assert not _mosaic_gpu_takes(q, k, v, state.astype(jnp.float64), 64, False, "gpu")
    wide = jax.ShapeDtypeStruct((1, 1, 64, 256), jnp.bfloat16)  # too big for shared memory
    assert not _mosaic_gpu_takes(wide, wide, wide, state, 64, False, "gpu")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("length", [1000, 2048])
def test_delta_on_gpu_matches_xla_form(length):
    """Compiled for the GPU: values and gradients against the op's XLA (chunked) form."""
    args, weights = inputs(2, 4, length, 128, seed=2)
    q, k, v, beta, log_a, starts, state = args
    diff = (q, k, v, beta, log_a, state)
    out, final = jax.jit(mgpu().gated_delta_rule)(*args)
    ref_out, ref_final = reference(*args, impl="xla")
    assert rel_err(out, ref_out) < TOL and rel_err(final, ref_final) < TOL
    t = lambda x: jnp.moveaxis(x, 1, 2)  # the op with impl="pallas" dispatches to the kernel
    via_op = op(t(q), t(k), t(v), t(beta), t(log_a), scale=1.0, initial_state=state,
                segment_ids=jnp.cumsum(starts, axis=1), impl="pallas")
    assert rel_err(t(via_op), ref_out) < TOL
    xla = lambda *a: reference(*a, impl="xla")
    assert_gradients_close(gradients(mgpu().gated_delta_rule, weights, starts, diff, jit=True),
                           gradients(xla, weights, starts, diff, jit=True), NAMES, TOL,
                           finite=False)
