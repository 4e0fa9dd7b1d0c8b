"""Results tables (Markdown, CSV) and plots (PNG) from the rows a sweep saved, with the papers'
numbers beside ours."""

from __future__ import annotations

import csv
import json
import pathlib
import re
import statistics
from collections.abc import Sequence

from jaxlm.probes import PROBE_COLUMNS, published, published_notes
from jaxlm.runner.experiment import parse_run_name, run_name_without

RESULTS = "results.jsonl"
BASE_COLUMNS = ("model", "d_model", "layers", "params", "seq_len", "steps")
# Columns that describe a task's settings: column name -> field of the task's config.
TASK_COLUMNS = {
    "mqar": {"kv_pairs": "num_kv_pairs"},
    "selective_copy": {"num_tokens": "num_tokens"},
    "passkey": {"num_digits": "num_digits"},
    "set_disjointness": {"len_a": "len_a", "len_b": "len_b", "repeats": "repeats"},
    "linear_regression": {"n_dims": "n_dims", "noise_std": "noise_std"},
    "text": {"trained_on_cipher": "cipher"},
    "state_tracking": {"group": "group"},
    "needle_threading": {"max_hops": "max_hops", "direction": "direction"},
    "match3": {"modulus": "modulus"},
}
# Per-length metrics shown in the table (ridge, nearest_3 and zero stay in result.json and the
# plot: a table with every baseline at every length is too wide to read).
_SWEPT = re.compile(r"^(accuracy|error|least_squares|averaging|decipher)@\d+$")


def with_swept_axes(rows: Sequence[dict]) -> list[dict]:
    """The rows with a field for each sweep axis of their run names (e.g. ``input_mask_rate``
    from ``pattern=gla,input_mask_rate=0.15``) that tells apart rows the table's description
    columns (model, width, task settings, ...) would show alike; its value as the run name
    spells it. The added names are listed in each row's ``axes`` (``table_columns`` shows
    them after ``model``). The seed axis is left to :func:`over_seeds`."""
    if not rows:
        return list(rows)
    task = rows[0].get("task", "mqar")
    described = list(BASE_COLUMNS) + list(TASK_COLUMNS.get(task, {}))
    axes = [parse_run_name(row.get("run", "")) for row in rows]
    names = [n for n in dict.fromkeys(n for a in axes for n in a)
             if n != "seed" and not any(n in row for row in rows)]
    added = []
    for name in names:
        values: dict[tuple, set] = {}
        for row, axis in zip(rows, axes):
            values.setdefault(tuple(repr(row.get(c)) for c in described), set()).add(
                axis.get(name))
        if any(len(v) > 1 for v in values.values()):
            added.append(name)
    if not added:
        return list(rows)
    return [{**row, **{n: axis.get(n, "") for n in added}, "axes": tuple(added)}
            for row, axis in zip(rows, axes)]


def table_columns(rows: Sequence[dict]) -> list[str]:
    """The columns of a results table: the run's description (with the sweep axes that
    :func:`with_swept_axes` added), the task's settings, the probe's metrics (including
    per-length ones such as ``accuracy@256``), the published number when there is one, and
    the training time."""
    task = rows[0].get("task", "mqar") if rows else "mqar"
    axes = list(dict.fromkeys(n for row in rows for n in row.get("axes", ())))
    columns = list(BASE_COLUMNS[:1]) + axes + list(BASE_COLUMNS[1:]) + list(
        TASK_COLUMNS.get(task, {})) + list(PROBE_COLUMNS.get(task, ()))
    for row in rows:
        columns += [k for k in row if _SWEPT.match(k) and k not in columns]
    if rows:
        main = _main_metric(rows)
        columns += [f"{main}_min", f"{main}_max", "seeds"]
    if len({row.get("seed") for row in rows}) > 1:
        columns.insert(len(BASE_COLUMNS) + len(axes), "seed")
    if any(row.get("paper") for row in rows):
        columns.append("paper")
    columns.append("train_s")
    return [c for c in columns if any(c in row for row in rows)]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def over_seeds(rows: Sequence[dict]) -> list[dict] | None:
    """One row per setting of a sweep with a ``train.seed`` axis: the runs whose names differ
    only in ``seed=`` merged into their mean for every numeric column, the min and max of the
    main metric and the number of seeds; None when no setting has more than one seed. (The run
    name lists every swept axis, so runs that differ in anything else stay apart.)"""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(run_name_without(row.get("run", ""), ["seed"]), []).append(row)
    if all(len(group) == 1 for group in groups.values()):
        return None
    main = _main_metric(rows)
    merged = []
    for key, group in groups.items():
        row = {k: v for k, v in group[0].items() if k != "seed"}
        row["run"] = key or "run"
        for name, value in group[0].items():
            averaged = isinstance(value, float) or name == "train_s"  # not widths, counts
            if averaged and all(_is_number(r.get(name)) for r in group):
                row[name] = statistics.fmean(r[name] for r in group)
        if main in row:
            row[f"{main}_min"] = min(r[main] for r in group)
            row[f"{main}_max"] = max(r[main] for r in group)
        row["seeds"] = len(group)
        merged.append(row)
    return merged


LOWER_IS_BETTER = ("bits_per_byte", "error", "loss", "tv_distance")
PROTOCOL = "protocol.json"  # beside results.jsonl: the sweep axes the report takes the best of


def best_over(rows: Sequence[dict], keys: Sequence[str]) -> list[dict] | None:
    """One row per setting: of the runs whose names differ only in the axes ``keys`` (config
    keys, e.g. ``("train.learning_rate",)``), the one with the best main metric (highest, or
    lowest for the metrics of :data:`LOWER_IS_BETTER`), with the chosen value of each axis in a
    column named by its last part (``learning_rate``, the value as the run name spells it) and
    the number of candidates in ``candidates``. Rows that are means over seeds
    (:func:`over_seeds`) compare by their means. None when ``keys`` is empty."""
    if not keys or not rows:
        return None
    names = [key.split(".")[-1] for key in keys]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(run_name_without(row.get("run", ""), names), []).append(row)
    main = _main_metric(rows)
    sign = -1.0 if main in LOWER_IS_BETTER else 1.0
    best = []
    for key, group in groups.items():
        row = max(group, key=lambda r: sign * r.get(main, float("-inf") * sign))
        axes = parse_run_name(row.get("run", ""))
        chosen = {name: axes[name] for name in names if name in axes}
        best.append({**row, "run": key or "run", **chosen, "candidates": len(group)})
    return best


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    columns = table_columns(rows) if columns is None else columns
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def with_published(rows: Sequence[dict]) -> list[dict]:
    """The rows with a ``paper`` entry: the published number for the same model and setting."""
    return [{**row, "paper": published(row.get("task", "mqar"), row)} for row in rows]


def notes_markdown(rows: Sequence[dict]) -> str:
    task = rows[0].get("task", "mqar") if rows else "mqar"
    notes = published_notes(task)
    return "\n".join(["Published:"] + [f"- {note}" for note in notes]) if notes else ""


def read_rows(out_dir: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(out_dir) / RESULTS
    if not path.exists():
        raise FileNotFoundError(f"no {RESULTS} in {out_dir}: run `jaxlm sweep` into it first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_report(rows: Sequence[dict], out_dir: str | pathlib.Path, *,
                 title: str = "results", best_of: Sequence[str] | None = None) -> str:
    """Writes ``results.md`` (the table, then the papers' findings), ``results.csv`` and
    ``results.png``; returns the Markdown. ``best_of`` (config keys of sweep axes, e.g. the
    learning rate of Zoology's protocol) adds a first table with the best run per setting
    (:func:`best_over`); it is saved in ``protocol.json`` and read from there when None."""
    out_dir = pathlib.Path(out_dir)
    if best_of is None:
        saved = out_dir / PROTOCOL
        best_of = json.loads(saved.read_text())["best_of"] if saved.exists() else ()
    elif best_of:
        (out_dir / PROTOCOL).write_text(json.dumps({"best_of": list(best_of)}))
    rows = with_swept_axes(with_published(rows))
    columns = table_columns(rows)
    text = markdown_table(rows, columns)
    merged = over_seeds(rows)
    if merged is not None:
        text = (f"Mean over seeds:\n\n{markdown_table(merged)}\n\nEvery run:\n\n{text}")
    best = best_over(rows if merged is None else merged, best_of)
    if best is not None:
        chosen = [key.split(".")[-1] for key in best_of]
        best_columns = [c for c in table_columns(best) if c not in chosen]
        at = best_columns.index("model") + 1
        best_columns[at:at] = chosen + ["candidates"]
        text = (f"Best of {', '.join(chosen)} per setting (by {_main_metric(rows)}):\n\n"
                f"{markdown_table(best, best_columns)}\n\n{text}")
    notes = notes_markdown(rows)
    text = f"{text}\n\n{notes}" if notes else text
    (out_dir / "results.md").write_text(f"# {title}\n\n{text}\n")
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot_results(best or (rows if merged is None else merged), out_dir / "results.png",
                 title=title)
    return text


def _main_metric(rows: Sequence[dict]) -> str:
    task = rows[0].get("task", "mqar")
    return (PROBE_COLUMNS.get(task) or ("accuracy",))[0]


def plot_results(rows: Sequence[dict], path: str | pathlib.Path, *, title: str) -> None:
    """One figure for the sweep: error curves for regression; otherwise the main metric against
    test length (when probed at several lengths), width or training length, one line per
    model, or bars when every run has the same settings."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    models = list(dict.fromkeys(row["model"] for row in rows))
    if rows and "curve" in rows[0]:
        _plot_curves(ax, rows)
    else:
        metric = _main_metric(rows)
        lengths = sorted({int(k.split("@")[1]) for r in rows for k in r
                          if k.startswith("accuracy@")})
        widths = sorted({row["d_model"] for row in rows})
        seq_lens = sorted({row["seq_len"] for row in rows})
        if lengths:
            for row in rows:
                points = sorted([(row["seq_len"], row[metric])] + [
                    (n, row[f"accuracy@{n}"]) for n in lengths if f"accuracy@{n}" in row])
                ax.plot(*zip(*points), marker="o", label=row["run"])
            ax.set_xscale("log", base=2)
            ax.set_xlabel("test sequence length")
        elif len(widths) > 1 or len(seq_lens) > 1:
            axis = "d_model" if len(widths) > 1 else "seq_len"
            other = "seq_len" if axis == "d_model" else "d_model"
            for model in models:
                for fixed in sorted({r[other] for r in rows if r["model"] == model}):
                    line = sorted((r for r in rows if r["model"] == model and r[other] == fixed),
                                  key=lambda r: r[axis])
                    label = model if len(seq_lens) == 1 or axis == "seq_len" else \
                        f"{model}, {other} {fixed}"
                    _plot_with_range(ax, [r[axis] for r in line], line, metric, label)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("model width (d_model)" if axis == "d_model" else "sequence length")
        else:
            names = [row["model"] for row in rows]
            labels = names if len(set(names)) == len(names) else [row["run"] for row in rows]
            ax.bar(range(len(rows)), [row.get(metric, 0.0) for row in rows])
            ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
        baseline = next((k for k in ("baseline", "unigram") if k in rows[0]), None)
        if baseline:
            ax.axhline(min(r[baseline] for r in rows), color="gray", ls="--", lw=1,
                       label=baseline)
        if all(0 <= r.get(metric, 0.0) <= 1 for r in rows):  # accuracies
            ax.set_ylim(0, 1.05)
        else:  # e.g. bits per byte
            ax.set_ylim(0, None)
        ax.set_ylabel(metric)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_with_range(ax, xs: Sequence[float], rows: Sequence[dict], metric: str,
                     label: str) -> None:
    """``metric`` of ``rows`` against ``xs``, with the range over seeds as a band when the rows
    are means over seeds (see :func:`over_seeds`)."""
    lines = ax.plot(xs, [r[metric] for r in rows], marker="o", label=label)
    if all(f"{metric}_min" in r for r in rows):
        ax.fill_between(xs, [r[f"{metric}_min"] for r in rows],
                        [r[f"{metric}_max"] for r in rows], color=lines[0].get_color(),
                        alpha=0.2, lw=0)


def _plot_curves(ax, rows: Sequence[dict]) -> None:
    """Normalised squared error against in-context examples: each run, and the baselines of
    the first run (all runs share the test prompts)."""
    for row in rows:
        ax.plot(row["curve"]["model"], marker=".", label=row["run"])
    for name, values in rows[0]["curve"].items():
        if name != "model":
            ax.plot(values, ls="--", lw=1, label=name)
    ax.set_xlabel("in-context examples")
    ax.set_ylabel("squared error / d")
    ax.set_ylim(0, 2)
    ax.legend(fontsize=7)
