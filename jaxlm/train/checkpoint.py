"""Checkpoints: a thin wrapper over orbax's ``CheckpointManager``.

Orbax writes each step to a temporary directory and renames it when complete, so a run that
fails or is interrupted keeps every checkpoint already finished; ``close`` waits for pending
writes.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Orbax checkpoints of a train state in ``directory``, keeping the latest ``keep``:
    ``save(step, state)`` (asynchronous; ``close()`` waits), ``latest_step()``, and
    ``restore(target)`` against a state of the same structure (placed like ``target``)."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        self._manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, like: Any, step: int | None = None) -> Any:
        """Restores ``step`` (default: the latest) into the structure, shapes, dtypes and
        shardings of ``like`` (arrays or ``jax.ShapeDtypeStruct``)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
