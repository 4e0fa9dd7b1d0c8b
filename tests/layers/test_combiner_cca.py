"""The combiner and core_context mixers away from their defaults: parallel == a loop of
``step`` (float64, relative error < 1e-10) with small blocks, max pooling, grouped-query heads
and a window shorter than the group; the state needs ``max_length``."""

import jax
import jax.numpy as jnp
import pytest

from tests.helpers import rel_err
from tests.layers.test_mixers import D_MODEL, make_mixer, run_steps

TOL = 1e-10


@pytest.mark.parametrize("name, options", [
    ("combiner", dict(block_size=3, pooling="max", n_kv_heads=2)),
    ("core_context", dict(group_size=4, window=3, n_kv_heads=1)),
])
def test_step_equals_parallel(name, options):
    mixer = make_mixer(name, **options)
    x = jax.random.normal(jax.random.key(2), (2, 14, D_MODEL), jnp.float64)
    parallel, recurrent = jax.jit(lambda m, x: (m(x), run_steps(m, x, 14)))(mixer, x)
    assert rel_err(recurrent, parallel) < TOL


@pytest.mark.parametrize("name", ["combiner", "core_context"])
def test_state_needs_max_length(name):
    with pytest.raises(ValueError, match="max_length"):
        make_mixer(name).init_state(1, jnp.float64)
