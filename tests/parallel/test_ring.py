"""Ring attention (contiguous and zig-zag chunks) and Ulysses attention on 8 simulated CPU
devices equal one-device causal attention, values and gradients (float64, relative error
< 1e-10: the same softmax summed in another order), with grouped-query heads, sliding windows,
packed rows and lengths the ring size does not divide."""

import jax
import jax.numpy as jnp
import pytest

from jaxlm.ops import attention
from jaxlm.parallel import MeshConfig, make_mesh, ring_attention, ulysses_attention
from jaxlm.parallel.ring import blocks_per_device
from tests.helpers import normal, rel_err
from tests.parallel.test_sequence import segments

TOL = 1e-10


MESHES = {"2x4": MeshConfig(data=2, sequence=4), "1x8": MeshConfig(data=1, sequence=8)}
CASES = [  # mesh, length, packed, scheme, window
    ("2x4", 16, False, "contiguous", None),
    ("1x8", 13, True, "contiguous", None),
    ("2x4", 13, True, "zigzag", None),
    ("1x8", 16, False, "zigzag", 5),
    ("1x8", 37, True, "contiguous", 5),  # one hop carrying the last 4 keys, not seven hops
    ("2x4", 29, True, "contiguous", 11),  # the window reaches two chunks back: two hops
    ("2x4", 13, True, "ulysses", None),  # 2 kv heads on 4 devices: repeated to 4
    ("2x4", 16, False, "ulysses", 5),
]


@pytest.mark.parametrize("mesh_name, length, packed, scheme, window", CASES)
def test_sequence_parallel_attention_equals_attention(mesh_name, length, packed, scheme, window):
    mesh = make_mesh(MESHES[mesh_name])
    batch, heads, kv_heads, d = 2, 4, 2, 8
    q, k, v = (normal(1, (batch, length, heads, d)), normal(2, (batch, length, kv_heads, d)),
               normal(3, (batch, length, kv_heads, d)))
    seg = segments(batch, length) if packed else None
    weights = normal(4, q.shape)

    def run(fn):
        loss = lambda q, k, v: jnp.sum(fn(q, k, v) * weights)
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)

    if scheme == "ulysses":
        split = lambda q, k, v: ulysses_attention(q, k, v, mesh=mesh, segment_ids=seg,
                                                  window=window, impl="reference")
    else:
        split = lambda q, k, v: ring_attention(q, k, v, mesh=mesh, segment_ids=seg,
                                               window=window, layout=scheme)
    dense = run(lambda q, k, v: attention(q, k, v, segment_ids=seg, window=window,
                                          impl="reference"))
    assert rel_err(run(split), dense) < TOL


def test_zigzag_balances_the_causal_work():
    contiguous = blocks_per_device(8, 4)
    assert contiguous == [3 + 4 * i for i in range(8)]  # the last device does 10x the first
    assert blocks_per_device(8, 4, layout="zigzag") == [17] * 8  # the same total, balanced
    assert sum(contiguous) == 17 * 8


def test_bad_input_is_named():
    mesh = make_mesh(MeshConfig(data=2, sequence=4))
    q = normal(1, (2, 16, 4, 8))
    with pytest.raises(ValueError, match="kv_heads=3 must divide heads=4"):
        ring_attention(q, q[:, :, :3], q[:, :, :3], mesh=mesh)


def test_ulysses_needs_heads_the_axis_divides():
    mesh = make_mesh(MeshConfig(data=1, sequence=8))
    q = normal(1, (1, 16, 4, 8))
    with pytest.raises(ValueError, match="heads=4 must be a multiple of the 'sequence' axis"):
        ulysses_attention(q, q, q, mesh=mesh)


def test_bad_layout_is_named():
    mesh = make_mesh(MeshConfig(data=2, sequence=4))
    q = normal(1, (2, 16, 4, 8))
    with pytest.raises(ValueError, match="layout='spiral'"):
        ring_attention(q, q, q, mesh=mesh, layout="spiral")
