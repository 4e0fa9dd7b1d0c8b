"""Linear attention, GLA, delta rule, gated delta rule: the chunkwise xla forms equal the
sequential references (values and gradients with respect to every input), in float64. The
tolerance 1e-10 relative only absorbs summation order (observed errors are ~1e-15)."""

import functools

import jax
import jax.numpy as jnp
import pytest

from jaxlm.ops import delta_rule, gated_delta_rule, gated_linear_attention, linear_attention
from tests.helpers import assert_forms_agree, forms_and_grads, rel_err

TOL = 1e-10
DK, DV, HEADS = 5, 4, 2


def inputs(key, batch, length, *, packed=True):
    ks = jax.random.split(key, 9)
    normal = lambda k, shape: jax.random.normal(k, shape, jnp.float64)
    k = normal(ks[1], (batch, length, HEADS, DK))
    return dict(
        q=normal(ks[0], (batch, length, HEADS, DK)),
        k=k / jnp.linalg.norm(k, axis=-1, keepdims=True),
        v=normal(ks[2], (batch, length, HEADS, DV)),
        log_g=-jax.nn.softplus(normal(ks[3], (batch, length, HEADS, DK))),
        log_a=-jax.nn.softplus(normal(ks[4], (batch, length, HEADS))),
        beta=jax.nn.sigmoid(normal(ks[5], (batch, length, HEADS))),
        state=normal(ks[6], (batch, HEADS, DK, DV)),
        seg=(jnp.cumsum(jax.random.bernoulli(ks[7], 0.12, (batch, length)), axis=1)
             if packed else None),
    )


# Each op as f(x, impl, chunk) -> (out, final_state), differentiable in the float inputs.
OPS = {
    "linear_attention": lambda x, **kw: linear_attention(
        x["q"], x["k"], x["v"], initial_state=x["state"], segment_ids=x["seg"], **kw),
    "linear_attention_normalized": lambda x, **kw: linear_attention(
        jax.nn.elu(x["q"]) + 1, jax.nn.elu(x["k"]) + 1, x["v"], normalize=True,
        segment_ids=x["seg"], **kw),
    "gla_per_channel": lambda x, **kw: gated_linear_attention(
        x["q"], x["k"], x["v"], x["log_g"], initial_state=x["state"], segment_ids=x["seg"],
        **kw),
    "gla_per_head": lambda x, **kw: gated_linear_attention(
        x["q"], x["k"], x["v"], x["log_a"], initial_state=x["state"], segment_ids=x["seg"],
        **kw),
    "delta_rule": lambda x, **kw: delta_rule(
        x["q"], x["k"], x["v"], x["beta"], initial_state=x["state"], segment_ids=x["seg"],
        **kw),
    "gated_delta_rule": lambda x, **kw: gated_delta_rule(
        x["q"], x["k"], x["v"], x["beta"], x["log_a"], initial_state=x["state"],
        segment_ids=x["seg"], **kw),
}


@functools.partial(jax.jit, static_argnames=("name", "impl", "chunk"))
def run(name, x, impl, chunk):
    return OPS[name](x, impl=impl, chunk_size=chunk, return_final_state=True)


def op_forms_and_grads(name, x, weights, chunk, impls=("reference", "xla")):
    floats = {k: v for k, v in x.items() if k != "seg"}
    op = lambda floats, impl: OPS[name]({**x, **floats}, impl=impl, chunk_size=chunk,
                                        return_final_state=True)
    return forms_and_grads(op, floats, weights, impls)


# (batch, length, chunk): ragged length, batch 1, length shorter than the chunk.
@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("batch, length, chunk", [(2, 37, 8), (1, 5, 64)])
def test_chunked_equals_reference(name, batch, length, chunk):
    x = inputs(jax.random.key(length), batch, length)
    weights = jax.random.normal(jax.random.key(9), (batch, length, HEADS, DV), jnp.float64)
    assert_forms_agree(op_forms_and_grads(name, x, weights, chunk), TOL)


# The Pallas kernels (jaxlm.kernels), run in Pallas' interpreter: ragged length over 3 chunks,
# packed rows, initial state; a second chunk size for one op. Same 1e-10 tolerance.
@pytest.mark.parametrize("name, batch, chunk", [
    ("gla_per_channel", 2, 16), ("gla_per_head", 1, 16), ("gla_per_head", 2, 8),
    ("linear_attention_normalized", 1, 16), ("gated_delta_rule", 2, 16), ("delta_rule", 1, 8)])
def test_pallas_kernel_equals_reference(name, batch, chunk):
    x = inputs(jax.random.key(7), batch, 37)
    weights = jax.random.normal(jax.random.key(8), (batch, 37, HEADS, DV), jnp.float64)
    results = op_forms_and_grads(name, x, weights, chunk, ("reference", "pallas_interpret"))
    assert_forms_agree(results, TOL)


@pytest.mark.parametrize("name", sorted(OPS))
def test_result_does_not_depend_on_chunk_size(name):
    x = inputs(jax.random.key(1), 2, 48)
    ref = run(name, x, "xla", 48)
    for chunk in (1, 7):
        assert rel_err(run(name, x, "xla", chunk), ref) < TOL


@pytest.mark.parametrize("name", ["gla_per_channel", "gated_delta_rule", "delta_rule"])
def test_two_halves_with_passed_state_equal_the_whole(name):
    x = inputs(jax.random.key(2), 2, 40, packed=False)
    whole_out, whole_state = run(name, x, "xla", 16)
    first = {k: (v[:, :23] if k not in ("state", "seg") else v) for k, v in x.items()}
    out1, state1 = run(name, first, "xla", 16)
    second = {k: (v[:, 23:] if k not in ("state", "seg") else v) for k, v in x.items()}
    out2, state2 = run(name, {**second, "state": state1}, "xla", 16)
    assert rel_err(jnp.concatenate([out1, out2], axis=1), whole_out) < TOL
    assert rel_err(state2, whole_state) < TOL


@pytest.mark.parametrize("name", ["gla_per_channel", "gla_per_head", "gated_delta_rule"])
def test_very_negative_log_gates_stay_finite(name):
    """Log-gates down to -50 per step: decays underflow to 0 but nothing overflows."""
    x = inputs(jax.random.key(3), 1, 40)
    x = {**x, "log_g": -50.0 * jax.nn.sigmoid(x["log_g"]) * 2,
         "log_a": -50.0 * jax.nn.sigmoid(x["log_a"]) * 2}
    weights = jax.random.normal(jax.random.key(4), (1, 40, HEADS, DV), jnp.float64)
    results = op_forms_and_grads(name, x, weights, 16)
    for grads, values in results.values():
        assert all(jnp.isfinite(leaf).all() for leaf in jax.tree.leaves((values, grads)))
    assert rel_err(results["xla"][1], results["reference"][1]) < TOL


@pytest.mark.parametrize("name", ["gla_per_channel", "delta_rule"])
def test_float32_close_to_float64(name):
    """float32 inputs: within 1e-5 of the float64 result (float32 rounding over short sums).
    Matrix products in full float32 (GPUs default to TF32, ~1e-3)."""
    x = inputs(jax.random.key(5), 2, 64)
    ref, _ = run(name, x, "reference", 16)
    x32 = {k: (v.astype(jnp.float32) if v is not None and v.dtype == jnp.float64 else v)
           for k, v in x.items()}
    with jax.default_matmul_precision("highest"):
        out, state = OPS[name](x32, impl="xla", chunk_size=16, return_final_state=True)
    assert out.dtype == jnp.float32 and state.dtype == jnp.float32
    assert rel_err(out.astype(jnp.float64), ref) < 1e-5


@pytest.mark.parametrize("name", ["gla_per_channel", "gated_delta_rule"])
def test_pallas_kernel_in_float32_and_bfloat16(name):
    """The kernels accumulate in float32 whatever the inputs: float32 inputs within 1e-5 of the
    float64 result; bfloat16 inputs within 2e-2 of the float64 result on the same rounded
    inputs (the output is rounded to bfloat16)."""
    x = inputs(jax.random.key(5), 1, 40)
    for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
        low = {k: (v.astype(dtype) if v is not None and v.dtype == jnp.float64 else v)
               for k, v in x.items()}
        ref, _ = run(name, jax.tree.map(lambda v: v.astype(jnp.float64), low), "reference", 16)
        with jax.default_matmul_precision("highest"):
            out, _ = run(name, low, "pallas_interpret", 16)
        assert out.dtype == dtype
        assert rel_err(out.astype(jnp.float64), ref) < tol


def test_bad_shapes_are_named():
    x = inputs(jax.random.key(6), 1, 8)
    with pytest.raises(ValueError, match=r"beta must have shape \[batch, length, heads\]"):
        delta_rule(x["q"], x["k"], x["v"], x["beta"][..., :1])
    with pytest.raises(ValueError, match="log_g must have shape"):
        gated_linear_attention(x["q"], x["k"], x["v"], x["log_g"][..., :2])
    with pytest.raises(ValueError, match="initial_state must have shape"):
        linear_attention(x["q"], x["k"], x["v"], initial_state=x["state"][..., :2])
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        linear_attention(x["q"], x["k"], x["v"], chunk_size=-4)
    with pytest.raises(ValueError, match="k must have shape"):
        linear_attention(x["q"], x["k"][:, :3], x["v"])


def test_unit_lower_inverse_matches_inverse_and_its_gradient():
    """Forward substitution vs jnp.linalg.inv, and the closed-form vjp vs autodiff of inv
    (float64)."""
    from jaxlm.ops.delta_rule import unit_lower_inverse
    n = jnp.tril(jax.random.normal(jax.random.key(8), (3, 2, 9, 9), jnp.float64) * 0.3, -1)
    eye = jnp.eye(9)
    assert rel_err(unit_lower_inverse(n), jnp.linalg.inv(eye + n)) < TOL
    weights = jax.random.normal(jax.random.key(9), n.shape, jnp.float64)
    grad = jax.grad(lambda n: jnp.sum(unit_lower_inverse(n) * weights))(n)
    expected = jax.grad(lambda n: jnp.sum(jnp.linalg.inv(eye + n) * weights))(n)
    assert rel_err(grad, jnp.tril(expected, -1)) < TOL
