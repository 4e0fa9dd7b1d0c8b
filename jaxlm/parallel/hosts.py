"""Several processes (hosts) training one model: ``jax.distributed`` start-up and batches that
each process builds only in part.

Every process runs the same program (JAX's multi-controller model). A process generates only
the rows of the global batch that its own devices hold (:func:`local_rows`), and
:func:`place_batch` assembles the global array from those rows. Logging and the run's files are
written by process 0; orbax coordinates the checkpoint writes of all processes.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh

from jaxlm.parallel.mesh import batch_sharding


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """``initialize=True`` calls ``jax.distributed.initialize`` before training. Fields left
    None are found by JAX: from the cluster (Cloud TPU, SLURM, Open MPI, Kubernetes) or from
    ``$JAX_COORDINATOR_ADDRESS``; on one machine give all three, e.g.
    ``coordinator_address="localhost:12355"``, ``num_processes=2`` and each process's id."""
    initialize: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self):
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"distributed.num_processes={self.num_processes}: expected a "
                             f"positive integer or None")
        if self.process_id is not None and not (
                0 <= self.process_id < (self.num_processes or self.process_id + 1)):
            raise ValueError(f"distributed.process_id={self.process_id}: expected 0 <= id < "
                             f"num_processes={self.num_processes}")


def initialize_distributed(config: DistributedConfig) -> None:
    """Joins the processes of ``config`` (once; nothing when ``config.initialize`` is False).
    Must run before anything touches JAX's devices."""
    if config.initialize and not jax.distributed.is_initialized():
        jax.distributed.initialize(coordinator_address=config.coordinator_address,
                                   num_processes=config.num_processes,
                                   process_id=config.process_id)


def local_rows(mesh: Mesh, batch_size: int) -> np.ndarray:
    """The rows of a [batch_size, ...] global batch that this process's devices hold (sorted;
    all rows on one process)."""
    shards = batch_sharding(mesh, 1).addressable_devices_indices_map((batch_size,))
    rows = set()
    for (index,) in shards.values():
        rows.update(range(*index.indices(batch_size)))
    return np.array(sorted(rows))


def place_batch(batch: dict[str, jax.Array], mesh: Mesh, batch_size: int | None = None,
                rows: np.ndarray | None = None) -> dict[str, jax.Array]:
    """Global arrays on ``mesh`` (batch over (data, fsdp), length over ``sequence``) from this
    process's ``rows`` of a ``batch_size``-row batch (default: ``batch`` is the whole batch).
    Each value of ``batch``: [len(rows), ...]."""
    out = {}
    for name, x in batch.items():
        x = np.asarray(x)
        total = x.shape[0] if batch_size is None else batch_size
        where = np.arange(total) if rows is None else rows
        sharding = batch_sharding(mesh, x.ndim, sequence=x.ndim > 1)

        def shard(index, x=x, where=where, total=total):
            wanted = np.arange(total)[index[0]]
            return x[np.searchsorted(where, wanted)][(slice(None),) + tuple(index[1:])]

        out[name] = jax.make_array_from_callback((total,) + x.shape[1:], sharding, shard)
    return out
