"""InfLLM: the gathered xla form equals the explicit per-query mask (float64, 1e-12 relative,
values and gradients) at lengths not a multiple of the unit or the chunk, batch 1 and
grouped-query heads; a window covering everything (or top_k covering every unit) is full
attention; a loop of decoding steps equals chunk_size=1; a far passkey is retrieved."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops import attention
from jaxlm.ops.infllm import infllm_attention, infllm_cache, infllm_step
from tests.helpers import normal, rel_err

TOL = 1e-12


def qkv(seed, batch, length, heads, kv_heads, d=4):
    return (normal(3 * seed, (batch, length, heads, d)),
            normal(3 * seed + 1, (batch, length, kv_heads, d)),
            normal(3 * seed + 2, (batch, length, kv_heads, d)))


@pytest.mark.parametrize("batch, heads, kv_heads, options", [
    (2, 4, 2, dict(window=3, block_size=2, init_blocks=1, top_k=2, n_repr=1, chunk_size=3)),
    (1, 2, 2, dict(window=5, block_size=3, init_blocks=0, top_k=1, n_repr=2, chunk_size=4)),
    (1, 2, 1, dict(window=2, block_size=2, init_blocks=2, top_k=1, n_repr=2, chunk_size=1))])
def test_xla_equals_reference(batch, heads, kv_heads, options):
    q, k, v = qkv(batch + heads, batch, 23, heads, kv_heads)
    weights = normal(9, q.shape)

    @jax.jit
    def both(q, k, v):
        return [jax.value_and_grad(lambda q, k, v: jnp.sum(infllm_attention(
            q, k, v, impl=impl, **options) * weights), argnums=(0, 1, 2))(q, k, v)
            for impl in ("reference", "xla")]

    (ref, g_ref), (fast, g_fast) = both(q, k, v)
    full = jnp.sum(attention(q, k, v, impl="reference") * weights)
    assert abs(fast - ref) < TOL * abs(ref) and abs(ref - full) > 1e-3 * abs(full)
    for a, b in zip(g_fast, g_ref):
        assert rel_err(a, b) < TOL


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_covering_everything_is_full_attention(impl):
    @jax.jit
    def run(q, k, v):
        return (attention(q, k, v, impl="reference"),
                infllm_attention(q, k, v, window=21, block_size=3, top_k=1, chunk_size=4,
                                 impl=impl),
                infllm_attention(q, k, v, window=2, block_size=3, top_k=7, chunk_size=4,
                                 impl=impl))

    full, wide, every_unit = run(*qkv(1, 1, 21, 2, 2))
    assert rel_err(wide, full) < TOL and rel_err(every_unit, full) < TOL


def test_decoding_steps_equal_chunk_size_one():
    q, k, v = qkv(2, 2, 17, 4, 2)
    options = dict(window=3, block_size=2, init_blocks=1, top_k=2, n_repr=1)

    def body(cache, x):
        out, cache = infllm_step(*x, cache, **options)
        return cache, out

    @jax.jit
    def run(q, k, v):
        cache = infllm_cache(2, 17, 2, 4, jnp.float64)
        _, outs = jax.lax.scan(body, cache, tuple(jnp.swapaxes(x, 0, 1) for x in (q, k, v)))
        return outs, infllm_attention(q, k, v, chunk_size=1, impl="reference", **options)

    outs, parallel = run(q, k, v)
    assert rel_err(jnp.swapaxes(outs, 0, 1), parallel) < TOL


def test_far_passkey_is_retrieved():
    """A key at position 5 of 64 that the queries of its window (and the last query) align
    with: the last query, whose window and initial tokens are far from it, reads it back."""
    length, d = 64, 8
    q, k, v = (0.1 * x for x in qkv(3, 1, length, 1, 1, d))
    u = jnp.zeros(d).at[0].set(1.0)
    k = k.at[0, 5, 0].set(4.0 * u)
    q = q.at[0, 6:9, 0].add(u).at[0, -1, 0].set(4.0 * u)
    v = v.at[0, 5, 0].set(jnp.ones(d))
    options = dict(window=8, block_size=4, init_blocks=1, n_repr=1, chunk_size=4)
    run = jax.jit(lambda q, k, v: [infllm_attention(q, k, v, top_k=top_k, impl=impl,
                                                    **options)[0, -1, 0]
                                   for impl in ("reference", "xla") for top_k in (1, 0)])
    for found, local in np.reshape(np.asarray(run(q, k, v)), (2, 2, d)):
        assert found.mean() > 0.8 and local.mean() < 0.2


def test_bad_arguments_are_named():
    q, k, v = qkv(0, 1, 6, 2, 2)
    with pytest.raises(ValueError, match="window"):
        infllm_attention(q, k, v, window=0)
    with pytest.raises(ValueError, match="top_k"):
        infllm_attention(q, k, v, window=2, top_k=-1)
