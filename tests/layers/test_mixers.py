"""The mixer protocol, for every registered mixer: ``__call__`` equals a loop of ``step``
(float64, relative error < 1e-10, only summation order differs), and packed rows equal their
documents run one by one."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.layers import MIXERS, build_mixer, prefill
from jaxlm.models import ModelConfig
from tests.helpers import rel_err, to_float64

TOL = 1e-10
D_MODEL = 16


def make_mixer(name, **options):
    config = dataclasses.replace(getattr(ModelConfig(), name), **options)
    return to_float64(build_mixer(name, D_MODEL, config, rngs=nnx.Rngs(0)))


def run_steps(mixer, x, max_length):
    """A loop of ``step`` (after ``prefill`` of a non-causal prefix, for mixers that have one)."""
    prefix = min(getattr(mixer, "prefix_length", 0), x.shape[1])
    if prefix:
        head, state = prefill(mixer, x[:, :prefix], max_length=max_length)
    else:
        head = x[:, :0]
        state = mixer.init_state(x.shape[0], jnp.float64, max_length=max_length)

    def body(state, x_t):
        y, state = mixer.step(x_t, state)
        return state, y

    _, ys = jax.lax.scan(body, state, jnp.swapaxes(x[:, prefix:], 0, 1))
    return jnp.concatenate([head, jnp.swapaxes(ys, 0, 1)], axis=1)


@pytest.mark.parametrize("name", sorted(MIXERS))
@pytest.mark.parametrize("batch, length", [(2, 13), (1, 40)])
def test_parallel_equals_recurrent(name, batch, length):
    mixer = make_mixer(name)
    x = jax.random.normal(jax.random.key(length), (batch, length, D_MODEL), jnp.float64)
    parallel, recurrent = jax.jit(lambda m, x: (m(x), run_steps(m, x, length)))(mixer, x)
    assert parallel.shape == x.shape
    assert rel_err(recurrent, parallel) < TOL


@pytest.mark.parametrize("name", sorted(set(MIXERS) - {"jrt", "sparse_attention",
                                                        "attention_infllm"})
                         + ["sparse_attention:routing"])
def test_packed_row_equals_documents_one_by_one(name):
    name, _, selection = name.partition(":")
    mixer = make_mixer(name, **({"selection": selection} if selection else {}))
    lengths = [5, 11, 7]
    x = jax.random.normal(jax.random.key(7), (1, sum(lengths), D_MODEL), jnp.float64)
    segment_ids = jnp.concatenate([jnp.full(n, i) for i, n in enumerate(lengths)])[None]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]

    @jax.jit
    def both(mixer, x):
        alone = [mixer(x[:, s:s + n]) for s, n in zip(starts, lengths)]
        return mixer(x, segment_ids=segment_ids), jnp.concatenate(alone, axis=1)

    packed, alone = both(mixer, x)
    assert rel_err(packed, alone) < TOL


@pytest.mark.parametrize("name", ["mamba2", "gated_deltanet"])
def test_an_infinite_decay_rate_is_a_reset_with_finite_gradients(name):
    """Head 0 at a_log = 1000 (A = −exp(1000) = −inf in float64): it forgets its state at every
    token in both forms, and both forms' gradients stay finite (the log-decay dt · A has the
    gradient A in dt: −inf times the reset's 0 would be NaN without ``finite_rate``)."""
    mixer = make_mixer(name)
    mixer.a_log[...] = mixer.a_log[...].at[0].set(1000.0)
    x = jax.random.normal(jax.random.key(3), (1, 9, D_MODEL), jnp.float64)
    forms = (lambda m: m(x), lambda m: run_steps(m, x, 9))
    parallel, recurrent, form_grads = jax.jit(lambda m: (
        forms[0](m), forms[1](m),
        [jax.grad(lambda m: jnp.sum(form(m) ** 2))(m) for form in forms]))(mixer)
    assert rel_err(recurrent, parallel) < TOL
    for grads in form_grads:
        grads = nnx.state(grads)
        a_log = grads.pop("a_log")[...]  # exp(1000)'s own gradient is inf: the other heads'
        assert bool(jnp.all(jnp.isfinite(a_log[1:])))
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("options", [dict(feature_map="taylor", feature_dim=3),
                                     dict(feature_map="relu", normalize=False)])
def test_linear_attention_feature_maps(options):
    mixer = make_mixer("linear_attention", **options)
    x = jax.random.normal(jax.random.key(3), (2, 11, D_MODEL), jnp.float64)
    assert rel_err(run_steps(mixer, x, 11), mixer(x)) < TOL


@pytest.mark.parametrize("name", ["jrt", "sparse_attention", "attention_infllm"])
def test_refuses_packed_rows(name):
    x = jnp.zeros((1, 6, D_MODEL))
    with pytest.raises(ValueError, match="segment_ids"):
        make_mixer(name)(x, segment_ids=jnp.zeros((1, 6), jnp.int32))


@pytest.mark.parametrize("options", [
    dict(selection="topk_blocks", summary="max", block_size=4, top_k=2, sink_blocks=0),
    dict(selection="hierarchical", block_size=2, branch=2, top_k=2, local_blocks=2),
    dict(selection="lambda", block_size=4, window=6, sink_tokens=3, n_kv_heads=2),
    dict(selection="routing", n_clusters=3, n_kv_heads=2),
])
def test_sparse_attention_selections_step_equals_parallel(options):
    mixer = make_mixer("sparse_attention", **options)
    x = jax.random.normal(jax.random.key(5), (2, 27, D_MODEL), jnp.float64)
    parallel, recurrent = jax.jit(lambda m, x: (m(x), run_steps(m, x, 27)))(mixer, x)
    assert rel_err(recurrent, parallel) < TOL


@pytest.mark.parametrize("memory", ["delta", "linear"])
def test_mom_memories(memory):
    mixer = make_mixer("mom", memory=memory, n_memories=3, top_k=1, shared_memory=False)
    x = jax.random.normal(jax.random.key(4), (2, 9, D_MODEL), jnp.float64)
    assert rel_err(run_steps(mixer, x, 9), mixer(x)) < TOL
    weights = mixer.routing(x)
    assert ((weights > 0).sum(-1) == 1).all()
    assert jnp.allclose(weights.sum(-1), 1.0)


def test_window_cache_is_a_ring_buffer_of_window_slots():
    mixer = make_mixer("attention_window", window=4)
    state = mixer.init_state(2, jnp.float64, max_length=100)
    assert state["k"].shape[1] == 4


def test_full_attention_cache_needs_max_length():
    with pytest.raises(ValueError, match="max_length"):
        make_mixer("attention").init_state(2, jnp.float64)


def test_normalized_linear_attention_needs_positive_features():
    with pytest.raises(ValueError, match="normalize=True needs positive features"):
        make_mixer("linear_attention", feature_map="identity")


def test_zero_window_is_rejected_by_name():
    with pytest.raises(ValueError, match="window must be a positive integer"):
        make_mixer("attention", window=0)


def test_unknown_mixer_lists_the_registered_ones():
    with pytest.raises(ValueError, match="registered mixers"):
        build_mixer("transformerxl", D_MODEL, None, rngs=nnx.Rngs(0))


def test_sparse_attention_choosing_every_block_is_attention():
    """Same projections (same initialisation); top_k covering every block leaves nothing out."""
    x = jax.random.normal(jax.random.key(6), (2, 21, D_MODEL), jnp.float64)
    dense = make_mixer("attention")
    sparse = make_mixer("sparse_attention", block_size=4, top_k=6)
    assert rel_err(sparse(x), dense(x)) < TOL


def test_routing_centroids_learn_in_training_mode_only():
    mixer = make_mixer("sparse_attention", selection="routing", n_clusters=3, centroid_decay=0.5)
    x = jax.random.normal(jax.random.key(8), (2, 12, D_MODEL), jnp.float64)
    before = mixer.centroids[...]
    mixer(x)
    assert (mixer.centroids[...] == before).all()
    mixer.train()
    mixer(x)
    moved = mixer.centroids[...]
    assert not jnp.allclose(moved, before)
    assert jnp.allclose(jnp.linalg.norm(moved, axis=-1), 1, atol=1e-5)


def test_bidirectional_ponet_has_no_step():
    mixer = make_mixer("ponet", causal=False, window=3)
    assert mixer(jnp.zeros((1, 5, D_MODEL))).shape == (1, 5, D_MODEL)
    with pytest.raises(ValueError, match="causal=True"):
        mixer.init_state(1, jnp.float64)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_step_checks_its_inputs(name):
    """A state made for another batch, or x_t of another width, is a ValueError naming the
    mixer, the argument, the leaf and both shapes (not a silent broadcast or a raw JAX error)."""
    mixer = build_mixer(name, D_MODEL, getattr(ModelConfig(), name), rngs=nnx.Rngs(0))
    state = mixer.init_state(1, jnp.float32, max_length=4)
    op = rf"{type(mixer).__name__}\.step"
    with pytest.raises(ValueError, match=rf"{op}: state.* must have shape \(2, .*"
                                         rf"init_state\(batch_size=2\).*got shape \(1, "):
        mixer.step(jnp.zeros((2, D_MODEL)), state)
    with pytest.raises(ValueError, match=rf"{op}: x_t must have shape \[batch, d_model=16\], "
                                         rf"got shape \(1, 15\)"):
        mixer.step(jnp.zeros((1, D_MODEL - 1)), state)


def test_step_checks_the_state_structure_under_jit():
    mixer = make_mixer("attention")
    state = mixer.init_state(2, jnp.float64, max_length=6)
    y, _ = jax.jit(lambda m, x, s: m.step(x, s))(mixer, jnp.zeros((2, D_MODEL)), state)
    assert y.shape == (2, D_MODEL)
    del state["pos"]
    with pytest.raises(ValueError, match=r"Attention\.step: state must have init_state's "
                                         r"structure \[.*\['pos'\].*\], got"):
        jax.jit(lambda m, x, s: m.step(x, s))(mixer, jnp.zeros((2, D_MODEL)), state)


@pytest.mark.parametrize("name", ["attention", "gla"])
def test_step_takes_numpy_arrays(name):
    """x_t and the state may be NumPy arrays (the KV cache is updated with ``.at``)."""
    mixer = make_mixer(name)
    state = mixer.init_state(2, jnp.float64, max_length=3)
    x_t = np.random.default_rng(0).standard_normal((2, D_MODEL))
    y, new = jax.jit(lambda m: m.step(x_t, jax.tree.map(np.asarray, state)))(mixer)
    expected, _ = jax.jit(lambda m, x, s: m.step(x, s))(mixer, jnp.asarray(x_t), state)
    assert rel_err(y, expected) < TOL
