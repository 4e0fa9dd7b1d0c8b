"""Document-level block skipping in the flash-attention kernels: with segment ids, a (query
block, key block) pair whose documents cannot meet is skipped. ``document_blocks`` is checked
against the exact pairs sharing an id (equal for packed rows, a superset for any ids); the
TPU kernel's grid walk visits exactly the reachable pairs of one document; and the kernels
with many short documents per row (most block pairs skipped) agree with the materialized
reference in float64, values and gradients (tolerance 1e-10 relative: the same sums in another
order), for the portable kernel (interpreted for GPU), also with ids out of order or at
int32's extremes, which the kernels compare by equality. The TPU kernel's runs with documents
are in test_tpu_flash_attention.py (packed rows; a block mask with out-of-order ids)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.kernels.flash_attention import _Config, document_blocks, flash_attention
from jaxlm.kernels.tpu import flash_attention as tpu_flash
from jaxlm.ops import attention
from jaxlm.ops.attention import attention_mask, masked_attention
from tests.helpers import normal, rel_err

TOL = 1e-10


def shared_documents(ids, block):
    """bool [batch, n, n]: the block pairs holding one id on both sides (padding excluded)."""
    batch, length = ids.shape
    n = -(-length // block)
    out = np.zeros((batch, n, n), bool)
    for b in range(batch):
        for i in range(n):
            for j in range(n):
                out[b, i, j] = bool(set(ids[b, i * block:(i + 1) * block])
                                    & set(ids[b, j * block:(j + 1) * block]))
    return out


def packed_ids(rng, batch, length, docs):
    """Non-decreasing ids: ``docs`` documents per row at random starts (some shorter than a
    block)."""
    starts = [np.sort(rng.choice(np.arange(1, length), docs - 1, replace=False))
              for _ in range(batch)]
    return np.stack([np.searchsorted(s, np.arange(length), side="right") for s in starts])


def test_document_blocks_are_the_pairs_sharing_a_document():
    rng = np.random.default_rng(0)
    ids = packed_ids(rng, 3, 45, 7)  # 45: the last block of 8 is padded
    assert np.array_equal(np.asarray(document_blocks(jnp.asarray(ids), 8)),
                          shared_documents(ids, 8))
    shuffled = rng.integers(0, 4, (2, 29))  # any ids: never drops a pair that shares one
    got = np.asarray(document_blocks(jnp.asarray(shuffled), 4))
    assert np.all(got | ~shared_documents(shuffled, 4))


def test_the_tpu_walk_visits_only_pairs_of_one_document():
    """The grid walk with document spans (and with a block mask's fetch table): visited steps
    are exactly the mask's reach within one document; without a block mask a step copies a
    new block only where it is visited, and never a block outside [0, n)."""
    n, block = 7, 4
    ids = jnp.asarray(packed_ids(np.random.default_rng(1), 2, n * block - 2, 5))
    documents = document_blocks(ids, block)
    spans = tpu_flash.document_spans(documents)
    pos = jnp.arange(n * block)
    for causal, window, masked in ((True, None, False), (False, 9, False), (True, None, True)):
        cfg = _Config(causal, window, 1.0, block, n * block, 1, True, None)
        block_mask = jnp.asarray(np.random.default_rng(2).random((1, 1, n, n)) < 0.7)
        tables = tpu_flash.fetch_tables(cfg, block_mask, n) if masked else None
        tokens = attention_mask(pos, pos, causal=causal, window=window)
        reach = np.asarray(tokens.reshape(n, block, n, block).any((1, 3)))
        if masked:
            reach = reach & np.asarray(block_mask[0, 0])
        for keys in (True, False):
            walk = tpu_flash._Walk(cfg, n, keys, (1, 1) if masked else None, documents=True)
            refs = ((tables[0 if keys else 1],) if masked else ()) + spans
            x = jnp.arange(n, dtype=jnp.int32)[:, None]
            y = jnp.arange(n, dtype=jnp.int32)[None, :]
            for b in range(2):
                fetched, visited = (np.asarray(jnp.broadcast_to(a, (n, n))) for a in walk(
                    jnp.int32(b), jnp.int32(0), x, y, *refs))
                want = reach & np.asarray(documents[b])
                assert np.array_equal(visited, want if keys else want.T), (causal, masked, b)
                assert np.all((0 <= fetched) & (fetched < n))
                if not masked:
                    changed = fetched[:, 1:] != fetched[:, :-1]
                    assert np.all(visited[:, 1:][changed])
    assert int(np.sum(np.asarray(documents))) < documents.size // 2  # most pairs skipped


def odd_ids(length):
    """Ids at int32's extremes, one document in two runs: int32 min, max, 5, then min again."""
    info = np.iinfo(np.int32)
    quarter = length // 4
    return np.r_[[info.min] * quarter, [info.max] * quarter, [5] * quarter,
                 [info.min] * (length - 3 * quarter)]


def equal_id_mask(seg, causal, window=None):
    """[batch, 1, length, length]: the kernels' mask, ids compared by equality."""
    pos = jnp.arange(seg.shape[1])
    mask = attention_mask(pos, pos, causal=causal, window=window)
    return (mask & (seg[:, :, None] == seg[:, None, :]))[:, None]


def value_and_grads(fn):
    def loss(q, k, v, weights):
        out = fn(q, k, v)
        return jnp.sum(out * weights), out
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def inputs(seed, batch, length, heads, kv_heads, d=8):
    return tuple(normal(3 * seed + i, (batch, length, h, d))
                 for i, h in enumerate((heads, kv_heads, kv_heads)))


@pytest.mark.parametrize("causal, window", [(True, None), (False, 6)])
def test_portable_kernel_with_many_short_documents(causal, window):
    batch, length, heads, kv_heads, block = 2, 53, 2, 1, 8
    q, k, v = inputs(1, batch, length, heads, kv_heads)
    seg = jnp.asarray(packed_ids(np.random.default_rng(3), batch, length, 9))
    weights = normal(9, q.shape)
    ref = value_and_grads(lambda q, k, v: attention(
        q, k, v, causal=causal, window=window, segment_ids=seg, impl="reference"))(
        q, k, v, weights)
    got = value_and_grads(lambda q, k, v: flash_attention(
        q, k, v, causal=causal, window=window, segment_ids=seg, block_size=block,
        interpret=True, platform="gpu"))(q, k, v, weights)
    assert rel_err(got, ref) < TOL


def test_any_ids_are_compared_by_equality_in_the_portable_kernel():
    """Ids that repeat out of order (0, 1, 0, 1, ...; a document split in two runs) and ids at
    int32's extremes (the block ranges then span almost everything): skipping never drops a
    pair that shares an id. (The TPU kernel's case, with a block mask, is in
    test_tpu_flash_attention.py.)"""
    batch, length, block = 2, 29, 8
    seg = jnp.asarray(np.stack([np.arange(length) % 2, odd_ids(length)]).astype(np.int32))
    q, k, v = inputs(3, batch, length, 2, 1)
    weights = normal(11, q.shape)
    ref = value_and_grads(lambda q, k, v: masked_attention(
        q, k, v, equal_id_mask(seg, causal=False), 8 ** -0.5))(q, k, v, weights)
    got = value_and_grads(lambda q, k, v: flash_attention(
        q, k, v, causal=False, segment_ids=seg, block_size=block, interpret=True,
        platform="gpu"))(q, k, v, weights)
    assert rel_err(got, ref) < TOL
