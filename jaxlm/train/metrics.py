"""Metric writers: JSONL always, TensorBoard event files optionally (process 0 only)."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping

import jax


class MetricWriter:
    """Appends ``{"step": ..., "split": ..., **metrics}`` lines to ``metrics.jsonl`` and, with
    ``tensorboard=True``, scalars ``split/name`` to event files in ``tensorboard/``.

    ``resume_step``: a run resumed from the checkpoint of that step first drops the rows of
    later steps (written before an interruption, and about to be redone), from the JSONL file
    and, through tensorboardX's ``purge_step``, from TensorBoard, so each step keeps one row."""

    def __init__(self, run_dir: str | pathlib.Path, *, tensorboard: bool = True,
                 resume_step: int | None = None):
        self.enabled = jax.process_index() == 0
        run_dir = pathlib.Path(run_dir)
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        if self.enabled and resume_step is not None and self.path.exists():
            kept = [row for row in read_metrics(run_dir) if row["step"] <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
            os.replace(tmp, self.path)
        if self.enabled and tensorboard:
            from tensorboardX import SummaryWriter
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for name, value in row.items():
                if name not in ("step", "split"):
                    self._tb.add_scalar(f"{split}/{name}", value, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | pathlib.Path) -> list[dict]:
    """Every row a run wrote to ``run_dir/metrics.jsonl``, in order: ``{"step", "split"
    ("train" or "validation"), metric: value, ...}``; [] before the first write. A partial
    last line (the process was killed while writing it) is left out."""
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise
            # the last line of a process killed while writing it: dropped
    return rows
