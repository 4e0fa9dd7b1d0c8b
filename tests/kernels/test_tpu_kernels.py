"""The TPU kernels' contracts on a CPU host: on-chip bytes that do not grow with the length,
gates of -inf, NaN that stays causal, and the blocked UT transform.

The recurrent ops' ``impl="pallas_interpret"`` runs the chunk-pipelined TPU kernels in TPU
interpret mode (simulated VMEM and DMAs); their values and gradients against the references
are tested in tests/ops (test_recurrent_ops.py, test_selective.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.kernels import blocks, vmem
from jaxlm.ops import gated_delta_rule, gated_linear_attention
from tests.helpers import normal, rel_err


def test_vmem_per_program_is_constant_in_length_and_fits():
    """Every TPU kernel, forward and backward, at head dim 128, bfloat16 inputs, float32
    state: the same VMEM bytes per program at 1K and 64K tokens, at most the 16 MiB default
    scoped limit."""
    rows = vmem.budget_table((1024, 65536))
    by_length = {n: {(r["case"], r["kernel"]): r["bytes"] for r in rows if r["length"] == n}
                 for n in (1024, 65536)}
    assert by_length[1024] == by_length[65536]
    for case in vmem.kernel_cases(8):  # a forward and at least one backward kernel each
        kernels = [k for c, k in by_length[1024] if c == case]
        assert len(kernels) >= 2 and any(k.endswith("fwd") for k in kernels), kernels
    assert max(by_length[1024].values()) <= vmem.DEFAULT_SCOPED_LIMIT, by_length


@pytest.mark.parametrize("size", [8, 16, 48, 64])
def test_blocked_unit_lower_inverse(size):
    """(I + N)⁻¹ by 16x16 diagonal blocks and products equals the inverse (float64), and its
    closed-form gradient equals autodiff of jnp.linalg.inv on the strict lower triangle."""
    n = jnp.tril(normal(size, (size, size)) * 0.3, -1)
    eye = jnp.eye(size)
    assert rel_err(blocks.unit_lower_inverse(n), jnp.linalg.inv(eye + n)) < 1e-12
    w = normal(size + 1, (size, size))
    grad = jax.grad(lambda n: jnp.sum(blocks.unit_lower_inverse_vjp(n) * w))(n)
    expected = jax.grad(lambda n: jnp.sum(jnp.linalg.inv(eye + n) * w))(n)
    assert rel_err(grad, jnp.tril(expected, -1)) < 1e-12


def ones(length, heads=1, d=1):
    return jnp.ones((1, length, heads, d), jnp.float32)


GATED = {  # name -> f(q, k, v, log_gate [1, L, heads (, d)], **kw)
    "gla": lambda q, k, v, g, **kw: gated_linear_attention(q, k, v, g, scale=1.0, **kw),
    "gated_delta_rule": lambda q, k, v, g, **kw: gated_delta_rule(
        q, k, v, jnp.ones(g.shape[:3], q.dtype), g[..., 0] if g.ndim == 4 else g, scale=1.0,
        **kw),
}


@pytest.mark.parametrize("name", sorted(GATED))
@pytest.mark.parametrize("gates, expected", [
    ([-np.inf], [1.0]), ([0.0, -np.inf], [1.0, 1.0]), ([-2e38, -2e38], [1.0, 1.0]),
    ([-1e30, 0.0, -np.inf, 0.0], [1.0, 2.0, 1.0, 2.0])])
def test_kernel_gates_of_minus_inf_are_full_resets(name, gates, expected):
    """q = k = v = 1: a gate of -inf (or one whose decay underflows) forgets the past
    exactly; the right values need no NaN anywhere (the delta rule with β = 1 and unit keys
    forgets v anyway, so it gives 1 at every position)."""
    length = len(gates)
    g = jnp.asarray(gates, jnp.float32).reshape(1, length, 1)
    out = GATED[name](ones(length), ones(length), ones(length), g, chunk_size=16,
                      impl="pallas_interpret")
    want = expected if name == "gla" else [1.0] * length
    np.testing.assert_allclose(np.asarray(out).ravel(), want, rtol=1e-6)


def test_kernel_per_channel_gates_of_minus_inf_reset_their_channel_only():
    g = jnp.asarray([[0.0, 0.0], [-np.inf, 0.0], [0.0, -np.inf]], jnp.float32)[None, :, None]
    q, k = ones(3, d=2), ones(3, d=2)
    out = gated_linear_attention(q, k, ones(3), g, scale=1.0, chunk_size=16,
                                 impl="pallas_interpret")
    # channel 0 holds 1, 1, 2 (reset at 1); channel 1 holds 1, 2, 1 (reset at 2)
    np.testing.assert_allclose(np.asarray(out).ravel(), [2.0, 3.0, 3.0], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(GATED))
def test_kernel_random_gates_with_minus_inf_match_the_reference(name):
    """Random gates with a quarter of them -inf, packed rows and an initial state: values and
    gradients of the kernel equal the float64 sequential reference (1e-10), and are finite."""
    batch, length, heads, d = 1, 21, 2, 4
    q, k, v = (normal(i, (batch, length, heads, d)) for i in range(3))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    g = -jax.nn.softplus(normal(3, (batch, length, heads)))
    g = jnp.where(normal(4, g.shape) > 0.7, -jnp.inf, g)
    seg = jnp.asarray([[0] * 9 + [1] * 12])
    w = normal(5, (batch, length, heads, d))

    def loss(floats, impl):
        out = GATED[name](*floats, g, segment_ids=seg, chunk_size=8, impl=impl)
        return jnp.sum(out * w)

    ref = jax.value_and_grad(loss)((q, k, v), "reference")
    got = jax.value_and_grad(loss)((q, k, v), "pallas_interpret")
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(got))
    assert rel_err(got, ref) < 1e-10


@pytest.mark.parametrize("name", sorted(GATED))
@pytest.mark.parametrize("which", ["k", "v"])
def test_kernel_nan_at_a_later_position_stays_there(name, which):
    """A NaN key or value at position 13 (inside the second chunk of 8) leaves every output
    before it equal to the clean run, and the outputs from it on are NaN."""
    length, bad = 20, 13
    x = dict(q=normal(0, (1, length, 1, 4)), k=normal(1, (1, length, 1, 4)) / 2,
             v=normal(2, (1, length, 1, 4)))
    g = -jax.nn.softplus(normal(3, (1, length, 1)))
    run = lambda x: GATED[name](x["q"], x["k"], x["v"], g, chunk_size=8,
                                impl="pallas_interpret")
    clean = run(x)
    dirty = run({**x, which: x[which].at[0, bad, 0, 1].set(jnp.nan)})
    np.testing.assert_array_equal(np.asarray(dirty[:, :bad]), np.asarray(clean[:, :bad]))
    assert bool(jnp.isnan(dirty[:, bad:]).all())


@pytest.mark.parametrize("impl", ["xla", "pallas_interpret"])
def test_a_later_overflowing_score_reaches_no_earlier_output(impl):
    """Finite inputs whose q·k overflows float32 only for a pair the mask rules out (q at 2,
    k at 6): GLA's outputs before 6 equal the run without the large key (masks by where, not
    by a product with a zero decay). (The delta rule's intermediate u can itself overflow at
    such inputs, and a product of masked zeros with it is NaN: not covered.)"""
    name = "gla"
    length = 8
    q, k, v = (normal(i, (1, length, 1, 4)).astype(jnp.float32) for i in range(3))
    q = q.at[0, 2].multiply(1e20)
    g = -jax.nn.softplus(normal(3, (1, length, 1))).astype(jnp.float32)
    run = lambda k: GATED[name](q, k, v, g, chunk_size=8, impl=impl)
    big = run(k.at[0, 6].set(1e20))
    clean = run(k.at[0, 6].set(0.0))
    np.testing.assert_array_equal(np.asarray(big[:, :6]), np.asarray(clean[:, :6]))


@pytest.mark.parametrize("name", ["gla"])  # "delta": the same driver, another chunk step
def test_chunked_kernels_have_no_races_in_tpu_interpret_mode(name):
    """The chunk-pipelined TPU driver (kernels/tpu/chunked.py, which every recurrent TPU kernel
    runs on), forward and backward, under the TPU interpreter's race detection (every VMEM /
    DMA access checked against the simulated cores' vector clocks)."""
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as interpreter
    from jax.experimental.pallas import tpu as pltpu

    from jaxlm.kernels import delta_rule, linear_attention

    params = pltpu.InterpretParams(detect_races=True)
    batch, heads, length, d = 1, 1, 20, 8
    q, k, v = (normal(i, (batch, heads, length, d)).astype(jnp.float32) for i in range(3))
    g = -jax.nn.softplus(normal(3, (batch, heads, length))).astype(jnp.float32)
    starts = jnp.zeros((batch, length), bool).at[:, 7].set(True)
    state = jnp.zeros((batch, heads, d, d), jnp.float32)
    if name == "gla":
        fn = lambda q, k, v, g: linear_attention.gated_linear_attention(
            q, k, v, g[..., None], starts, state, chunk=8, interpret=params)
    else:
        fn = lambda q, k, v, g: delta_rule.gated_delta_rule(
            q, k / jnp.linalg.norm(k, axis=-1, keepdims=True), v, jax.nn.sigmoid(g), g, starts,
            state, chunk=8, interpret=params)
    loss = lambda *a: sum(jnp.sum(x * x) for x in fn(*a))
    pltpu.reset_tpu_interpret_mode_state()
    jax.block_until_ready(jax.grad(loss, argnums=range(4))(q, k, v, g))
    assert interpreter.races is not None and not interpreter.races.races_found
