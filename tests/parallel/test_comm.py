"""Communicated bytes read from compiled HLO match the theory: LASP-2 all-gathers a fixed
amount whatever the length, ring attention moves P - 1 key/value chunks."""

import jax
import jax.numpy as jnp

from jaxlm.parallel import MeshConfig, make_mesh, ring_attention, sequence_parallel_delta_rule
from jaxlm.parallel.comm import collective_bytes
from tests.helpers import normal


def compiled_bytes(fn, *args):
    return collective_bytes(jax.jit(fn).lower(*args).compile().as_text())


def test_lasp2_is_flat_and_ring_grows_with_length():
    mesh = make_mesh(MeshConfig(sequence=-1))
    heads, d, n = 2, 4, 8
    for length in (64, 256):
        q, k, v = (normal(i, (1, length, heads, d), jnp.float32) for i in range(3))
        beta = jax.nn.sigmoid(normal(3, (1, length, heads), jnp.float32))
        lasp = compiled_bytes(lambda q, k, v: sequence_parallel_delta_rule(q, k, v, beta,
                                                                           mesh=mesh), q, k, v)
        assert lasp["all-gather"] == n * heads * d * (d + d) * 4  # final states + transitions
        ring = compiled_bytes(lambda q, k, v: ring_attention(q, k, v, mesh=mesh), q, k, v)
        assert ring["collective-permute"] == (n - 1) * (length // n) * (heads * 2 * d + 1) * 4
