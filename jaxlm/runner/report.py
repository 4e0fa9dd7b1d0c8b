"""Results tables (Markdown, CSV) and plots (PNG) from the rows a sweep saved."""

from __future__ import annotations

import csv
import json
import pathlib
from collections.abc import Sequence

RESULTS = "results.jsonl"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def read_rows(out_dir: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(out_dir) / RESULTS
    if not path.exists():
        raise FileNotFoundError(f"no {RESULTS} in {out_dir}: run `jaxlm sweep` into it first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_report(rows: Sequence[dict], out_dir: str | pathlib.Path, *, columns: Sequence[str],
                 title: str = "results") -> str:
    """Writes ``results.md``, ``results.csv`` and ``results.png``; returns the Markdown table."""
    out_dir = pathlib.Path(out_dir)
    table = markdown_table(rows, columns)
    (out_dir / "results.md").write_text(f"# {title}\n\n{table}\n")
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot_accuracy(rows, out_dir / "results.png", title=title)
    return table


def plot_accuracy(rows: Sequence[dict], path: str | pathlib.Path, *, title: str) -> None:
    """Accuracy against sequence length, one line per model (bars when there is one length)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    lengths = sorted({row["seq_len"] for row in rows})
    models = list(dict.fromkeys(row["model"] for row in rows))
    if len(lengths) > 1:
        for model in models:
            points = sorted((r["seq_len"], r["accuracy"]) for r in rows if r["model"] == model)
            ax.plot(*zip(*points), marker="o", label=model)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.legend()
    else:
        names = [row["model"] for row in rows]
        labels = names if len(set(names)) == len(names) else [row["run"] for row in rows]
        ax.bar(range(len(rows)), [row["accuracy"] for row in rows])
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
    if rows and "baseline" in rows[0]:
        ax.axhline(min(r["baseline"] for r in rows), color="gray", ls="--", lw=1,
                   label="chance")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
