"""What a run promises on interruption: a SIGTERM mid-run checkpoints and resumes bit for
bit; metrics keep one row per step; a changed config is refused by name; a non-finite loss
stops before saving; one process per run directory."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxlm.config import ConfigError, apply_overrides, load_config
from jaxlm.train import (PREEMPTED_EXIT, Checkpointer, NonFiniteTraining, RunDirBusy,
                         TrainingInterrupted, build_model, init_train_state, make_optimizer,
                         read_metrics, train)
from jaxlm.train.metrics import MetricWriter
from tests.train.test_train import TINY, leaves

# An experiment file whose runs log every step and take 0.1 s per logged step, so that a
# signal sent after the first row arrives mid-run.
SLOW = '''
import time
from jaxlm.config import Config, apply_overrides
from jaxlm.train import metrics

_write = metrics.MetricWriter.write
def _slow_write(self, *args, **kwargs):
    _write(self, *args, **kwargs)
    time.sleep(0.1)
metrics.MetricWriter.write = _slow_write

def config():
    return apply_overrides(Config(name="slow"), {overrides!r})
'''

OVERRIDES = ["model.d_model=16", "model.n_layers=1", "model.vocab_size=64",
             "model.attention.n_heads=2", "data.mqar.vocab_size=64", "data.mqar.seq_len=16",
             "data.mqar.num_kv_pairs=2", "train.steps=40", "train.batch_size=8",
             "train.log_every=1", "train.warmup_steps=2", "train.eval_batches=1",
             "train.tensorboard=false", "probe.num_examples=16", "probe.batch_size=16"]


def test_sigterm_mid_run_checkpoints_and_resume_is_bit_identical(tmp_path):
    path = tmp_path / "slow.py"
    path.write_text(SLOW.format(overrides=OVERRIDES))
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "jaxlm.cli", "train", str(path),
                                "--run-dir", str(run_dir), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not read_metrics(run_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == PREEMPTED_EXIT, err[-2000:]
    assert "SIGTERM received" in err and "continue with --resume" in err
    stopped = Checkpointer(run_dir / "checkpoints").latest_step()
    assert 1 <= stopped < 40 and f"after step {stopped} of 40" in err

    config = load_config(run_dir / "config.json")
    resumed = train(config, run_dir, resume=True, progress=False)
    whole = train(config, tmp_path / "whole", progress=False)
    for a, b in zip(leaves(whole.state), leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)
    steps = [m["step"] for m in read_metrics(run_dir) if m["split"] == "train"]
    assert steps == list(range(1, 41))


def test_sigint_stops_at_a_step_and_redone_steps_keep_one_metrics_row(tmp_path, monkeypatch):
    """Ctrl-C at step 5 checkpoints step 5. Then a crash is simulated by losing that
    checkpoint: resuming from step 4 redoes step 5, whose old row is replaced."""
    config = apply_overrides(TINY, ["train.log_every=1", "train.checkpoint_every=4"])
    write = MetricWriter.write

    def write_then_interrupt(self, step, metrics, split="train"):
        write(self, step, metrics, split)
        if step == 5 and split == "train":
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(MetricWriter, "write", write_then_interrupt)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT after step 5 of 8"):
        train(config, tmp_path, progress=False)
    monkeypatch.setattr(MetricWriter, "write", write)
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    assert checkpointer.all_steps() == [4, 5]
    checkpointer._manager.delete(5)
    checkpointer.close()
    result = train(config, tmp_path, resume=True, progress=False)
    assert int(result.state.step) == 8 and result.seconds > 0
    rows = read_metrics(tmp_path)
    assert [m["step"] for m in rows if m["split"] == "train"] == list(range(1, 9))
    assert [m["step"] for m in rows if m["split"] == "validation"] == [8]
    # Resumed after its last step: nothing is redone, the seconds and the evaluation are kept.
    again = train(config, tmp_path, resume=True, progress=False)
    assert again.seconds == pytest.approx(result.seconds, abs=0.01)
    assert again.eval_metrics == pytest.approx(result.eval_metrics)
    assert len(read_metrics(tmp_path)) == len(rows)


def test_resume_with_a_changed_config_names_the_keys(tmp_path):
    train(TINY, tmp_path, stop_after=2, progress=False)
    changed = apply_overrides(TINY, ["model.d_model=32", "train.learning_rate=0.01",
                                     "train.steps=6"])
    with pytest.raises(ConfigError) as error:
        train(changed, tmp_path, resume=True, progress=False)
    message = str(error.value)
    assert "model.d_model: 16 -> 32" in message and "train.learning_rate: 0.001 -> 0.01" in message
    assert "train.steps" not in message.split(";")[0]  # safe to change: not listed as a problem
    assert load_config(tmp_path / "config.json") == TINY  # the record is untouched
    # Keys safe to change on resume are accepted and recorded.
    longer = apply_overrides(TINY, ["train.steps=6", "train.log_every=3"])
    result = train(longer, tmp_path, resume=True, progress=False)
    assert int(result.state.step) == 6
    record = json.loads((tmp_path / "resumes.jsonl").read_text())
    assert record["step"] == 2 and record["changed"]["train.steps"] == {"old": 8, "new": 6}
    assert load_config(tmp_path / "config.json") == longer


def test_non_finite_loss_stops_before_any_checkpoint_of_it(tmp_path):
    config = apply_overrides(TINY, ["train.learning_rate=1e30", "train.grad_clip=0",
                                    "train.warmup_steps=0", "train.checkpoint_every=1"])
    with pytest.raises(NonFiniteTraining, match=r"non-finite .* at step \d+ .*learning_rate"):
        train(config, tmp_path, progress=False)
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    _, like = init_train_state(build_model(config), make_optimizer(config.train))
    for step in checkpointer.all_steps():  # restore checks every value is finite
        checkpointer.restore(like, step)
    checkpointer.close()


def test_a_second_process_on_the_same_run_dir_fails_naming_the_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jaxlm.train.rundir import RunLock; "
         "lock = RunLock(sys.argv[1]); lock.acquire(); print('locked', flush=True); "
         "time.sleep(60)", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirBusy, match=f"in use: .*pid {holder.pid} on host"):
            train(TINY, tmp_path, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "checkpoints").exists()
    train(TINY, tmp_path, stop_after=1, progress=False)  # the lock died with its holder
