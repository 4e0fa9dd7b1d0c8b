"""The decoder LM: recurrent decoding equals the parallel forward, and generation is greedy /
seeded as documented."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxlm.layers import WindowAttentionConfig
from jaxlm.models import DecoderLM, ModelConfig, count_params, generate
from tests.helpers import rel_err, to_float64

CONFIG = ModelConfig(vocab_size=40, d_model=16, n_layers=2, pattern="attention,attention_window",
                     d_ff=32, attention_window=WindowAttentionConfig(n_heads=2, window=5))


@pytest.fixture(scope="module")
def model():
    return to_float64(DecoderLM(CONFIG, rngs=nnx.Rngs(0)))


def tokens(batch, length, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, CONFIG.vocab_size)


def test_step_decoding_equals_parallel_forward(model):
    x = tokens(2, 19)

    @jax.jit
    def both(model, x):
        state = model.init_state(2, max_length=19, dtype=jnp.float64)

        def body(state, t):
            logits, state = model.step(t, state)
            return state, logits

        _, stepped = jax.lax.scan(body, state, x.T)
        return model(x), jnp.swapaxes(stepped, 0, 1)

    parallel, stepped = both(model, x)
    assert parallel.shape == (2, 19, CONFIG.vocab_size)
    assert rel_err(stepped, parallel) < 1e-6  # logits are cast to float32 at the head


def test_greedy_generation_extends_with_argmax(model):
    prompt = tokens(2, 4, seed=1)
    out = jax.jit(lambda m, p: generate(m, p, max_new_tokens=6))(model, prompt)
    assert out.shape == (2, 10)
    assert (out[:, :4] == prompt).all()
    # Teacher-forced parallel forward on the generated text picks the same tokens.
    logits = model(out[:, :-1])
    assert (jnp.argmax(logits[:, 3:], axis=-1) == out[:, 4:]).all()


def test_generation_with_a_prefix_mixer():
    """JRT reads the prompt non-causally: prefill runs its parallel form, then steps decode."""
    from jaxlm.layers import JRTConfig
    config = ModelConfig(vocab_size=40, d_model=16, n_layers=2, pattern="jrt,attention",
                         jrt=JRTConfig(prefix_length=5))
    model = to_float64(DecoderLM(config, rngs=nnx.Rngs(1)))
    prompt = tokens(2, 6, seed=3)
    out = jax.jit(lambda m, p: generate(m, p, max_new_tokens=5))(model, prompt)
    logits = model(out[:, :-1])
    assert (jnp.argmax(logits[:, 5:], axis=-1) == out[:, 6:]).all()


def test_sampling_is_a_function_of_the_key(model):
    prompt = tokens(3, 2, seed=2)
    sample = jax.jit(lambda m, p, k: generate(m, p, max_new_tokens=12, key=k, temperature=1.5))
    a = sample(model, prompt, jax.random.key(0))
    b = sample(model, prompt, jax.random.key(0))
    c = sample(model, prompt, jax.random.key(1))
    assert (a == b).all() and not (a == c).all()
    assert ((a >= 0) & (a < CONFIG.vocab_size)).all()


def test_untied_head_and_learned_positions():
    config = ModelConfig(vocab_size=30, d_model=8, n_layers=1, tie_embeddings=False,
                         learned_positions=True, max_length=16)
    model = DecoderLM(config, rngs=nnx.Rngs(0))
    assert model(tokens(1, 16) % 30).shape == (1, 16, 30)
    assert count_params(model) > count_params(DecoderLM(
        ModelConfig(vocab_size=30, d_model=8, n_layers=1), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="exceeds model.max_length=16"):
        model(tokens(1, 17) % 30)


def test_bad_inputs_are_named(model):
    with pytest.raises(ValueError, match=r"tokens must have shape \[batch, length\]"):
        model(tokens(1, 5)[0])
    with pytest.raises(ValueError, match="temperature > 0"):
        generate(model, tokens(1, 3), max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="n_layers=3 must be a multiple"):
        ModelConfig(n_layers=3, pattern="attention,attention_window")
    with pytest.raises(ValueError, match="unknown mixers"):
        ModelConfig(pattern="attention,mamba9")


def test_dropout_only_in_training_mode():
    """Evaluation (the default mode) equals the same parameters without dropout; training mode
    draws a fresh mask on every call."""
    config = dataclasses.replace(CONFIG, dropout=0.5)
    with_dropout = DecoderLM(config, rngs=nnx.Rngs(params=0, dropout=1))
    plain = DecoderLM(CONFIG, rngs=nnx.Rngs(params=0))
    x = tokens(2, 11)
    assert jnp.array_equal(with_dropout(x), plain(x))
    with_dropout.train()
    first, second = with_dropout(x), with_dropout(x)
    assert not jnp.allclose(first, plain(x)) and not jnp.allclose(first, second)
    with_dropout.eval()
    assert jnp.array_equal(with_dropout(x), plain(x))


def test_dropout_config_errors_are_named():
    with pytest.raises(ValueError, match="model.dropout must be in"):
        dataclasses.replace(CONFIG, dropout=1.0)
    with pytest.raises(ValueError, match="'dropout'.*stream"):
        DecoderLM(dataclasses.replace(CONFIG, dropout=0.1), rngs=nnx.Rngs(params=0))


def test_generation_runs_in_evaluation_mode_and_leaves_the_mode():
    """A model in training mode generates as in evaluation mode (no dropout, which would
    draw masks inside the decoding scan), eagerly and under jit, and stays in training mode."""
    config = ModelConfig(vocab_size=8, d_model=8, n_layers=1, dropout=0.1)
    m = DecoderLM(config, rngs=nnx.Rngs(params=0, dropout=1))
    expected = generate(m, [[1, 2]], max_new_tokens=3)
    m.train()
    assert jnp.array_equal(generate(m, [[1, 2]], max_new_tokens=3), expected)
    jitted = jax.jit(lambda m, p: generate(m, p, max_new_tokens=3))(m, jnp.array([[1, 2]]))
    assert jnp.array_equal(jitted, expected)
    assert m.blocks[0].dropout.deterministic is False
    with pytest.raises(ValueError, match="prompt must hold integer token ids"):
        generate(m, [[1.0, 2.0]], max_new_tokens=1)
