"""Recycled Attention as the attention layer's decoding mode: with K at least the cache length
every step equals full attention; a full step chooses the top-K keys of its own attention
(summed over each KV head's query heads); a recycled step equals attention restricted to
those keys and the tokens since; the parallel form is unchanged. Float64, 1e-10 relative."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import rel_err
from tests.layers.test_mixers import D_MODEL, make_mixer, run_steps

TOL = 1e-10
LENGTH = 13


def steps_with_states(mixer, x):
    state = mixer.init_state(x.shape[0], jnp.float64, max_length=x.shape[1])

    def body(state, x_t):
        y, state = mixer.step(x_t, state)
        return state, (y, state)

    _, (ys, states) = jax.lax.scan(body, state, jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(ys, 0, 1), states


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(0).standard_normal((2, LENGTH, D_MODEL)))


def test_top_k_covering_the_cache_is_full_attention(x):
    full = make_mixer("attention", n_kv_heads=2)
    recycled = make_mixer("attention", n_kv_heads=2, recycle_every=4, recycle_top_k=LENGTH)
    run = jax.jit(lambda m, x: run_steps(m, x, LENGTH))
    assert rel_err(run(recycled, x), run(full, x)) < TOL
    assert rel_err(recycled(x), full(x)) == 0.0  # the parallel form is untouched


def test_full_steps_choose_the_top_k_and_recycled_steps_read_only_those(x):
    k_top, every = 3, 4
    mixer = make_mixer("attention", n_kv_heads=2, recycle_every=every, recycle_top_k=k_top)
    ys, states = jax.jit(steps_with_states)(mixer, x)
    positions = jnp.broadcast_to(jnp.arange(LENGTH), x.shape[:2])
    q, k, v = mixer._qkv(x, positions)  # [batch, length, heads, d]; 4 heads, 2 KV heads
    scale = mixer.head_dim ** -0.5
    qg = q.reshape(*q.shape[:2], 2, 2, -1)
    probs = jax.nn.softmax(jnp.where(
        jnp.tril(jnp.ones((LENGTH, LENGTH), bool))[None, None, None],
        jnp.einsum("btjgd,bsjd->bjgts", qg, k) * scale, -jnp.inf), axis=-1).sum(2)
    chosen_all = np.asarray(states["recycled"])  # [length, batch, kv_heads, K]
    readable = np.zeros((2, 2, LENGTH, LENGTH), bool)  # [batch, kv head, query t, key s]
    for t in range(LENGTH):
        last_full = t - t % every
        assert int(states["last_full"][t]) == last_full
        chosen = chosen_all[t]
        if t == last_full:  # the chosen positions are the top-K of this step's attention
            expected = np.argsort(-np.asarray(probs[:, :, t, :t + 1]), axis=-1)[..., :k_top]
            expected = np.pad(expected, [(0, 0), (0, 0), (0, k_top - expected.shape[-1])],
                              constant_values=-1)
            assert (np.sort(chosen, -1) == np.sort(expected, -1)).all(), t
            readable[:, :, t, :t + 1] = True
            continue
        for b in range(2):  # recycled: the chosen positions and those after the full step
            for j in range(2):
                readable[b, j, t, [p for p in chosen[b, j] if p >= 0]] = True
        readable[:, :, t, last_full + 1:t + 1] = True
    scores = jnp.einsum("btjgd,bsjd->bjgts", qg, k) * scale
    weights = jax.nn.softmax(jnp.where(readable[:, :, None], scores, -jnp.inf), -1)
    out = jnp.einsum("bjgts,bsjd->btjgd", weights, v).reshape(2, LENGTH, -1)
    assert rel_err(ys, mixer.o_proj(out)) < TOL
    assert rel_err(ys, mixer(x)) > 1e-3  # K = 3 < the cache: not full attention


def test_recycling_respects_the_window_and_bad_options_are_named(x):
    window = make_mixer("attention_window", window=5)
    recycled = make_mixer("attention_window", window=5, recycle_every=3, recycle_top_k=16)
    run = jax.jit(lambda m, x: run_steps(m, x, LENGTH))
    assert rel_err(run(recycled, x), run(window, x)) < TOL
    with pytest.raises(ValueError, match="recycle_every must be a positive integer"):
        make_mixer("attention", recycle_every=0)
