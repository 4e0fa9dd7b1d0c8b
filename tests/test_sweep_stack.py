"""``jaxlm sweep --stack``: the points that share the model's shapes train as one program, each
into its own run directory with its own result row."""

import json

from jaxlm.cli import main
from tests.test_cli import experiment  # noqa: F401  (the fixture: a tiny two-model sweep)


def test_sweep_stack_with_seeds(experiment, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    args = ["sweep", str(experiment), "--out", str(out), "--no-progress", "--seeds", "2"]
    assert main(args + ["--stack"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("stack of 2:") == 2 and "Mean over seeds:" in printed
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["model"], r["seed"], r["stack"]) for r in rows] == [
        ("attention", 0, 2), ("attention", 1, 2), ("attention_window", 0, 2),
        ("attention_window", 1, 2)]
    for row in rows:
        run_dir = out / row["run"]
        assert json.loads((run_dir / "result.json").read_text()) == row
        assert (run_dir / "checkpoints" / "4").is_dir() and (run_dir / "metrics.jsonl").exists()
    assert main(args + ["--stack"]) == 0  # finished runs are skipped
    assert capsys.readouterr().out.count("done earlier, skipped") == 4
    assert main(args + ["--stack", "--workers", "2"]) == 2
    assert "stack is one process" in capsys.readouterr().err
