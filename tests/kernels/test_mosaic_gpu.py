"""The Mosaic GPU (Hopper) kernels of :mod:`jaxlm.kernels.mosaic_gpu`.

On CPU they run in Mosaic GPU's interpreter (threads, barriers, shared memory and TMA copies
simulated) at tiny shapes: batch 1, 2 heads, 2-3 chunks of 64, head width 64 (wgmma's smallest
tile), bfloat16 inputs against the op's float64 sequential reference. The interpreter is slow
(about 5 s a forward, 10-20 s a gradient; per-channel decay twice that), so each test covers
several features at once: ragged length, packed rows, a -inf gate, initial and final states.
Lowering tests run the Mosaic GPU compiler front end for CUDA at production widths on the CPU
host. Tests marked
``gpu`` compile for a real GPU and compare with the XLA forms; they skip without one.

Tolerances: bfloat16 operands (q, k, v, the probabilities and the state as read by the
products) give relative errors near 3e-3 against float64; the tests allow 1e-2.
"""

import jax
import jax.numpy as jnp
import pytest

from jaxlm.ops.linear_attention import gated_linear_attention as op
from tests.helpers import rel_err
from tests.kernels.mosaic_gpu_helpers import (assert_gradients_close, gradients, needs_gpu,
                                              needs_mosaic_gpu, no_races)

pytestmark = needs_mosaic_gpu
TOL = 1e-2
NAMES = ("q", "k", "v", "log_g", "state")


def mgpu(per_channel=False):
    from jaxlm.kernels.mosaic_gpu import gla_per_channel, linear_attention

    return gla_per_channel if per_channel else linear_attention


def inputs(batch, heads, length, d, seed=0, dtype=jnp.bfloat16, per_channel=False):
    """q (scaled), k, v, log-gates per head or per channel (one -inf; per channel also a run
    of strong finite gates on one channel, whose decay over one 16-position sub-chunk is far
    below float32's range, and one gate under the reset floor), starts (one packed document
    boundary), initial state, and output / state weights for a loss."""
    ks = jax.random.split(jax.random.key(seed), 7)
    normal = lambda i, shape: jax.random.normal(ks[i], shape, jnp.float32)
    q = (normal(0, (batch, heads, length, d)) * d ** -0.5).astype(dtype)
    k, v = (normal(i, (batch, heads, length, d)).astype(dtype) for i in (1, 2))
    shift = 3.0 if per_channel else 0.0  # per channel: slow decays, as GLA's gates are
    log_g = -jax.nn.softplus(normal(3, (batch, heads, length, d if per_channel else 1)) - shift)
    log_g = log_g.at[0, heads - 1, (2 * length) // 3, 0].set(-jnp.inf)
    if per_channel:
        log_g = log_g.at[0, 0, 20:23, 3].set(-60.0).at[0, 0, 70, 5].set(-200.0)
    starts = jnp.zeros((batch, length), bool).at[:, length // 2].set(True)
    state = normal(4, (batch, heads, d, d))
    return (q, k, v, log_g, starts, state), (normal(5, (batch, heads, length, d)),
                                            normal(6, (batch, heads, d, d)))


def reference(q, k, v, log_g, starts, state, impl="reference"):
    """The op's form in float64 (heads-first in and out, q already scaled)."""
    t = lambda x: jnp.moveaxis(x, 1, 2).astype(jnp.float64)
    g = t(log_g)[..., 0] if log_g.shape[-1] == 1 else t(log_g)
    out, final = op(t(q), t(k), t(v), g, scale=1.0,
                    initial_state=state.astype(jnp.float64), return_final_state=True,
                    segment_ids=jnp.cumsum(starts, axis=1), impl=impl)
    return jnp.moveaxis(out, 2, 1), final


def test_gla_forward_matches_reference_in_interpreter():
    args, _ = inputs(1, 2, 150, 64)  # 3 chunks, the last ragged
    out, final = mgpu().gated_linear_attention(*args, interpret=True)
    ref_out, ref_final = reference(*args)
    assert out.dtype == jnp.bfloat16 and final.dtype == jnp.float32
    assert rel_err(out, ref_out) < TOL
    assert rel_err(final, ref_final) < TOL


@pytest.mark.slow
def test_gla_gradients_match_reference_in_interpreter():
    args, weights = inputs(1, 2, 100, 64, seed=1)  # 2 chunks, ragged
    q, k, v, log_g, starts, state = args
    kernel = lambda *a: mgpu().gated_linear_attention(*a, interpret=True)
    diff = (q, k, v, log_g, state)
    assert_gradients_close(gradients(kernel, weights, starts, diff),
                           gradients(reference, weights, starts, diff), NAMES, TOL)


@pytest.mark.parametrize("backward", [False, True])
def test_gla_kernels_lower_for_cuda_at_production_widths(backward):
    """The forward (and backward) kernels go through Mosaic GPU's lowering for CUDA on this
    host: layouts, transforms, wgmma shapes and the shared-memory budget at head width 128."""
    batch, heads, length, d = 2, 2, 256, 128
    spec = lambda *s, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(s, dtype)
    starts = jnp.zeros((batch, length), bool)

    def run(q, k, v, log_g, state):
        out, final = mgpu().gated_linear_attention(q, k, v, log_g, starts, state)
        return jnp.sum(out.astype(jnp.float32)) + jnp.sum(final)

    fn = jax.grad(run, argnums=range(5)) if backward else run
    args = (spec(batch, heads, length, d),) * 3 + (
        spec(batch, heads, length, 1, dtype=jnp.float32),
        spec(batch, heads, d, d, dtype=jnp.float32))
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("mosaic_gpu") >= (2 if backward else 1)


def test_gla_rejects_what_it_cannot_run():
    (q, k, v, log_g, starts, state), _ = inputs(1, 1, 64, 64)
    kernel = mgpu().gated_linear_attention
    with pytest.raises(ValueError, match="16-bit dtype"):
        kernel(q.astype(jnp.float32), k, v, log_g, starts, state, interpret=True)
    with pytest.raises(ValueError, match="per-channel decay"):
        kernel(q, k, v, jnp.zeros(q.shape), starts, state, interpret=True)
    with pytest.raises(ValueError, match="multiples of 64"):
        kernel(q[..., :32], k[..., :32], v, log_g, starts, state[:, :, :32], interpret=True)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("length", [1000, 2048])
def test_gla_on_gpu_matches_xla_form(length):
    """Compiled for the GPU: values and gradients against the op's XLA (chunked) form."""
    args, weights = inputs(2, 4, length, 128, seed=2)
    q, k, v, log_g, starts, state = args
    out, final = jax.jit(mgpu().gated_linear_attention)(*args)
    ref_out, ref_final = reference(*args, impl="xla")
    assert rel_err(out, ref_out) < TOL and rel_err(final, ref_final) < TOL
    diff = (q, k, v, log_g, state)
    xla = lambda *a: reference(*a, impl="xla")
    assert_gradients_close(
        gradients(mgpu().gated_linear_attention, weights, starts, diff, jit=True),
        gradients(xla, weights, starts, diff, jit=True), NAMES, TOL, finite=False)


# Per-channel decay (GLA): gla_per_channel. Race detection on: the interpreter checks every
# shared-memory access against the TMA ring's copies.


def test_gla_per_channel_forward_matches_reference_in_interpreter():
    args, _ = inputs(1, 2, 150, 64, per_channel=True)  # 3 chunks, the last ragged
    with no_races():
        out, final = mgpu(True).gated_linear_attention(*args, interpret=True,
                                                       detect_races=True)
    ref_out, ref_final = reference(*args)
    assert out.dtype == jnp.bfloat16 and final.dtype == jnp.float32
    assert rel_err(out, ref_out) < TOL
    assert rel_err(final, ref_final) < TOL


@pytest.mark.slow
def test_gla_per_channel_gradients_match_reference_in_interpreter():
    """float16 here (bfloat16 in the forward test): the same kernels, the other 16-bit type.
    One head: the -inf gate, the strong gates and the reset gate all on it."""
    args, weights = inputs(1, 1, 100, 64, seed=1, dtype=jnp.float16, per_channel=True)
    q, k, v, log_g, starts, state = args
    diff = (q, k, v, log_g, state)
    kernel = lambda *a: mgpu(True).gated_linear_attention(*a, interpret=True, detect_races=True)
    with no_races():
        grads = gradients(kernel, weights, starts, diff)
    assert_gradients_close(grads, gradients(reference, weights, starts, diff), NAMES, TOL)


@pytest.mark.parametrize("backward", [False, True])
def test_gla_per_channel_kernels_lower_for_cuda_at_production_widths(backward):
    batch, heads, length, d = 2, 2, 256, 128
    spec = lambda *s, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(s, dtype)
    starts = jnp.zeros((batch, length), bool)

    def run(q, k, v, log_g, state):
        out, final = mgpu(True).gated_linear_attention(q, k, v, log_g, starts, state)
        return jnp.sum(out.astype(jnp.float32)) + jnp.sum(final)

    fn = jax.grad(run, argnums=range(5)) if backward else run
    args = (spec(batch, heads, length, d),) * 3 + (
        spec(batch, heads, length, d, dtype=jnp.float32),
        spec(batch, heads, d, d, dtype=jnp.float32))
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("mosaic_gpu") >= (2 if backward else 1)


def test_gla_per_channel_rejects_what_it_cannot_run():
    (q, k, v, log_g, starts, state), _ = inputs(1, 1, 64, 64, per_channel=True)
    kernel = mgpu(True).gated_linear_attention
    with pytest.raises(ValueError, match="per-channel log_g must have shape"):
        kernel(q, k, v, log_g[..., :1], starts, state, interpret=True)
    with pytest.raises(ValueError, match="16-bit dtype"):
        kernel(q, k, v.astype(jnp.float32), log_g, starts, state, interpret=True)


@pytest.mark.parametrize("width", [1, 64])
def test_compiled_gpu_calls_with_either_gate_go_to_mosaic_gpu(width):
    from jaxlm.kernels.linear_attention import _mosaic_gpu_takes

    (q, k, v, _, _, state), _ = inputs(1, 1, 64, 64)
    log_g = jnp.zeros(q.shape[:-1] + (width,))
    assert _mosaic_gpu_takes(q, k, v, log_g, state, 64, False, "gpu")
    assert not _mosaic_gpu_takes(q, k, v, log_g, state, 64, True, "gpu")  # interpreted
    assert not _mosaic_gpu_takes(q, k, v, log_g[..., :2], state, 64, False, "gpu") or width == 1
    assert not _mosaic_gpu_takes(q, k, v, log_g, state, 16, False, "gpu")


@pytest.mark.gpu
@needs_gpu
def test_gla_per_channel_on_gpu_matches_xla_form():
    """Compiled for the GPU: values and gradients against the op's XLA (chunked) form."""
    args, weights = inputs(2, 4, 1000, 128, seed=2, per_channel=True)
    q, k, v, log_g, starts, state = args
    kernel = mgpu(True).gated_linear_attention
    out, final = jax.jit(kernel)(*args)
    ref_out, ref_final = reference(*args, impl="xla")
    assert rel_err(out, ref_out) < TOL and rel_err(final, ref_final) < TOL
    diff = (q, k, v, log_g, state)
    xla = lambda *a: reference(*a, impl="xla")
    assert_gradients_close(gradients(kernel, weights, starts, diff, jit=True),
                           gradients(xla, weights, starts, diff, jit=True), NAMES, TOL,
                           finite=False)
