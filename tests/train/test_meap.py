"""MEAP: a fraction of the input tokens masked, drawn from the explicit key, targets unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import Config, ConfigError, apply_overrides
from jaxlm.data import make_source
from jaxlm.train import build_model, init_train_state, make_optimizer, make_train_step
from jaxlm.train.meap import mask_inputs


def test_mask_inputs_rate_and_determinism():
    inputs = jnp.arange(1, 20001, dtype=jnp.int32).reshape(4, 5000) % 50 + 1
    key = jax.random.key(0)
    masked = mask_inputs(key, inputs, 0.15, 0)
    assert abs(float((masked == 0).mean()) - 0.15) < 0.01
    assert ((masked == inputs) | (masked == 0)).all()
    assert (mask_inputs(key, inputs, 0.15, 0) == masked).all()
    assert not (mask_inputs(jax.random.key(1), inputs, 0.15, 0) == masked).all()
    assert (mask_inputs(key, inputs, 0.0, 0) == inputs).all()
    with pytest.raises(ValueError, match="rate must be in"):
        mask_inputs(key, inputs, 1.0, 0)


TINY = ["model.d_model=16", "model.n_layers=1", "model.vocab_size=64",
        "model.attention.n_heads=2", "data.mqar.vocab_size=64", "data.mqar.seq_len=16",
        "data.mqar.num_kv_pairs=2",
        "train.batch_size=8"]


def test_train_step_masks_only_with_a_rate():
    config = apply_overrides(Config(), TINY)
    batch = make_source(config.data).batch(0, 8)
    losses = {}
    for rate in (0.0, 0.3):
        graphdef, state = init_train_state(build_model(config), make_optimizer(config.train))
        step = make_train_step(graphdef, make_optimizer(config.train), input_mask_rate=rate,
                               input_mask_token=0, mask_key=jax.random.key(2))
        losses[rate] = float(step(state, batch)[1]["loss"])
    graphdef, state = init_train_state(build_model(config), make_optimizer(config.train))
    plain = float(make_train_step(graphdef, make_optimizer(config.train))(state, batch)[1]["loss"])
    assert losses[0.0] == plain and losses[0.3] != plain


def test_mask_token_must_be_in_the_vocabulary():
    with pytest.raises(ConfigError, match="input_mask_token < model.vocab_size"):
        apply_overrides(Config(), TINY + ["train.input_mask_rate=0.1",
                                          "train.input_mask_token=64"])
