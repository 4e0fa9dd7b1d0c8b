"""Device meshes from config: named axes ``data``, ``fsdp``, ``sequence``, ``tensor``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "sequence", "tensor")
BATCH_AXES = ("data", "fsdp")  # the axes that split the batch


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; their product is the device count. One size may be -1: "the
    devices left over". ``data`` and ``fsdp`` split the batch (``fsdp`` also splits parameters),
    ``sequence`` splits the length, ``tensor`` is reserved for splitting model width. All ones
    (the default) means one device and no mesh."""
    data: int = 1
    fsdp: int = 1
    sequence: int = 1
    tensor: int = 1

    @property
    def single_device(self) -> bool:
        return all(getattr(self, name) == 1 for name in AXES)

    def sizes(self, device_count: int) -> dict[str, int]:
        """The resolved axis sizes for ``device_count`` devices; raises with what to change."""
        sizes = {name: getattr(self, name) for name in AXES}
        for name, size in sizes.items():
            if size == 0 or size < -1:
                raise ValueError(f"mesh.{name}={size}: an axis size must be a positive integer "
                                 f"or -1 (the devices left over)")
        free = [name for name, size in sizes.items() if size == -1]
        if len(free) > 1:
            raise ValueError(f"mesh: only one axis may be -1, got {free}")
        fixed = math.prod(size for size in sizes.values() if size != -1)
        if free:
            if device_count % fixed:
                raise ValueError(f"mesh: the fixed axes {self._describe(sizes)} multiply to "
                                 f"{fixed}, which does not divide the {device_count} devices; "
                                 f"choose sizes whose product divides {device_count}")
            sizes[free[0]] = device_count // fixed
        elif fixed != device_count:
            raise ValueError(f"mesh: {self._describe(sizes)} multiply to {fixed} but there are "
                             f"{device_count} devices; make the product {device_count} or set "
                             f"one axis to -1")
        return sizes

    @staticmethod
    def _describe(sizes: dict[str, int]) -> str:
        return ", ".join(f"{name}={size}" for name, size in sizes.items() if size != -1)


def make_mesh(config: MeshConfig = MeshConfig(data=-1),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with the four axes of ``config`` (size-1 axes included, so sharding rules can
    always name them) over ``devices`` (default: all). The axes are ``Auto``: jit places
    whatever the code does not shard by hand, and ``shard_map`` reshards its inputs."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = config.sizes(len(devices))
    return jax.make_mesh(tuple(sizes[name] for name in AXES), AXES,
                         axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def under_mesh(fn: Callable, mesh: Mesh | None) -> Callable:
    """``fn`` called under ``jax.set_mesh(mesh)`` (``fn`` itself when ``mesh`` is None), so the
    ops of :mod:`jaxlm.parallel.dispatch` it traces see the mesh."""
    if mesh is None:
        return fn

    def run(*args, **kwargs):
        with jax.set_mesh(mesh):
            return fn(*args, **kwargs)
    return run


def axis_size(mesh: Mesh, axis: str) -> int:
    """The size of ``axis``, or an error naming the mesh's axes."""
    if axis not in mesh.axis_names:
        raise ValueError(f"sequence parallelism: the mesh has no axis {axis!r}; its axes are "
                         f"{mesh.axis_names}")
    return mesh.shape[axis]


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The batch-splitting axes (data, fsdp) that ``mesh`` has."""
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh, rank: int, *, sequence: bool = False) -> NamedSharding:
    """Sharding of a [batch, length, ...] array: batch over (data, fsdp), and length over
    ``sequence`` when asked."""
    spec = [batch_axes(mesh), "sequence" if sequence else None] + [None] * (rank - 2)
    return NamedSharding(mesh, PartitionSpec(*spec[:rank]))


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """Parameter sharding under FSDP: the largest axis that ``fsdp`` divides is split over the
    ``fsdp`` axis (ties: the first); arrays with no such axis are replicated."""
    candidates = [(size, -i) for i, size in enumerate(shape) if fsdp > 1 and size % fsdp == 0]
    if not candidates:
        return PartitionSpec()
    axis = -max(candidates)[1]
    return PartitionSpec(*[("fsdp" if i == axis else None) for i in range(len(shape))])


def place_state(state, mesh: Mesh):
    """Puts a train-state pytree on ``mesh``: parameters and optimizer moments FSDP-sharded
    (:func:`fsdp_spec`), scalars replicated. With several processes every process must pass
    the same values (the same seed or the same checkpoint)."""
    fsdp = mesh.shape["fsdp"]

    def place(x):
        sharding = NamedSharding(mesh, fsdp_spec(x.shape, fsdp))
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree.map(place, state)
