"""Warmup-stable-decay and the power scheduler: the phases at the steps they are defined for."""

import numpy as np
import pytest

from jaxlm.config import ConfigError, TrainConfig
from jaxlm.train import make_schedule


def values(cfg):
    sched = make_schedule(cfg)
    return np.array([float(sched(i)) for i in range(cfg.steps + 1)])


def test_wsd_warms_up_holds_then_decays_linearly():
    lr = values(TrainConfig(steps=100, warmup_steps=10, schedule="wsd", learning_rate=1.0,
                            decay_fraction=0.2, final_lr_fraction=0.1))
    np.testing.assert_allclose(lr[:11], np.arange(11) / 10, atol=1e-6)
    assert (lr[10:81] == 1.0).all()
    np.testing.assert_allclose(lr[80:101], 1.0 - 0.9 * np.arange(21) / 20, atol=1e-6)


def test_power_follows_a_n_to_the_b_between_warmup_and_decay():
    cfg = TrainConfig(steps=200, warmup_steps=20, schedule="power", learning_rate=1.0,
                      batch_size=8, power_tokens_per_step=64, decay_fraction=0.1)
    lr = values(cfg)
    steps = np.arange(20, 181)
    want = np.minimum(1.0, 8 * 4.0 * (steps * 64.0) ** -0.51)
    np.testing.assert_allclose(lr[20:181], want, rtol=1e-5)
    assert want[0] < 1.0  # the cap does not bind here: the power law is what is tested
    np.testing.assert_allclose(lr[:21], want[0] * np.arange(21) / 20, rtol=1e-5)
    assert (np.diff(lr[180:]) < 0).all() and lr[200] == 0.0


@pytest.mark.parametrize("change, message", [
    (dict(schedule="step"), "train.schedule"), (dict(decay_fraction=0.0), "decay_fraction"),
    (dict(power_b=0.5), "power_b")])
def test_bad_schedule_settings_are_named(change, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**change)
