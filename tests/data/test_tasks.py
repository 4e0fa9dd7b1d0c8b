"""The probe generators: deterministic in the seed, the stated distribution, no answer leaked
into the prompt, clear errors for impossible settings."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxlm.data import (IGNORE, TASKS, DataConfig, InductionHeadConfig, LinearRegressionConfig,
                        PasskeyConfig, RegularLanguageConfig, SelectiveCopyConfig,
                        SetDisjointnessConfig, TextConfig, deinterleave, make_source)
from jaxlm.data.regular_language import FIRST_LETTER, SEPARATOR, is_held_out, random_dfa

SMALL = DataConfig(
    induction_head=InductionHeadConfig(vocab_size=12, seq_len=32),
    selective_copy=SelectiveCopyConfig(vocab_size=12, seq_len=40, num_tokens=6),
    passkey=PasskeyConfig(seq_len=48, num_digits=5, filler_cycle=6),
    set_disjointness=SetDisjointnessConfig(vocab_size=64, len_a=4, len_b=12, order="mixed"),
    regular_language=RegularLanguageConfig(seq_len=64, max_string_len=10),
    linear_regression=LinearRegressionConfig(n_dims=4, num_points=9),
    text=TextConfig(seq_len=64))


def batch(task, index=0, size=16, split="train", seed=0, **changes):
    data = dataclasses.replace(SMALL, task=task, seed=seed, **changes)
    return jax.tree.map(np.asarray, make_source(data).batch(index, size, split))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_deterministic_random_access_and_splits(task):
    a, b = batch(task, 2), batch(task, 2)
    for name in a:
        assert (a[name] == b[name]).all()
    assert not (batch(task, 3)["inputs"] == a["inputs"]).all()
    assert not (batch(task, 2, seed=1)["inputs"] == a["inputs"]).all()
    assert not (batch(task, 2, split="test")["inputs"] == a["inputs"]).all()
    assert (batch(task, 0, size=8)["inputs"][4:] == batch(task, 1, size=4)["inputs"]).all()
    data = dataclasses.replace(SMALL, task=task)
    assert a["inputs"].shape[:2] == (16, data.seq_len)


def test_train_examples_cycle():
    one = batch("induction_head", 0, size=4, train_examples=8)
    assert (batch("induction_head", 2, size=4, train_examples=8)["inputs"] == one["inputs"]).all()
    # The held-out splits never cycle.
    assert not (batch("induction_head", 2, size=4, split="test", train_examples=8)["inputs"]
                == batch("induction_head", 0, size=4, split="test")["inputs"]).all()


def test_induction_head():
    data = batch("induction_head", size=64)
    for inputs, targets in zip(data["inputs"], data["targets"]):
        triggers = np.flatnonzero(inputs == 1)
        assert len(triggers) == 2 and triggers[1] == len(inputs) - 1
        assert (targets[:-1] == IGNORE).all()
        assert targets[-1] == inputs[triggers[0] + 1] >= 2


def test_selective_copy():
    n = SMALL.selective_copy.num_tokens
    data = batch("selective_copy", size=64)
    for inputs, targets in zip(data["inputs"], data["targets"]):
        region = inputs[:-n]
        assert (inputs[-n:] == 1).all() and (targets[:-n] == IGNORE).all()
        # The answers are the region's data tokens in order.
        assert (region[region != 0] == targets[-n:]).all()  # data tokens are never 0


def test_passkey():
    config = SMALL.passkey
    data = batch("passkey", size=64)
    for inputs, targets in zip(data["inputs"], data["targets"]):
        key_at = np.flatnonzero(inputs == config.marker)
        assert len(key_at) == 1
        key = inputs[key_at[0] + 1:key_at[0] + 1 + config.num_digits]
        answers = targets[targets != IGNORE]
        assert (answers == key).all() and len(answers) == config.num_digits
        query = np.flatnonzero(inputs == config.query)
        assert len(query) == 1 and query[0] == len(inputs) - config.num_digits
        # The key appears once before the query: no second copy to copy from.
        assert (inputs[query[0] + 1:] == key[:-1]).all()
    depths = data["depth"]
    assert 0 <= depths.min() and depths.max() <= 1 and depths.std() > 0.1


def test_set_disjointness():
    config = SMALL.set_disjointness
    data = batch("set_disjointness", size=128)
    assert 0.2 < data["a_first"].mean() < 0.8  # mixed order
    for inputs, targets, a_first in zip(data["inputs"], data["targets"], data["a_first"]):
        assert inputs[0] == 1 and inputs[-1] == 3 and (targets[:-1] == IGNORE).all()
        sep = np.flatnonzero(inputs == 2)[0]
        first, second = inputs[1:sep], inputs[sep + 1:-1]
        a, b = (first, second) if a_first else (second, first)
        assert len(a) == config.len_a and len(b) == config.len_b
        assert set(a) & set(b) == {targets[-1]}
        assert len(set(a)) == len(a) and len(set(b)) == len(b)


def test_set_disjointness_repeats():
    config = SetDisjointnessConfig(vocab_size=64, len_a=3, len_b=5, repeats=2)
    data = batch("set_disjointness", set_disjointness=config)
    half = config.len_a + config.len_b + 2
    assert data["inputs"].shape[1] == config.seq_len == 2 * half + 1
    assert (data["inputs"][:, :half] == data["inputs"][:, half:2 * half]).all()


def test_regular_language_strings_follow_their_dfa():
    config = SMALL.regular_language
    rng = np.random.default_rng(0)
    for _ in range(20):
        table = random_dfa(rng, config)
        assert config.min_states <= len(table) <= config.max_states
        out = (table >= 0).sum(1)
        assert (out >= 1).all() and (out <= config.max_out_degree).all()
        for state, row in enumerate(table):
            targets = row[row >= 0]
            assert state not in targets and len(set(targets)) == len(targets)
    data = batch("regular_language", size=8, split="test")
    for inputs, targets, valid in zip(data["inputs"], data["targets"], data["valid"]):
        assert (targets[:-1] == inputs[1:]).all()
        letters = targets >= FIRST_LETTER
        # Every next letter of a string is one the DFA allows from the current state.
        assert valid[letters, targets[letters]].all()
        assert (valid[:, :FIRST_LETTER] == 0).all()
        assert set(np.unique(inputs)) <= set(range(SEPARATOR, config.vocab_size))


def test_regular_language_held_out_languages():
    config = SMALL.regular_language
    rng = np.random.default_rng(1)
    tables = [random_dfa(rng, config) for _ in range(200)]
    held = np.mean([is_held_out(t) for t in tables])
    assert 0.1 < held < 0.3  # about one language in five is held out


def test_linear_regression_targets_are_w_dot_x():
    from jaxlm.data import regression_prompt
    config = SMALL.linear_regression
    xs, ys, w = regression_prompt(jax.random.key(3), config)
    np.testing.assert_allclose(ys, xs @ w, rtol=1e-5, atol=1e-5)
    data = batch("linear_regression", size=32)
    bx, by = deinterleave(data["inputs"])
    assert bx.shape == (32, config.num_points, config.n_dims)
    np.testing.assert_array_equal(data["targets"][:, 0::2], by)
    assert data["mask"][:, 0::2].all() and not data["mask"][:, 1::2].any()
    # The x rows carry no y, the y rows no x: no target leaks into its own position.
    assert (data["inputs"][:, 0::2, -1] == 0).all() and (data["inputs"][:, 1::2, :-1] == 0).all()
    skewed = LinearRegressionConfig(n_dims=4, covariance="skewed").eigenvalues()
    np.testing.assert_allclose(float(skewed.sum()), 4.0, rtol=1e-6)


@pytest.mark.parametrize("make, match", [
    (lambda: InductionHeadConfig(vocab_size=3), "induction_head.vocab_size must be >= 4"),
    (lambda: SelectiveCopyConfig(seq_len=10, num_tokens=6), "2 \\* num_tokens must be <="),
    (lambda: PasskeyConfig(seq_len=8, num_digits=5), "passkey.seq_len must be >= 2 \\* num_digits \\+ 2 = 12"),
    (lambda: SetDisjointnessConfig(vocab_size=20, len_b=9), "must be <= 8"),
    (lambda: SetDisjointnessConfig(order="random"), "order='random'"),
    (lambda: RegularLanguageConfig(max_alphabet=19), "max_alphabet <= 18"),
    (lambda: LinearRegressionConfig(covariance="diag"), "covariance='diag'"),
    (lambda: DataConfig(train_examples=-1), "train_examples must be >= 0"),
])
def test_bad_settings_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()
