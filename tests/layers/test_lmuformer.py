"""LMUFormer's options of the LMU mixer (the causal convolutional patch embedding and the
convolutional channel mixer): shapes, causality, packed rows, and ``step`` == ``__call__``
(float64, 1e-10 relative)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxlm.layers import LMU, LMUConfig
from tests.helpers import rel_err, to_float64
from tests.layers.test_mixers import run_steps

OPTIONS = [dict(conv_embed=2), dict(conv_mixer=True), dict(conv_embed=1, conv_mixer=True,
                                                           mixer_ratio=2)]


def make(**options):
    return to_float64(LMU(8, n_inputs=2, order=5, theta=6.0, rngs=nnx.Rngs(1), **options))


@pytest.mark.parametrize("options", OPTIONS)
def test_step_equals_parallel_and_causal(options):
    mixer = make(**options)
    x = jax.random.normal(jax.random.key(2), (2, 13, 8), jnp.float64)
    # changing token 6 changes nothing before it (up to the FFT's rounding), and the tokens
    # after it
    y, steps, y2 = jax.jit(lambda m, x: (m(x), run_steps(m, x, 13), m(x.at[:, 6].add(1.0))))(
        mixer, x)
    assert y.shape == x.shape
    assert rel_err(steps, y) < 1e-10
    assert rel_err(y2[:, :6], y[:, :6]) < 1e-12
    assert not jnp.allclose(y2[:, 6:], y[:, 6:])


def test_packed_rows_equal_documents_one_by_one():
    mixer = make(conv_embed=2, conv_mixer=True)
    x = jax.random.normal(jax.random.key(3), (1, 12, 8), jnp.float64)
    segment_ids = jnp.array([[0] * 5 + [1] * 7])
    packed, alone = jax.jit(lambda m, x: (m(x, segment_ids=segment_ids), jnp.concatenate(
        [m(x[:, :5]), m(x[:, 5:])], axis=1)))(mixer, x)
    assert rel_err(packed, alone) < 1e-10


def test_state_and_parameters():
    mixer = make(conv_embed=3, conv_mixer=True)
    state = mixer.init_state(2, jnp.float64)
    assert state["memory"].shape == (2, 2, 5)
    assert [w.shape for w in state["embed"]] == [(2, 2, 8)] * 4  # 3 layers + position conv
    assert mixer.embed_weights[0].shape == (3, 8, 8) and mixer.fc1.kernel.shape == (8, 32)
    assert make().init_state(1)["embed"] == ()
    with pytest.raises(ValueError, match="conv_embed"):
        LMUConfig(conv_embed=-1)
    with pytest.raises(ValueError, match="mixer_ratio"):
        LMUConfig(mixer_ratio=0)
