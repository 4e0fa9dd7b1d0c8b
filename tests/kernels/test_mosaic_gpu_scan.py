"""The Mosaic GPU (Hopper) selective scan kernels of
:mod:`jaxlm.kernels.mosaic_gpu.selective_scan`.

On CPU they run in Mosaic GPU's interpreter at tiny shapes (batch 1, 64 channels, d_state 16,
length 40: three chunks of 16, the last ragged, a packed document starting inside the second
chunk, an initial state and the final state) against the op's float64 sequential reference,
with race detection on (forward and backward). The lowering tests run Mosaic GPU's compiler
front end for CUDA at production widths (1024 channels, d_state 16, length 512) on the CPU
host; tests marked ``gpu`` compile for a real GPU and compare the op's ``impl="pallas"``
(which goes to this kernel there) with its XLA form.

Tolerances: every operation runs in float32 (u only enters in its own dtype, and the
reference reads the same rounded values), so outputs and gradients agree with float64 to about
1e-7 relative (measured 6e-8 to 1.5e-7; the gradient of a float16 u, rounded to float16 on both
sides, 1e-8); the tests allow 1e-5.
"""

import jax
import jax.numpy as jnp
import pytest

from jaxlm.ops.selective import selective_scan as op
from tests.helpers import rel_err
from tests.kernels.mosaic_gpu_helpers import (assert_gradients_close, gradients, needs_gpu,
                                              needs_mosaic_gpu, no_races)

pytestmark = needs_mosaic_gpu
TOL = 1e-5
NAMES = ("u", "dt", "A", "B", "C", "state")


def mgpu():
    from jaxlm.kernels.mosaic_gpu import selective_scan

    return selective_scan


def inputs(batch, length, d_inner, d_state, seed=0, dtype=jnp.bfloat16):
    """u (``dtype``), Δ > 0 (float32, as the op passes it), A < 0, B, C, starts (one packed
    document boundary at 23), a float32 initial state, and output / state weights for a loss."""
    ks = jax.random.split(jax.random.key(seed), 8)
    normal = lambda i, shape: jax.random.normal(ks[i], shape, jnp.float32)
    u = normal(0, (batch, length, d_inner)).astype(dtype)
    dt = jax.nn.softplus(normal(1, (batch, length, d_inner)) - 1.0)
    A = -jnp.exp(0.5 * normal(2, (d_inner, d_state)))
    B, C = normal(3, (batch, length, d_state)), normal(4, (batch, length, d_state))
    starts = jnp.zeros((batch, length), bool).at[:, min(23, length - 1)].set(True)
    state = normal(5, (batch, d_inner, d_state))
    return (u, dt, A, B, C, starts, state), (normal(6, (batch, length, d_inner)),
                                            normal(7, (batch, d_inner, d_state)))


def reference(u, dt, A, B, C, starts, state, impl="reference"):
    """The op's form in float64 (reference) or in the inputs' precision (xla)."""
    cast = (lambda x: x.astype(jnp.float64)) if impl == "reference" else (lambda x: x)
    return op(cast(u), cast(dt), cast(A), cast(B), cast(C), initial_state=cast(state),
              return_final_state=True, segment_ids=jnp.cumsum(starts, axis=1), impl=impl)


def test_selective_scan_forward_matches_reference_in_interpreter():
    args, _ = inputs(1, 40, 64, 16)
    with no_races():
        y, final = mgpu().selective_scan(*args, interpret=True, detect_races=True)
    ref_y, ref_final = reference(*args)
    assert y.dtype == jnp.float32 and final.dtype == jnp.float32
    assert rel_err(y, ref_y) < TOL
    assert rel_err(final, ref_final) < TOL


@pytest.mark.slow
def test_selective_scan_gradients_match_reference_in_interpreter():
    """float16 u here (bfloat16 in the forward test); d_state 8, the smallest."""
    args, weights = inputs(1, 40, 64, 8, seed=1, dtype=jnp.float16)
    u, dt, A, B, C, starts, state = args
    diff = (u, dt, A, B, C, state)
    kernel = lambda *a: mgpu().selective_scan(*a, interpret=True, detect_races=True)
    with no_races():
        grads = gradients(kernel, weights, starts, diff)
    assert [g.dtype for g in grads] == [x.dtype for x in diff]
    assert_gradients_close(grads, gradients(reference, weights, starts, diff), NAMES, TOL)


@pytest.mark.parametrize("backward,dtype", [(False, jnp.bfloat16), (True, jnp.bfloat16),
                                            (True, jnp.float32)])
def test_selective_scan_kernels_lower_for_cuda_at_production_widths(backward, dtype):
    """The forward (and backward) kernels go through Mosaic GPU's lowering for CUDA on this
    host: register layouts, TMA copies and shared memory at 1024 channels, d_state 16, u in
    16 or 32 bits."""
    batch, length, d_inner, d_state = 2, 512, 1024, 16
    spec = lambda *s, dtype=jnp.float32: jax.ShapeDtypeStruct(s, dtype)
    starts = jnp.zeros((batch, length), bool)

    def run(u, dt, A, B, C, state):
        y, final = mgpu().selective_scan(u, dt, A, B, C, starts, state)
        return jnp.sum(y) + jnp.sum(final)

    fn = jax.grad(run, argnums=range(6)) if backward else run
    args = (spec(batch, length, d_inner, dtype=dtype), spec(batch, length, d_inner),
            spec(d_inner, d_state), spec(batch, length, d_state),
            spec(batch, length, d_state), spec(batch, d_inner, d_state))
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("mosaic_gpu") >= (2 if backward else 1)


def test_selective_scan_rejects_what_it_cannot_run():
    (u, dt, A, B, C, starts, state), _ = inputs(1, 16, 64, 16)
    kernel = mgpu().selective_scan
    with pytest.raises(ValueError, match="d_inner a multiple of 64"):
        kernel(u[..., :32], dt[..., :32], A[:32], B, C, starts, state[:, :32], interpret=True)
    with pytest.raises(ValueError, match="d_state=12"):
        kernel(u, dt, A[:, :12], B[..., :12], C[..., :12], starts, state[..., :12],
               interpret=True)
    with pytest.raises(ValueError, match="float32 state"):
        kernel(u, dt, A, B, C, starts, state.astype(jnp.bfloat16), interpret=True)
    with pytest.raises(ValueError, match="B must have shape"):
        kernel(u, dt, A, B[:, :8], C, starts, state, interpret=True)


def test_compiled_gpu_calls_go_to_mosaic_gpu():
    from jaxlm.kernels.selective_scan import _mosaic_gpu_takes

    (u, dt, A, _, _, _, state), _ = inputs(1, 16, 64, 16)
    assert _mosaic_gpu_takes(u, dt, A, state, 16, False, "gpu")
    assert not _mosaic_gpu_takes(u, dt, A, state, 16, True, "gpu")  # interpreted
    assert not _mosaic_gpu_takes(u, dt, A, state, 16, False, "tpu")
    assert not _mosaic_gpu_takes(u, dt, A, state, 32, False, "gpu")
    assert not _mosaic_gpu_takes(u[..., :48], dt[..., :48], A[:48], state[:, :48], 16, False,
                                 "gpu")
    assert not _mosaic_gpu_takes(u, dt, A, state.astype(jnp.float64), 16, False, "gpu")


def test_portable_kernel_lowered_for_cuda_runs_the_mosaic_gpu_kernel():
    """The portable kernel's entry point, compiled for a GPU, lowers to the Mosaic GPU kernel
    (forward and backward)."""
    from jaxlm.kernels.selective_scan import selective_scan as portable

    (u, dt, A, B, C, starts, state), _ = inputs(1, 32, 64, 16)

    def run(u, dt):
        y, final = portable(u, dt, A, B, C, starts, state, platform="gpu")
        return jnp.sum(y) + jnp.sum(final)

    text = jax.jit(jax.grad(run, argnums=(0, 1))).trace(u, dt).lower(
        lowering_platforms=("cuda",)).as_text()
    assert text.count("mosaic_gpu") >= 2


@pytest.mark.gpu
@needs_gpu
def test_selective_scan_on_gpu_matches_xla_form():
    """Compiled for the GPU, through the op (impl="pallas" goes to the Mosaic GPU kernel,
    with D, z, delta_bias and softplus around it): values and gradients against the op's XLA
    (chunked) form."""
    (u, dt, A, B, C, starts, state), (w_y, _) = inputs(2, 1000, 256, 16, seed=2)
    ks = jax.random.split(jax.random.key(3), 3)
    D, bias = jax.random.normal(ks[0], (256,)), jax.random.normal(ks[1], (256,))
    z = jax.random.normal(ks[2], u.shape, jnp.float32).astype(u.dtype)
    segs = jnp.cumsum(starts, axis=1)

    def loss(impl):
        def f(u, dt, A, B, C, state):
            y, final = op(u, dt, A, B, C, D, z, bias, True, initial_state=state,
                          return_final_state=True, segment_ids=segs, impl=impl)
            return jnp.sum(y.astype(jnp.float32) * w_y) + jnp.sum(final)
        return f

    args = (u, dt, A, B, C, state)
    assert rel_err(jax.jit(loss("pallas"))(*args), jax.jit(loss("xla"))(*args)) < 1e-2
    grads = jax.jit(jax.grad(loss("pallas"), argnums=range(6)))(*args)
    ref = jax.jit(jax.grad(loss("xla"), argnums=range(6)))(*args)
    assert_gradients_close(grads, ref, NAMES, 1e-2, finite=False)


def test_selective_scan_full_reset_channel_in_interpreter():
    """A channel with A = -inf resets at every step (y_t = C_t · Δ_t u_t B_t), also across the
    padding of a ragged length (Δ = 0 there): the final state stays finite and exact."""
    args, _ = inputs(1, 20, 64, 8, seed=3, dtype=jnp.float32)
    u, dt, A, B, C, starts, state = args
    A = A.at[5].set(-jnp.inf)
    y, final = mgpu().selective_scan(u, dt, A, B, C, starts, state, interpret=True)
    ref_y, ref_final = reference(u, dt, A, B, C, starts, state)
    assert bool(jnp.all(jnp.isfinite(final)))
    assert rel_err(y, ref_y) < TOL and rel_err(final, ref_final) < TOL
