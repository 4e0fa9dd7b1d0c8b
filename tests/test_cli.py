"""The jaxlm command end to end, at tiny sizes."""

import json
import pathlib
import subprocess
import sys

import pytest

from jaxlm.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]

EXPERIMENT = '''
from jaxlm.config import Config, apply_overrides
from jaxlm.runner import grid

def config():
    return apply_overrides(Config(name="tiny"), [
        "model.d_model=16", "model.n_layers=1", "model.vocab_size=64",
        "model.attention.n_heads=2", "model.attention_window.n_heads=2",
        "data.mqar.vocab_size=64", "data.mqar.seq_len=16", "data.mqar.num_kv_pairs=2",
        "train.steps=4", "train.batch_size=8", "train.log_every=2", "train.warmup_steps=1",
        "train.eval_batches=1", "train.tensorboard=false", "probe.num_examples=16",
        "probe.batch_size=16",
    ])

def sweep():
    return grid({"model.pattern": ["attention", "attention_window"]})
'''


@pytest.fixture
def experiment(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(EXPERIMENT)
    return path


def test_version():
    out = subprocess.run([sys.executable, "-m", "jaxlm.cli", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("jaxlm ")


def test_sweep_probe_report(experiment, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(experiment), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| attention_window |" in printed and "accuracy" in printed
    for name in ("results.md", "results.csv", "results.png", "results.jsonl"):
        assert (out / name).exists()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["model"] for r in rows] == ["attention", "attention_window"]
    assert all(0 <= r["accuracy"] <= 1 and r["baseline"] == 0.5 for r in rows)

    # A second sweep skips the finished runs.
    assert main(["sweep", str(experiment), "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("done earlier, skipped") == 2

    # Probe a trained run on a longer task than it was trained on; rewrite the report.
    run_dir = out / "pattern=attention"
    assert main(["probe", str(run_dir), "--set", "data.mqar.seq_len=32"]) == 0
    assert json.loads(capsys.readouterr().out)["seq_len"] == 32
    (out / "results.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "results.md").exists()


def test_sweep_with_seeds(experiment, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["sweep", str(experiment), "--out", str(out), "--no-progress"]
    assert main(args + ["--seeds", "2", "--set", "train.seed=3"]) == 0
    printed = capsys.readouterr().out
    assert "Mean over seeds:" in printed and "| seeds |" in printed
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "pattern=attention,seed=3", "pattern=attention,seed=4",
        "pattern=attention_window,seed=3", "pattern=attention_window,seed=4"]
    assert main(args + ["--seeds", "0"]) == 2
    assert "seeds must be a positive integer, got 0" in capsys.readouterr().err
    assert main(args + ["--only", "model.pattern=gla"]) == 2
    assert "no sweep point has model.pattern=gla" in capsys.readouterr().err


def test_sweep_with_worker_processes(experiment, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", str(experiment), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished pattern=") == 2
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["model"] for r in rows] == ["attention", "attention_window"]
    assert (out / "results.png").exists()


def test_train_then_resume(experiment, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", str(experiment), "--run-dir", str(run_dir), "--no-progress"]
    assert main(args + ["--set", "train.steps=2"]) == 0
    assert "| attention |" in capsys.readouterr().out
    assert main(args) == 2  # checkpoints exist and --resume was not given
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert json.loads((run_dir / "result.json").read_text())["steps"] == 4


@pytest.mark.parametrize("override, message", [
    ("model.d_modle=8", "unknown config key 'model.d_modle'"),
    ("model.attention.window=0", "window must be a positive integer"),
])
def test_bad_overrides_fail_before_training(experiment, tmp_path, capsys, override, message):
    assert main(["sweep", str(experiment), "--out", str(tmp_path / "o"), "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


EXPERIMENT_FILES = sorted(path for path in (ROOT / "experiments").glob("*.py")
                          if "\ndef config(" in path.read_text())


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda path: path.stem)
def test_every_experiment_file_and_preset_builds_its_configs(path):
    """Every experiment file under experiments/ loads, with each of its presets, and every
    point of its sweep is a valid config (nothing is trained)."""
    from jaxlm.runner import load_experiment
    experiment = load_experiment(path)
    assert len(experiment.configs()) >= 1
    for preset in experiment.presets:
        assert len(load_experiment(path, preset=preset).configs()) >= 1


def test_run_dir_naming_a_file_fails_in_one_line(experiment, tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("")
    assert main(["train", str(experiment), "--run-dir", str(target), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is a file; give a directory" in err and "Errno" not in err


def test_train_validates_what_it_trains_and_a_sweep_names_the_invalid_point(tmp_path):
    """token_free.py's sweep has MrT5 points that a one-layer decoder base cannot satisfy:
    `jaxlm train` with that base is fine, a sweep names the point that fails."""
    from jaxlm.config import ConfigError
    from jaxlm.runner import load_experiment
    experiment = load_experiment(ROOT / "experiments" / "token_free.py",
                                 ["model.kind=decoder", "model.n_layers=1"])
    assert experiment.base.model.n_layers == 1
    with pytest.raises(ConfigError, match=r"token_free.py: sweep point \d+ of \d+ \(kind=mrt5"):
        experiment.configs()


def test_sweep_worker_dies_with_its_parent(tmp_path):
    """kill -9 of the parent: its worker gets SIGTERM (and would checkpoint and exit)."""
    import os
    import signal
    import time
    child = ("import sys, time; from jaxlm.runner.worker import die_with_parent; "
             "die_with_parent(int(sys.argv[1])); print('armed', flush=True); time.sleep(120)")
    parent = ("import os, subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
              f"{child!r}, str(os.getpid())], stdout=subprocess.PIPE, text=True); "
              "print(p.pid, p.stdout.readline().strip(), flush=True); p.wait()")
    process = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE,
                               text=True)
    pid, armed = process.stdout.readline().split()
    assert armed == "armed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(int(pid), signal.SIGKILL)
        pytest.fail("the worker outlived its parent")
