"""Checkpoints: a thin wrapper over orbax's ``CheckpointManager``, with checksums.

Orbax writes each step to a temporary directory and renames it when complete, so a run that
fails or is interrupted keeps every checkpoint already finished. Bit rot, a truncated file or a
deleted file is not orbax's concern: once a step's save has finished, this wrapper writes
``CHECKSUMS`` into the step directory (the size and SHA-256 of every file there) and checks
them before restoring. A restore tries the newest step first and falls back to the newest
intact one, warning (``CheckpointWarning``) with the step skipped and why; when none is intact
it raises ``CheckpointError`` in one line. Old steps are deleted only after a newer step's
checksums are written, so the last intact step is never deleted while a newer one is
unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

CHECKSUMS = "jaxlm_checksums.json"  # written into each step directory after its save finished
DAMAGED = "damaged_checkpoints"  # beside the checkpoint directory: damaged steps set aside


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be restored (each one's problem is named)."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older one."""


def file_checksums(directory: pathlib.Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes": size, "sha256": hex digest}}`` of every file under
    ``directory`` except the checksum file itself."""
    sums = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        sums[str(path.relative_to(directory))] = {"bytes": path.stat().st_size,
                                                  "sha256": digest.hexdigest()}
    return sums


def nonfinite_leaves(tree: Any) -> list[str]:
    """Key paths of the floating-point leaves of ``tree`` holding NaN or infinity."""
    bad = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
            if not bool(jnp.all(jnp.isfinite(leaf))):
                bad.append(jax.tree_util.keystr(path))
    return bad


class Checkpointer:
    """Orbax checkpoints of a train state in ``directory``, keeping the latest ``keep``
    intact steps.

    ``save(step, state, info)`` is asynchronous: the next ``save``, ``wait()`` or ``close()``
    waits for it, writes its checksums (with ``info``, a small JSON-able dict, e.g. the training
    seconds so far) and deletes steps beyond ``keep``. ``restore(like)`` restores the newest
    intact step into the structure, shapes, dtypes and shardings of ``like``; ``info(step)``
    reads back what ``save`` was given.
    """

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        self.keep = keep
        # Deletion is ours (``_prune``): orbax would delete old steps as soon as a new one is
        # renamed into place, before its checksums exist.
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True))
        self._pending: tuple[int, dict] | None = None

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def reached_preemption(self, step: int) -> bool:
        """Orbax's preemption sync point: True on every process of a multi-process run (after
        ``jax.distributed.initialize``) once any of them got a preemption notice; False for a
        single process, whose signals ``jaxlm.train.signals`` handles."""
        return self._manager.reached_preemption(step)

    def save(self, step: int, state: Any, info: dict[str, Any] | None = None) -> None:
        self.wait()
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self._pending = (step, dict(info or {}))

    def wait(self) -> None:
        """Waits for the pending save, then writes its checksums and deletes old steps."""
        self._manager.wait_until_finished()
        if self._pending is None:
            return
        step, info = self._pending
        self._pending = None
        if jax.process_index() == 0:
            record = {"step": step, "info": info, "files": file_checksums(self.step_dir(step))}
            tmp = self.step_dir(step) / (CHECKSUMS + ".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, self.step_dir(step) / CHECKSUMS)
        _sync("jaxlm_checksums_written")
        self._prune()

    def _prune(self) -> None:
        verified = [s for s in self.all_steps() if (self.step_dir(s) / CHECKSUMS).exists()]
        if len(verified) <= self.keep:
            return
        oldest_kept = verified[-self.keep]
        for step in self.all_steps():
            if step < oldest_kept:
                self._manager.delete(step)

    def verify(self, step: int) -> str | None:
        """None when ``step``'s files match its checksums; else what is wrong, in words."""
        path = self.step_dir(step)
        if not path.is_dir():
            return f"{path} is missing"
        try:
            record = json.loads((path / CHECKSUMS).read_text())
            expected = record["files"]
        except FileNotFoundError:
            return f"it has no {CHECKSUMS} (its save never finished, or the file was deleted)"
        except (ValueError, KeyError, TypeError) as e:
            return f"its {CHECKSUMS} is unreadable ({e})"
        if not expected:
            return "it holds no files"
        for name, want in expected.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            size = file.stat().st_size
            if size != want["bytes"]:
                return f"{name} has {size} bytes, {want['bytes']} were written"
        actual = file_checksums(path)
        for name, want in expected.items():
            if actual[name]["sha256"] != want["sha256"]:
                return f"{name} does not match its SHA-256 checksum (changed on disk)"
        return None

    def info(self, step: int) -> dict[str, Any]:
        """The ``info`` given to ``save`` for ``step`` ({} when it has none)."""
        try:
            return json.loads((self.step_dir(step) / CHECKSUMS).read_text()).get("info", {})
        except (OSError, ValueError):
            return {}

    def restore(self, like: Any, step: int | None = None, *, set_aside: bool = False) -> Any:
        """Restores ``step``, or by default the newest intact step, into the structure, shapes,
        dtypes and shardings of ``like`` (arrays or ``jax.ShapeDtypeStruct``).

        A step is intact when its files match their checksums, orbax reads it and every
        floating-point value is finite; a damaged one is skipped with a ``CheckpointWarning``
        naming it and why. ``set_aside=True`` (a run about to continue) moves the damaged steps
        newer than the restored one to ``damaged_checkpoints/`` beside the checkpoint
        directory, so training can save those steps again. Raises ``FileNotFoundError`` when
        there is no checkpoint, ``CheckpointError`` (one line) when none is intact.
        """
        steps = self.all_steps()[::-1] if step is None else [step]
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        # Steps written before jaxlm wrote checksums: restored unverified.
        legacy = not any((self.step_dir(s) / CHECKSUMS).exists() for s in self.all_steps())
        if legacy:
            warnings.warn(f"checkpoints in {self.directory} have no checksums (written by an "
                          f"older jaxlm); restoring without verifying them", CheckpointWarning,
                          stacklevel=2)
        problems = []
        for candidate in steps:
            problem = None if legacy else self.verify(candidate)
            if problem is None:
                try:
                    state = self._manager.restore(candidate,
                                                  args=ocp.args.StandardRestore(abstract))
                except Exception as e:  # orbax / tensorstore errors have no common base
                    first_line = (str(e).strip().splitlines() or [""])[0][:200]
                    problem = f"orbax could not read it ({type(e).__name__}: {first_line})"
            if problem is None:
                bad = nonfinite_leaves(state)
                problem = f"non-finite values in {bad[0]}" if bad else None
            if problem is None:
                if set_aside:
                    self._set_aside([s for s, _ in problems if s > candidate])
                return state
            problems.append((candidate, problem))
            warnings.warn(f"checkpoint step {candidate} in {self.directory} skipped: {problem}",
                          CheckpointWarning, stacklevel=2)
        raise CheckpointError(f"no intact checkpoint in {self.directory}: " + "; ".join(
            f"step {s}: {p}" for s, p in problems))

    def _set_aside(self, steps: list[int]) -> None:
        if steps and jax.process_index() == 0:
            damaged = self.directory.parent / DAMAGED
            damaged.mkdir(exist_ok=True)
            for step in steps:
                target = damaged / str(step)
                if target.exists():
                    shutil.rmtree(target)
                shutil.move(self.step_dir(step), target)
                warnings.warn(f"damaged checkpoint step {step} moved to {target}",
                              CheckpointWarning, stacklevel=3)
        _sync("jaxlm_damaged_set_aside")
        self._manager.reload()

    def close(self) -> None:
        """Waits until every started checkpoint is on disk with its checksums."""
        try:
            self.wait()
        finally:
            self._manager.close()


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


__all__ = ["CHECKSUMS", "CheckpointError", "CheckpointWarning", "Checkpointer",
           "file_checksums", "nonfinite_leaves"]
