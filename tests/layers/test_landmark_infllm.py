"""The landmark-attention and InfLLM mixers: step equals the parallel form beyond the
registry's defaults (float64, 1e-10 relative); a DecoderLM with landmark attention inserts its
learned landmark in both forms alike and trains it; InfLLM holds attention's weights and, with
a window over everything, is attention (also under ``generate``)."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxlm.layers import build_mixer
from jaxlm.models import DecoderLM, ModelConfig, generate
from tests.helpers import rel_err, to_float64
from tests.layers.test_mixers import D_MODEL, make_mixer, run_steps

TOL = 1e-10


@pytest.mark.parametrize("name, options", [
    ("landmark_attention", dict(block_size=3, top_k=1, n_kv_heads=2)),
    ("attention_infllm", dict(window=3, block_size=2, top_k=1, n_repr=1, n_kv_heads=2))])
def test_step_equals_parallel(name, options):
    mixer = make_mixer(name, **options)
    x = jax.random.normal(jax.random.key(2), (2, 19, D_MODEL), jnp.float64)
    parallel, recurrent = jax.jit(lambda m, x: (m(x), run_steps(m, x, 19)))(mixer, x)
    assert rel_err(recurrent, parallel) < TOL


def landmark_model():
    config = ModelConfig(vocab_size=11, d_model=D_MODEL, n_layers=1, pattern="landmark_attention")
    config = dataclasses.replace(config, landmark_attention=dataclasses.replace(
        config.landmark_attention, n_heads=2, block_size=3))
    return to_float64(DecoderLM(config, rngs=nnx.Rngs(0)))


def test_landmark_model_steps_equal_its_parallel_form_and_trains_the_landmark():
    model = landmark_model()
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, 11)

    @jax.jit
    def both(model, tokens):
        head, state = model.prefill(tokens[:, :4], max_length=10)

        def body(state, token):
            logits, state = model.step(token, state)
            return state, logits

        _, rest = jax.lax.scan(body, state, tokens[:, 4:].T)
        return model(tokens), jnp.concatenate([head, jnp.swapaxes(rest, 0, 1)], axis=1)

    parallel, stepped = both(model, tokens)
    assert parallel.shape == (2, 10, 11)
    assert rel_err(stepped, parallel) < 1e-6  # logits are cast to float32 at the head
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(tokens)[:, -1] ** 2)))(model)
    assert float(jnp.abs(grads.landmark[...]).sum()) > 0


def test_landmark_model_refuses_packed_rows():
    with pytest.raises(ValueError, match="segment_ids"):
        landmark_model()(jnp.zeros((1, 4), jnp.int32), segment_ids=jnp.zeros((1, 4), jnp.int32))


def test_infllm_with_a_window_over_everything_is_attention():
    """Built from the same seed, the two layers hold the same weights."""
    x = jax.random.normal(jax.random.key(6), (1, 21, D_MODEL), jnp.float64)
    config = ModelConfig()
    attention = to_float64(build_mixer("attention", D_MODEL, config.attention, rngs=nnx.Rngs(0)))
    infllm = make_mixer("attention_infllm", window=21, chunk_size=4)
    short = make_mixer("attention_infllm", window=4, chunk_size=4)
    dense, wide, narrow = jax.jit(lambda a, b, c, x: (a(x), b(x), c(x)))(attention, infllm,
                                                                          short, x)
    assert rel_err(wide, dense) < TOL and rel_err(narrow, dense) > 1e-3


def test_a_trained_attention_model_generates_through_infllm():
    """An attention model's weights load into an attention_infllm model; with a window over
    the whole generation it decodes the same tokens, and with a short one it still runs."""
    base = ModelConfig(vocab_size=11, d_model=D_MODEL, n_layers=1, pattern="attention")
    model = DecoderLM(base, rngs=nnx.Rngs(0))
    prompt = jax.random.randint(jax.random.key(3), (1, 6), 0, 11)
    outs = []
    for window in (12, 3):
        config = dataclasses.replace(base, pattern="attention_infllm", attention_infllm=(
            dataclasses.replace(base.attention_infllm, window=window, block_size=2)))
        infllm = DecoderLM(config, rngs=nnx.Rngs(1))
        nnx.update(infllm, nnx.state(model))
        outs.append(infllm)
    run = jax.jit(lambda *models: [generate(m, prompt, max_new_tokens=6) for m in models])
    dense, wide, narrow = run(model, *outs)
    assert (wide == dense).all() and narrow.shape == dense.shape
