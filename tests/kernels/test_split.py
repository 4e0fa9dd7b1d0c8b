"""A row split into pieces that run as separate programs (jaxlm.kernels.split) equals the
unsplit recurrence. The split is independent of the kernel it wraps, so most tests wrap the
ops' token-by-token references (float64: agreement to 1e-10); one runs the Mosaic GPU kernel
in its interpreter (bfloat16: 1e-2 against float64, as that kernel's own tests)."""

import jax
import jax.numpy as jnp
import pytest

from jaxlm.kernels import backend, split
from jaxlm.ops.delta_rule import _reference as delta_reference
from jaxlm.ops.linear_attention import _reference as gla_reference
from tests.helpers import rel_err


def gla_inputs(batch, heads, length, dk, dv, per_channel, seed=0):
    ks = jax.random.split(jax.random.key(seed), 5)
    normal = lambda i, shape: jax.random.normal(ks[i], shape, jnp.float64)
    q, k = (normal(i, (batch, heads, length, dk)) * dk ** -0.5 for i in (0, 1))
    v = normal(2, (batch, heads, length, dv))
    log_g = -jax.nn.softplus(normal(3, (batch, heads, length, dk if per_channel else 1)))
    log_g = log_g.at[0, 0, length // 3, 0].set(-jnp.inf)  # a reset inside a piece
    starts = jnp.zeros((batch, length), bool).at[:, length // 2].set(True)
    starts = starts.at[:, 16].set(True)  # a document starting at a piece's first position
    state = normal(4, (batch, heads, dk, dv))
    return q, k, v, log_g, starts, state


@pytest.mark.parametrize("per_channel,pieces", [(False, 2), (True, 3)])
def test_gla_split_equals_whole_row(per_channel, pieces):
    args = gla_inputs(1, 2, 45, 4, 3, per_channel)  # ragged: 45 = 3 pieces of 16, padded
    out, final = split.gated_linear_attention(gla_reference, *args, pieces=pieces, chunk=8)
    ref_out, ref_final = gla_reference(*args)
    assert out.shape == ref_out.shape and rel_err(out, ref_out) < 1e-10
    assert rel_err(final, ref_final) < 1e-10

    def loss(fn, q, k, v, log_g, state):
        o, f = fn(q, k, v, log_g, args[4], state)
        return jnp.sum(o * jnp.cos(o)) + jnp.sum(f ** 2)

    whole = jax.grad(lambda *a: loss(gla_reference, *a), argnums=range(5))
    cut = jax.grad(lambda *a: loss(lambda *b: split.gated_linear_attention(
        gla_reference, *b, pieces=pieces, chunk=8), *a), argnums=range(5))
    ins = args[:4] + args[5:]
    for name, g, r in zip(("q", "k", "v", "log_g", "state"), cut(*ins), whole(*ins)):
        assert rel_err(g, r) < 1e-10, name


def test_gla_split_keeps_a_nan_out_of_a_later_document():
    q, k, v, log_g, starts, state = gla_inputs(1, 1, 48, 4, 3, per_channel=False)
    v = v.at[0, 0, 5].set(jnp.nan)  # piece 0; a document starts at 24 (piece 1's middle)
    out, _ = split.gated_linear_attention(gla_reference, q, k, v, log_g, starts, state,
                                          pieces=3, chunk=8)
    assert bool(jnp.all(jnp.isfinite(out[0, 0, :5])))
    assert bool(jnp.all(jnp.isnan(out[0, 0, 5:16])))  # until the start at 16
    assert bool(jnp.all(jnp.isfinite(out[0, 0, 16:])))


def test_delta_rule_split_equals_whole_row():
    batch, heads, length, dk, dv = 1, 1, 37, 4, 3
    ks = jax.random.split(jax.random.key(1), 6)
    normal = lambda i, shape: jax.random.normal(ks[i], shape, jnp.float64)
    q = normal(0, (batch, heads, length, dk))
    k = normal(1, (batch, heads, length, dk))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = normal(2, (batch, heads, length, dv))
    beta = jax.nn.sigmoid(normal(3, (batch, heads, length)))
    log_a = (-jax.nn.softplus(normal(4, (batch, heads, length)))).at[0, 0, 20].set(-40.0)
    starts = jnp.zeros((batch, length), bool).at[:, 11].set(True)
    state = normal(5, (batch, heads, dk, dv))
    args = (q, k, v, (beta, log_a), starts, state)
    cut = lambda q, k, v, gates, state: split.affine_recurrence(
        delta_reference, q, k, v, gates, starts, state, pieces=3, chunk=4)
    whole = lambda q, k, v, gates, state: delta_reference(q, k, v, *gates, starts, state)
    ins = args[:4] + args[5:]
    for a, b in zip(cut(*ins), whole(*ins)):
        assert rel_err(a, b) < 1e-10
    loss = lambda fn: lambda *a: sum(jnp.sum(jnp.sin(x)) for x in fn(*a))
    grads = jax.grad(loss(cut), argnums=range(5))(*ins)
    ref = jax.grad(loss(whole), argnums=range(5))(*ins)
    assert rel_err(grads, ref) < 1e-10


def test_pieces_for_fills_the_cores():
    assert split.pieces_for(4 * 16, 16384, 64, cores=132) == 2  # 128 blocks: one wave
    assert split.pieces_for(1 * 16, 16384, 64, cores=132) == 8
    assert split.pieces_for(100, 16384, 64, cores=132) == 1  # 2 pieces would need two waves
    assert split.pieces_for(256, 16384, 64, cores=132) == 1
    assert split.pieces_for(16, 512, 64, cores=132) == 2  # pieces of at least 4 chunks
    assert split.pieces_for(16, 100, 64, cores=132) == 1


@pytest.mark.parametrize("batch,length", [(0, 8), (1, 0)])
def test_split_of_an_empty_call_is_the_unsplit_call(batch, length):
    args = gla_inputs(1, 1, 16, 4, 3, per_channel=False)
    q, k, v, log_g = (x[:batch, :, :length] for x in args[:4])
    starts, state = args[4][:batch, :length], args[5][:batch]
    out, final = split.gated_linear_attention(gla_reference, q, k, v, log_g, starts, state,
                                              pieces=3, chunk=4)
    assert out.shape == v.shape and final.shape == state.shape
    out, final = split.affine_recurrence(delta_reference, q, k, v, (log_g[..., 0] * 0,
                                         log_g[..., 0]), starts, state, pieces=3, chunk=4)
    assert out.shape == v.shape and final.shape == state.shape
    assert split.pieces_for(batch, length, 64, cores=132) == 1


def test_split_rejects_pieces_below_one():
    args = gla_inputs(1, 1, 16, 4, 3, per_channel=False)
    with pytest.raises(ValueError, match="pieces must be a positive integer, got 0"):
        split.gated_linear_attention(gla_reference, *args, pieces=0, chunk=4)


@pytest.mark.slow
@pytest.mark.skipif(not backend.mosaic_gpu_available(),
                    reason="this JAX has no Mosaic GPU Pallas front end")
def test_split_mosaic_gpu_kernel_in_interpreter():
    from jaxlm.kernels.mosaic_gpu import linear_attention as mgpu

    q, k, v, log_g, starts, state = gla_inputs(1, 1, 200, 64, 64, per_channel=False, seed=3)
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    state = state.astype(jnp.float32)
    run = lambda *a: mgpu.gated_linear_attention(*a, interpret=True)
    out, final = split.gated_linear_attention(run, q, k, v, log_g.astype(jnp.float32), starts,
                                              state, pieces=2, chunk=64)
    f64 = lambda x: x.astype(jnp.float64)
    ref_out, ref_final = gla_reference(f64(q), f64(k), f64(v), f64(log_g), starts, f64(state))
    assert out.dtype == jnp.bfloat16
    assert rel_err(out, ref_out) < 1e-2 and rel_err(final, ref_final) < 1e-2


@pytest.mark.skipif(not backend.mosaic_gpu_available(),
                    reason="this JAX has no Mosaic GPU Pallas front end")
@pytest.mark.parametrize("op", ["gla", "delta"])
def test_split_kernels_lower_for_cuda(op):
    """A GPU call cut into pieces (forward and backward) lowers for CUDA through the Mosaic GPU
    kernels at head width 128."""
    from jaxlm.kernels import delta_rule, linear_attention

    batch, heads, length, d = 1, 2, 1024, 128
    spec = lambda *s, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(s, dtype)
    starts = jnp.zeros((batch, length), bool)
    if op == "gla":
        fn = lambda q, k, v, g, s: linear_attention.gated_linear_attention(
            q, k, v, g[..., None], starts, s, platform="gpu", pieces=3)
    else:
        fn = lambda q, k, v, g, s: delta_rule.gated_delta_rule(
            q, k, v, jax.nn.sigmoid(g), g, starts, s, platform="gpu", pieces=3)
    loss = lambda *a: sum(jnp.sum(x.astype(jnp.float32)) for x in fn(*a))
    args = (spec(batch, heads, length, d),) * 3 + (
        spec(batch, heads, length, dtype=jnp.float32), spec(batch, heads, d, d, dtype=jnp.float32))
    text = jax.jit(jax.grad(loss, argnums=range(5))).trace(*args).lower(
        lowering_platforms=("cuda",)).as_text()
    assert text.count("mosaic_gpu") >= 2
