"""Match3 labels equal a loop over triples (all, and the degenerate ones that repeat a
position), and the generator's rows carry them."""

import itertools

import jax
import numpy as np
import pytest

from jaxlm.data import Match3Config, match3_example, match3_labels


@pytest.mark.parametrize("degenerate", [False, True])
def test_labels_equal_a_loop_over_triples(degenerate):
    x = np.random.default_rng(0).integers(0, 7, (3, 9))
    got = np.asarray(match3_labels(x, 7, degenerate=degenerate))
    for b, i in np.ndindex(3, 9):
        want = any((x[b, i] + x[b, j] + x[b, k]) % 7 == 0
                   for j, k in itertools.product(range(i + 1), repeat=2)
                   if not degenerate or len({i, j, k}) < 3)
        assert got[b, i] == want


def test_example_and_config():
    row = jax.jit(match3_example, static_argnums=1)(jax.random.key(0),
                                                    Match3Config(modulus=5, seq_len=10))
    assert row["inputs"].shape == row["targets"].shape == (10,)
    assert (np.asarray(row["targets"]) == np.asarray(match3_labels(row["inputs"], 5))).all()
    with pytest.raises(ValueError, match="match3.modulus"):
        Match3Config(modulus=1)
