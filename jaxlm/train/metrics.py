"""Metric writers: JSONL always, TensorBoard event files optionally (process 0 only)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

import jax


class MetricWriter:
    """Appends ``{"step": ..., "split": ..., **metrics}`` lines to ``metrics.jsonl`` and, with
    ``tensorboard=True``, scalars ``split/name`` to event files in ``tensorboard/``."""

    def __init__(self, run_dir: str | pathlib.Path, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        run_dir = pathlib.Path(run_dir)
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        if self.enabled and tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

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
    ("train" or "validation"), metric: value, ...}``; [] before the first write."""
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
