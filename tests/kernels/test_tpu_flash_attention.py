"""The block-pipelined TPU flash-attention kernel (jaxlm.kernels.tpu.flash_attention) in Pallas'
TPU interpreter (simulated VMEM, SMEM and DMAs) against jaxlm.ops.attention's materialized
reference: values and gradients in float64 (tolerance 1e-10 relative: the same sums in another
order) and bfloat16 (3e-2 relative against the float64 reference on the same rounded inputs:
bfloat16 operands and probabilities, float32 accumulation). Each configuration compiles the
interpreter once (several seconds), so the cases combine features: causal + window + packed
documents + GQA at batch 2; non-causal + window + a block mask with an empty query block +
documents (one row with out-of-order ids) at batch 2; no mask at all; bfloat16 causal + a per-row block mask. No length is a multiple of
the block. Then: the index maps never fetch a block the step does not use, non-finite values
do not leak, and the kernels lower to Mosaic at 1K and 64K tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.kernels.flash_attention import _Config
from jaxlm.kernels.tpu import flash_attention as tpu_flash
from jaxlm.ops import attention
from jaxlm.ops.attention import attention_mask, masked_attention
from jaxlm.ops.sparse_attention import block_sparse_attention
from tests.helpers import normal, rel_err

TOL = 1e-10
BF16_TOL = 3e-2


def qkv(seed, batch, length, heads, kv_heads, d=8, dtype=jnp.float64):
    return tuple(normal(3 * seed + i, (batch, length, h, d)).astype(dtype)
                 for i, h in enumerate((heads, kv_heads, kv_heads)))


def packed(batch, length, starts):
    """Segment ids [batch, length]: row r starts a new document at each of starts[r]."""
    ids = np.zeros((batch, length), np.int32)
    for r, row in enumerate(starts):
        for s in row:
            ids[r, s:] += 1
    return jnp.asarray(ids)


def value_and_grads(fn):
    """A jitted (q, k, v, weights, *args) -> ((sum(out * weights) over the finite outputs,
    out), gradients with respect to q, k, v) of out = fn(q, k, v, *args)."""
    def loss(q, k, v, weights, *args):
        out = fn(q, k, v, *args)
        return jnp.sum(jnp.where(jnp.isfinite(out), out, 0) * weights), out
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


# causal + window + packed documents + GQA, batch 2, length 40 = 5 blocks of 8 (the last
# document of row 1 is shorter than a block; the window crosses block edges)
A = dict(batch=2, length=37, heads=2, kv_heads=1, block=8, window=11)


KERNEL_A = value_and_grads(lambda q, k, v, seg: tpu_flash.flash_attention(
    q, k, v, causal=True, window=A["window"], segment_ids=seg, block_size=A["block"],
    interpret=True))  # one compile for the two tests of configuration A
REFERENCE_A = value_and_grads(lambda q, k, v, seg: attention(
    q, k, v, causal=True, window=A["window"], segment_ids=seg, impl="reference"))


def config_a(seed):
    q, k, v = qkv(seed, A["batch"], A["length"], A["heads"], A["kv_heads"])
    return q, k, v, packed(A["batch"], A["length"], [[13, 30], [5]])


def test_causal_window_packed_gqa_float64():
    q, k, v, seg = config_a(1)
    weights = normal(7, q.shape)
    assert rel_err(KERNEL_A(q, k, v, weights, seg), REFERENCE_A(q, k, v, weights, seg)) < TOL


def test_non_finite_values_reach_only_the_queries_that_read_them():
    """Inf in v at one position and NaN in k at a later one: exactly the query rows whose mask
    allows either key are NaN; every other row, and the gradients of a loss over those rows,
    equal the reference on the inputs with those entries set to 0 (same jit as above)."""
    q, k, v, seg = config_a(1)
    bad_v, bad_k = 20, 33
    v_bad = v.at[1, bad_v, 0, 3].set(jnp.inf)
    k_bad = k.at[1, bad_k, 0, 0].set(jnp.nan)
    pos = jnp.arange(A["length"])
    mask = attention_mask(pos, pos, causal=True, window=A["window"], q_segment=seg,
                          k_segment=seg)  # [batch, q, k]
    poisoned = np.zeros((A["batch"], A["length"], A["heads"]), bool)
    poisoned[1] = np.asarray(mask[1, :, bad_v] | mask[1, :, bad_k])[:, None]
    assert poisoned[1, bad_v:bad_k].any() and not poisoned[1, :bad_v].any()
    weights = normal(7, q.shape)
    (_, out), grads = KERNEL_A(q, k_bad, v_bad, weights, seg)
    assert np.array_equal(np.asarray(jnp.any(~jnp.isfinite(out), axis=-1)), poisoned)
    assert np.asarray(jnp.all(jnp.isnan(out[poisoned])))
    clean_k, clean_v = k.at[1, bad_k, 0, 0].set(0), v.at[1, bad_v, 0, 3].set(0)
    keep = jnp.asarray(~poisoned)[..., None]
    (_, ref_out), ref_grads = REFERENCE_A(q, clean_k, clean_v, jnp.where(keep, weights, 0),
                                          seg)
    assert rel_err(jnp.where(keep, out, 0), jnp.where(keep, ref_out, 0)) < TOL
    assert rel_err(grads, ref_grads) < TOL


def test_non_causal_window_block_mask_documents_float64():
    """Per-head block mask broadcast over the batch (query block 1 reads nothing), a window,
    and segment ids (the fetch table and the document spans together): row 0 packed, row 1
    with ids out of order and at int32's extremes, compared by equality."""
    batch, length, heads, kv_heads, block, window = 2, 37, 2, 2, 8, 13
    n = -(-length // block)
    q, k, v = qkv(2, batch, length, heads, kv_heads)
    info = np.iinfo(np.int32)
    seg = jnp.asarray(np.stack([np.asarray(packed(1, length, [[3, 11, 12, 30]])[0]),
                                np.r_[[info.min] * 9, [info.max] * 9, [5] * 9,
                                      [info.min] * 10]]).astype(np.int32))
    block_mask = jnp.asarray(np.random.default_rng(3).random((1, heads, n, n)) < 0.6)
    block_mask = block_mask.at[:, :, 1, :].set(False)
    tokens = jnp.repeat(jnp.repeat(block_mask, block, 2), block, 3)[..., :length, :length]
    pos = jnp.arange(length)
    same = (seg[:, :, None] == seg[:, None, :])[:, None]
    mask = tokens & attention_mask(pos, pos, causal=False, window=window) & same
    weights = normal(8, q.shape)
    ref = value_and_grads(lambda q, k, v: masked_attention(q, k, v, mask, 8 ** -0.5))(
        q, k, v, weights)
    got = value_and_grads(lambda q, k, v: tpu_flash.flash_attention(
        q, k, v, causal=False, window=window, segment_ids=seg, block_mask=block_mask,
        block_size=block, interpret=True))(q, k, v, weights)
    assert rel_err(got, ref) < TOL
    assert float(jnp.abs(got[0][1][:, block:2 * block]).max()) == 0.0  # the empty block


def test_dense_non_causal_float64():
    """No mask at all: every step visited, no pl.when; batch 1, one head, length 20."""
    q, k, v = qkv(5, 1, 20, 1, 1)
    weights = normal(10, q.shape)
    ref = value_and_grads(lambda q, k, v: attention(q, k, v, causal=False, impl="reference"))(
        q, k, v, weights)
    got = value_and_grads(lambda q, k, v: tpu_flash.flash_attention(
        q, k, v, causal=False, block_size=8, interpret=True))(q, k, v, weights)
    assert rel_err(got, ref) < TOL


def test_bfloat16_causal_block_mask_per_row():
    batch, length, heads, kv_heads, block = 2, 45, 2, 1, 16
    n = -(-length // block)
    q, k, v = qkv(4, batch, length, heads, kv_heads, dtype=jnp.bfloat16)
    block_mask = jnp.asarray(np.random.default_rng(5).random((batch, 1, n, n)) < 0.7)
    block_mask = block_mask.at[:, :, :, 0].set(True)  # every query reads something
    weights = normal(9, q.shape)
    wide = lambda x: x.astype(jnp.float64)
    (_, ref_out), ref_grads = value_and_grads(lambda q, k, v: block_sparse_attention(
        q, k, v, block_mask, block_size=block, causal=True, impl="reference"))(
        wide(q), wide(k), wide(v), weights)
    (_, out), grads = value_and_grads(lambda q, k, v: tpu_flash.flash_attention(
        q, k, v, causal=True, block_mask=block_mask, block_size=block, interpret=True))(
        q, k, v, weights)
    assert out.dtype == jnp.bfloat16 and grads[0].dtype == jnp.bfloat16
    assert rel_err(out, ref_out) < BF16_TOL
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) < BF16_TOL


@pytest.mark.parametrize("mode", ["causal", "window", "non_causal_window", "block_mask"])
def test_index_maps_fetch_only_what_the_visited_steps_read(mode):
    """Along the walked axis a step fetches its own block when it is visited, and a skipped
    step fetches the block of a neighbouring visited step (no new copy); visited steps are
    exactly the blocks the mask reaches."""
    n, block, window = 6, 4, 7
    cfg = _Config(mode != "non_causal_window", None if mode in ("causal", "block_mask")
                  else window, 1.0, block, n * block, 1, True, None)
    block_mask = jnp.asarray(np.random.default_rng(6).random((1, 1, n, n)) < 0.5)
    block_mask = block_mask.at[0, 0, 2].set(False)
    tables = tpu_flash.fetch_tables(cfg, block_mask, n) if mode == "block_mask" else (None,
                                                                                       None)
    pos = jnp.arange(n * block)
    tokens = attention_mask(pos, pos, causal=cfg.causal, window=cfg.window)
    reach = np.array(tokens.reshape(n, block, n, block).any((1, 3)))
    if mode == "block_mask":
        reach &= np.asarray(block_mask[0, 0])
    for keys, table in ((True, tables[0]), (False, tables[1])):
        walk = tpu_flash._Walk(cfg, n, keys, (1, 1) if table is not None else None)
        x = jnp.arange(n, dtype=jnp.int32)[:, None]  # every grid step (x, y) at once
        y = jnp.arange(n, dtype=jnp.int32)[None, :]
        fetched, visited = (np.asarray(jnp.broadcast_to(a, (n, n))) for a in walk(
            jnp.int32(0), jnp.int32(0), x, y, *(() if table is None else (table,))))
        assert np.array_equal(visited, reach if keys else reach.T), keys
        assert np.all((0 <= fetched) & (fetched < n))
        assert np.all(fetched[visited] == np.broadcast_to(np.arange(n), (n, n))[visited])
        changed = fetched[:, 1:] != fetched[:, :-1]  # a new copy only where the step reads it
        assert np.all(visited[:, 1:][changed]), (keys, fetched)


def test_bad_arguments_are_named():
    q, k, v = qkv(0, 1, 16, 2, 1)
    with pytest.raises(ValueError, match=r"block_mask must be .*got \(1, 2, 3, 3\)"):
        tpu_flash.flash_attention(q, k, v, block_mask=jnp.ones((1, 2, 3, 3), bool),
                                  block_size=8, interpret=True)
    with pytest.raises(ValueError, match="cannot compile for backend 'cpu'; pass interpret"):
        tpu_flash.flash_attention(q, k, v, platform="cpu")
    with pytest.raises(ValueError, match="block_size must be a multiple of 128 on TPU, got 64"):
        tpu_flash.flash_attention(q, k, v, block_size=64, platform="tpu")


@pytest.mark.parametrize("length, masked", [(1024, False), (1024, True), (65536, False)])
def test_forward_and_backward_lower_to_mosaic(length, masked):
    """Head dim 128, bfloat16, blocks of 128: the three kernels lower at 1K and 64K tokens."""
    heads, kv_heads, d, block = 2, 1, 128, 128
    spec = lambda h: jax.ShapeDtypeStruct((1, length, h, d), jnp.bfloat16)
    n = length // block
    kw = (dict(block_mask=jnp.tril(jnp.ones((1, 1, n, n), bool))) if masked else
          dict(window=4096, segment_ids=jnp.zeros((1, length), jnp.int32)))

    def loss(q, k, v):
        out = tpu_flash.flash_attention(q, k, v, block_size=block, platform="tpu", **kw)
        return jnp.sum(out.astype(jnp.float32))

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(
        spec(heads), spec(kv_heads), spec(kv_heads)).lower(lowering_platforms=("tpu",))
    assert lowered.as_text().count("tpu_custom_call") >= 3
