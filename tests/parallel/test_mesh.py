"""Meshes from config: sizes resolve against the device count, and every bad size fails before
anything compiles, saying what to change."""

import jax
import pytest

from jaxlm.parallel import AXES, MeshConfig, make_mesh


def test_minus_one_takes_the_devices_left_over():
    mesh = make_mesh(MeshConfig(data=-1, sequence=4))
    assert mesh.axis_names == AXES
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "sequence": 4, "tensor": 1}
    assert jax.device_count() == 8


@pytest.mark.parametrize("config, message", [
    (MeshConfig(data=3), "multiply to 3 but there are 8 devices"),
    (MeshConfig(data=-1, sequence=3), "do not divide|does not divide"),
    (MeshConfig(data=-1, fsdp=-1), "only one axis may be -1"),
    (MeshConfig(data=0), "mesh.data=0"),
])
def test_bad_sizes_are_explained(config, message):
    with pytest.raises(ValueError, match=message):
        make_mesh(config)
