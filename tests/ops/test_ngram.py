"""The n-gram context matches against a loop over every (query, position, order)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops import context_matches
from tests.helpers import loop_matches


@pytest.mark.parametrize("vocab", [2, 3])
def test_context_matches_equal_the_loop(vocab):
    """Exact (booleans). Few distinct tokens, so matches of every order occur, in a packed row
    (a match must not reach into the previous document) and an unpacked one."""
    tokens = np.array(jax.random.randint(jax.random.key(vocab), (2, 17), 0, vocab))
    segment_ids = np.array([[0] * 6 + [1] * 11, [0] * 17])
    out = context_matches(jnp.asarray(tokens), 3, segment_ids=jnp.asarray(segment_ids))
    expected = loop_matches(tokens, segment_ids, 3)
    assert expected[:, 2].any()
    np.testing.assert_array_equal(out, expected)
    queries = jnp.asarray([4, 16])  # the form generation uses: chosen query positions
    np.testing.assert_array_equal(
        context_matches(jnp.asarray(tokens), 3, query_positions=queries,
                        segment_ids=jnp.asarray(segment_ids)), expected[:, :, [4, 16]])


def test_context_matches_names_a_bad_input():
    with pytest.raises(ValueError, match=r"tokens must have shape \[batch, length\], got \(5,\)"):
        context_matches(jnp.zeros((5,), jnp.int32), 2)
    with pytest.raises(ValueError, match="orders must be >= 1, got 0"):
        context_matches(jnp.zeros((1, 5), jnp.int32), 0)
