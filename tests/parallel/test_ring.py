"""Ring attention on 8 simulated CPU devices equals one-device causal attention, values and
gradients (float64, relative error < 1e-10: the same softmax summed in another order), with
grouped-query heads, packed rows and lengths the ring size does not divide."""

import jax
import jax.numpy as jnp
import pytest

from jaxlm.ops import attention
from jaxlm.parallel import MeshConfig, make_mesh, ring_attention
from tests.helpers import normal, rel_err
from tests.parallel.test_sequence import segments

TOL = 1e-10


@pytest.mark.parametrize("mesh_config", [MeshConfig(data=2, sequence=4),
                                         MeshConfig(data=1, sequence=8)], ids=["2x4", "1x8"])
@pytest.mark.parametrize("length, packed", [(16, False), (13, True)])
def test_ring_equals_attention(mesh_config, length, packed):
    mesh = make_mesh(mesh_config)
    batch, heads, kv_heads, d = 2, 4, 2, 8
    q, k, v = (normal(1, (batch, length, heads, d)), normal(2, (batch, length, kv_heads, d)),
               normal(3, (batch, length, kv_heads, d)))
    seg = segments(batch, length) if packed else None
    weights = normal(4, q.shape)

    def run(fn):
        loss = lambda q, k, v: jnp.sum(fn(q, k, v) * weights)
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)

    ring = run(lambda q, k, v: ring_attention(q, k, v, mesh=mesh, segment_ids=seg))
    dense = run(lambda q, k, v: attention(q, k, v, segment_ids=seg, impl="reference"))
    assert rel_err(ring, dense) < TOL


def test_bad_input_is_named():
    mesh = make_mesh(MeshConfig(data=2, sequence=4))
    q = normal(1, (2, 16, 4, 8))
    with pytest.raises(ValueError, match="kv_heads=3 must divide heads=4"):
        ring_attention(q, q[:, :, :3], q[:, :, :3], mesh=mesh)
