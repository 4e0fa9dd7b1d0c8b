"""A sweep's points trained as stacks (``jaxlm sweep --stack``): the points that share the
model's shapes run as one program (:func:`jaxlm.train.stacked.train_stacked`), each into its own
run directory, then each is probed and saves its row as a separate run would."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from jaxlm.config import Config
from jaxlm.runner.sweep import RESULT, result_row
from jaxlm.train.stacked import group_stackable, train_stacked


def run_stacked(runs: Sequence[tuple[str, Config]], out_dir: str | pathlib.Path, *,
                progress: bool = True, log=print) -> list[dict]:
    """Trains (or resumes) every ``(name, config)`` of ``runs`` into ``out_dir/<name>/``, the
    stackable ones together, and writes each run's ``result.json``. A row is what a separate
    run writes, except ``train_s`` (the stack's wall time divided among its members) and
    ``stack`` (how many members shared the program). Returns the rows in the order of
    ``runs``."""
    out_dir = pathlib.Path(out_dir)
    rows: dict[int, dict] = {}
    for group in group_stackable([config for _, config in runs]):
        names = [runs[i][0] for i in group]
        log(f"stack of {len(group)}: {', '.join(names)}")
        results = train_stacked([runs[i][1] for i in group],
                                [out_dir / name for name in names], resume=True,
                                progress=progress)
        for i, result in zip(group, results):
            name, config = runs[i]
            row = {**result_row(config, name, result),
                   "train_s": round(result.seconds / len(group), 1), "stack": len(group)}
            (out_dir / name / RESULT).write_text(json.dumps(row, indent=2))
            rows[i] = row
    return [rows[i] for i in range(len(runs))]
