"""The LongVQ mixer in training mode: the codebook follows the keys, the commitment loss
reaches the decoder LM's loss, and evaluation mode changes nothing. (Parallel == step and
packed rows: tests/layers/test_mixers.py, for every registered mixer.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.layers import LongVQ
from jaxlm.models import ModelConfig, build_lm


def test_training_moves_the_codebook_and_sows_the_commitment_loss():
    mixer = LongVQ(8, qk_dim=4, codebook_size=6, window=2, d_state=4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 9, 8))
    before = mixer.codebook[...]
    forward = nnx.jit(lambda m, x: nnx.capture(m, nnx.Intermediate)(x))
    _, sown = forward(mixer, x)
    assert jnp.array_equal(mixer.codebook[...], before)  # evaluation mode: nothing learns
    assert not jax.tree.leaves(sown)
    mixer.train()
    _, sown = forward(mixer, x)
    assert not jnp.array_equal(mixer.codebook[...], before)
    (loss,) = jax.tree.leaves(sown)
    assert loss > 0


def test_decoder_lm_adds_the_commitment_loss_in_training():
    config = dataclasses.replace(ModelConfig(vocab_size=11, d_model=8, n_layers=1, d_ff=0,
                                             pattern="longvq"))
    model = build_lm(config, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 7)))
    forward = nnx.jit(lambda m, t: m(t))
    assert forward(model, tokens).shape == (2, 7, 11)
    model.train()
    out = forward(model, tokens)
    assert out["logits"].shape == (2, 7, 11) and out["aux_loss"] > 0
    assert not jax.tree.leaves(nnx.state(model, nnx.Intermediate))  # popped
