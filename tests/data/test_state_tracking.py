"""The state-tracking task: the group tables are groups, and every target is the running product
of the inputs, checked against a plain loop over explicit permutations / residues."""

import itertools

import numpy as np
import pytest

from jaxlm.data import DataConfig, StateTrackingConfig, group_table, make_source


@pytest.mark.parametrize("group, order", [("parity", 2), ("cyclic", 5), ("s3", 6), ("s5", 120)])
def test_tables_are_groups_with_identity_zero(group, order):
    table = group_table(group, 5)
    assert table.shape == (order, order)
    assert (table[0] == np.arange(order)).all() and (table[:, 0] == np.arange(order)).all()
    assert all(sorted(row) == list(range(order)) for row in table)  # a Latin square
    a, b, c = np.random.default_rng(0).integers(0, order, (3, 200))
    assert (table[table[a, b], c] == table[a, table[b, c]]).all()  # associative


@pytest.mark.parametrize("group", ["cyclic", "s3", "s5"])
def test_targets_are_running_products(group):
    config = StateTrackingConfig(group=group, modulus=7, seq_len=20)
    batch = make_source(DataConfig(task="state_tracking", state_tracking=config)).batch(0, 4)
    inputs, targets = np.asarray(batch["inputs"]), np.asarray(batch["targets"])
    assert inputs.max() < config.vocab_size
    if group == "cyclic":
        assert (targets == np.cumsum(inputs, axis=1) % 7).all()
        return
    perms = list(itertools.permutations(range(int(group[1]))))
    for row, want in zip(inputs, targets):
        state = tuple(range(len(perms[0])))
        for g, t in zip(row, want):
            state = tuple(perms[g][state[i]] for i in range(len(state)))  # apply state, then g
            assert perms[t] == state


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="state_tracking.group='z7'"):
        StateTrackingConfig(group="z7")
    with pytest.raises(ValueError, match="state_tracking.modulus must be >= 2"):
        StateTrackingConfig(group="cyclic", modulus=1)
