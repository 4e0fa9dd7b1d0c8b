"""The Mosaic GPU (Hopper) block-sparse flash attention of
:mod:`jaxlm.kernels.mosaic_gpu.flash_attention`.

On CPU the forward kernel runs in Mosaic GPU's interpreter (TMA ring, barriers and shared
memory simulated, races detected in one test) at tiny shapes: batch 1, 1-2 heads, 2-3 blocks of 64, head dim 64, bfloat16
inputs against the op's float64 reference with the same masks. Its backward is not a kernel (it
recomputes in XLA block by block); one test checks the gradients. A lowering test runs
Mosaic GPU's compiler front end for CUDA at head dim 128 and length 1024 on the CPU host; the
``gpu`` test compiles for a real GPU and compares with the XLA form (skipped without one).

Tolerance: bfloat16 operands (q, k, v and the probabilities as read by P V) give relative
errors near 2e-3 against float64; the tests allow 1e-2.
"""

import jax
import jax.numpy as jnp
import pytest

from jaxlm.ops import attention, block_sparse_attention
from jaxlm.ops.attention import masked_attention
from tests.helpers import rel_err
from tests.kernels.mosaic_gpu_helpers import needs_gpu, needs_mosaic_gpu, no_races

pytestmark = needs_mosaic_gpu
TOL = 1e-2


def kernel():
    from jaxlm.kernels.mosaic_gpu import flash_attention

    return flash_attention.flash_attention


def qkv(batch, length, heads, kv_heads, d, seed=0, dtype=jnp.bfloat16):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (batch, length, heads, d)).astype(dtype)
    k = jax.random.normal(ks[1], (batch, length, kv_heads, d)).astype(dtype)
    v = jax.random.normal(ks[2], (batch, length, kv_heads, d)).astype(dtype)
    return q, k, v


f64 = lambda *xs: [x.astype(jnp.float64) for x in xs]


def test_causal_packed_rows_with_gqa_match_reference():
    """Causal, two packed documents, ragged length (150: 3 blocks, the last partial), two
    query heads on one kv head."""
    q, k, v = qkv(1, 150, 2, 1, 64)
    seg = jnp.zeros((1, 150), jnp.int32).at[:, 70:].set(3)
    out = kernel()(q, k, v, causal=True, segment_ids=seg, interpret=True)
    ref = attention(*f64(q, k, v), causal=True, segment_ids=seg, impl="reference")
    assert out.dtype == q.dtype and out.shape == ref.shape
    assert rel_err(out, ref) < TOL


@pytest.mark.parametrize("causal", [False, True])
def test_block_mask_skips_blocks_and_matches_reference(causal):
    """A per-head block mask over 3 blocks with skipped blocks; on head 1 query block 1 reads
    nothing (its output must be 0). Shared-memory race detection on."""
    q, k, v = qkv(1, 192, 2, 2, 64, seed=1)
    mask = jnp.array([[[1, 0, 1], [1, 1, 0], [0, 1, 1]],
                      [[1, 1, 0], [0, 0, 0], [1, 0, 1]]], bool)[None]
    with no_races():
        out = kernel()(q, k, v, causal=causal, block_mask=mask, interpret=True,
                       detect_races=True)
    ref = block_sparse_attention(*f64(q, k, v), mask, block_size=64, causal=causal,
                                 impl="reference")
    assert rel_err(out, ref) < TOL
    assert jnp.all(out[0, 64:128, 1] == 0)


def test_padded_keys_are_never_read_whatever_the_ids():
    """Ids at int32's extremes, length 80 (the last block half padding): a query whose id is
    int32's largest must not read the padded keys (masked by position, not by an id)."""
    info = jnp.iinfo(jnp.int32)
    seg = jnp.concatenate([jnp.full((1, 32), info.min), jnp.full((1, 32), 5),
                           jnp.full((1, 8), info.max), jnp.full((1, 8), 5)], 1).astype(jnp.int32)
    q, k, v = qkv(1, 80, 1, 1, 64, seed=4)
    out = kernel()(q, k, v, causal=False, segment_ids=seg, interpret=True)
    mask = (seg[:, :, None] == seg[:, None, :])[:, None]
    ref = masked_attention(*f64(q, k, v), mask, 64 ** -0.5)
    assert rel_err(out, ref) < TOL


def test_gradients_through_the_custom_vjp_match_reference():
    """Causal, packed rows, a block mask, GQA and a ragged length (100): gradients of q, k, v
    (the backward recomputes in XLA, block by block, in float32)."""
    length = 100
    q, k, v = qkv(1, length, 2, 1, 64, seed=2)
    seg = jnp.zeros((1, length), jnp.int32).at[:, 70:].set(1)
    mask = jnp.array([[1, 0], [0, 1]], bool)[None, None]
    w = jax.random.normal(jax.random.key(3), (1, length, 2, 64))

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v).astype(w.dtype) * w)

    fast = lambda q, k, v: kernel()(q, k, v, causal=True, segment_ids=seg, block_mask=mask,
                                    interpret=True)

    def slow(q, k, v):
        pos = jnp.arange(length)
        blocks = mask[:, :, pos // 64][:, :, :, pos // 64]
        m = (blocks & (pos[None, :] <= pos[:, None])
             & (seg[:, None, :, None] == seg[:, None, None, :]))
        return masked_attention(q, k, v, m, 64 ** -0.5)

    grads = jax.grad(loss(fast), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(slow), argnums=(0, 1, 2))(*f64(q, k, v))
    for name, g, r in zip("qkv", grads, ref):
        assert g.dtype == jnp.bfloat16 and rel_err(g, r) < TOL, name


def test_kernel_lowers_for_cuda_at_production_widths():
    """The forward kernel goes through Mosaic GPU's lowering for CUDA on this host (layouts,
    transforms, wgmma shapes, scalar reads of the fetch tables) at head dim 128, length 1024,
    with GQA, packed rows and a block mask."""
    batch, length, heads, kv_heads, d = 2, 1024, 4, 2, 128
    n = length // 64
    spec = lambda *s, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(s, dtype)

    def run(q, k, v, seg, mask):
        return kernel()(q, k, v, causal=True, segment_ids=seg, block_mask=mask)

    args = (spec(batch, length, heads, d), spec(batch, length, kv_heads, d),
            spec(batch, length, kv_heads, d), spec(batch, length, dtype=jnp.int32),
            spec(1, heads, n, n, dtype=bool))
    text = jax.jit(run).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert "mosaic_gpu" in text


def test_pallas_entry_lowers_to_mosaic_gpu_for_cuda_forward_and_backward(monkeypatch):
    """impl='pallas''s entry point, compiled for a GPU with a block mask and a JAX without
    the Triton lowering (0.12), runs this kernel (its backward the XLA recomputation)."""
    from jaxlm.kernels import flash_attention as flash

    monkeypatch.setattr(flash, "triton_available", lambda: False)
    entry = flash.flash_attention.__wrapped__ if hasattr(flash.flash_attention, "__wrapped__") \
        else flash.flash_attention

    spec = lambda *s, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(s, dtype)
    mask = jnp.ones((1, 2, 2, 2), bool)

    def loss(q, k, v):
        out = entry(q, k, v, block_mask=mask, block_size=128, platform="gpu")
        return jnp.sum(out.astype(jnp.float32))

    args = (spec(1, 256, 2, 64), spec(1, 256, 1, 64), spec(1, 256, 1, 64))
    text = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).trace(*args).lower(
        lowering_platforms=("cuda",)).as_text()
    assert "mosaic_gpu" in text and "triton" not in text


def test_compiled_gpu_calls_go_to_mosaic_gpu_where_triton_is_gone(monkeypatch):
    from jaxlm.kernels import flash_attention as flash
    from jaxlm.kernels.flash_attention import _mosaic_gpu_takes

    q, k, v = qkv(1, 64, 2, 1, 64)
    monkeypatch.setattr(flash, "triton_available", lambda: True)
    assert not _mosaic_gpu_takes(q, k, v, None, 64, False, "gpu")  # Triton's kernels keep it
    monkeypatch.setattr(flash, "triton_available", lambda: False)
    assert _mosaic_gpu_takes(q, k, v, None, 64, False, "gpu")
    assert _mosaic_gpu_takes(q, k, v, None, 128, False, "gpu")  # mask refined to 64
    assert not _mosaic_gpu_takes(q, k, v, None, 64, True, "gpu")  # interpreted
    assert not _mosaic_gpu_takes(q, k, v, None, 64, False, "tpu")
    assert not _mosaic_gpu_takes(q, k, v, 32, 64, False, "gpu")  # a window: cuDNN's
    assert not _mosaic_gpu_takes(q, k, v, None, 32, False, "gpu")
    assert not _mosaic_gpu_takes(*(x.astype(jnp.float32) for x in (q, k, v)), None, 64,
                                 False, "gpu")
    assert not _mosaic_gpu_takes(q[..., :32], k[..., :32], v, None, 64, False, "gpu")


def test_rejects_what_it_cannot_run():
    q, k, v = qkv(1, 64, 2, 1, 64)
    with pytest.raises(ValueError, match="16-bit dtype"):
        kernel()(q.astype(jnp.float32), k, v, interpret=True)
    with pytest.raises(ValueError, match="64 or 128"):
        kernel()(q[..., :32], k[..., :32], v, interpret=True)
    with pytest.raises(ValueError, match="multiple of 64"):
        kernel()(q, k, v, block_size=32, interpret=True)
    with pytest.raises(ValueError, match="block_mask must have shape"):
        kernel()(q, k, v, block_mask=jnp.ones((1, 2, 2, 2), bool), interpret=True)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("causal", [False, True])
def test_on_gpu_matches_xla_form(causal):
    """Compiled for the GPU through impl='pallas': values and gradients against the XLA form,
    half the key blocks masked, GQA."""
    q, k, v = qkv(2, 1000, 8, 2, 128, seed=4)
    n = -(-1000 // 64)
    mask = jax.random.bernoulli(jax.random.key(5), 0.5, (2, 8, n, n))
    fn = lambda impl: lambda q, k, v: block_sparse_attention(
        q, k, v, mask, block_size=64, causal=causal, impl=impl)
    out = jax.jit(fn("pallas"))(q, k, v)
    ref = jax.jit(fn("xla"))(*f64(q, k, v))
    assert rel_err(out, ref) < TOL
    w = jax.random.normal(jax.random.key(6), out.shape)
    loss = lambda f: lambda *a: jnp.sum(f(*a).astype(w.dtype) * w)
    grads = jax.jit(jax.grad(loss(fn("pallas")), argnums=(0, 1, 2)))(q, k, v)
    refs = jax.jit(jax.grad(loss(fn("xla")), argnums=(0, 1, 2)))(*f64(q, k, v))
    for name, g, r in zip("qkv", grads, refs):
        assert rel_err(g, r) < TOL, name
