"""Stacked training: a member of a stack equals the same point trained alone, its run directory
holds what a separate run writes, a stack resumes (also after an uneven interruption), and it
keeps a separate run's promises for every member (locks, resume checks, non-finite stops,
SIGINT checkpoints)."""

import os
import signal

import jax
import numpy as np
import pytest

from jaxlm.config import ConfigError, apply_overrides, load_config
from jaxlm.train import (Checkpointer, NonFiniteTraining, RunDirBusy, RunLock,
                         TrainingInterrupted, build_model, init_train_state, make_optimizer,
                         read_metrics, train)
from jaxlm.train.metrics import MetricWriter
from jaxlm.train.stacked import group_stackable, member_mesh, train_stacked
from tests.train.test_train import TINY, leaves

# Members differ in every kind of member field: seed, learning rate, weight decay, Adam's b2,
# and the data seed (per-member batches).
MEMBERS = [TINY, apply_overrides(TINY, ["train.seed=1", "train.learning_rate=3e-3",
                                        "train.weight_decay=0.0", "train.b2=0.99",
                                        "data.seed=5"])]
# vmap turns each matmul into a batched one, and lax.map's loop body fuses differently, so XLA's
# CPU backend rounds in the last bits differently from the separate run (measured: up to 6e-8
# apart after 8 float32 steps); a stacked member is within these of the separate run.
RTOL, ATOL = 1e-5, 1e-6


def assert_states_close(a, b):
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL)


def test_member_equals_separate_run(tmp_path):
    """Both forms of the stack: vmapped with the members sharded over two of the eight
    simulated devices, and sequential (lax.map). Each member equals its separate run in state,
    metrics rows, checkpoints and config.json."""
    assert member_mesh(len(MEMBERS)).shape["members"] == 2
    alone = [train(config, tmp_path / f"a{i}", progress=False)
             for i, config in enumerate(MEMBERS)]
    for form, vectorize in (("vmap", True), ("map", False)):
        dirs = [tmp_path / f"{form}{i}" for i in range(len(MEMBERS))]
        stacked = train_stacked(MEMBERS, dirs, progress=False, vectorize=vectorize)
        for i, run_dir in enumerate(dirs):
            assert int(stacked[i].state.step) == 8
            assert_states_close(stacked[i].state, alone[i].state)
            rows_s, rows_a = read_metrics(run_dir), read_metrics(tmp_path / f"a{i}")
            assert [(r["step"], r["split"], sorted(r)) for r in rows_s] == \
                [(r["step"], r["split"], sorted(r)) for r in rows_a]
            for r_s, r_a in zip(rows_s, rows_a):
                assert r_s.get("learning_rate") == r_a.get("learning_rate")
                np.testing.assert_allclose(r_s["loss"], r_a["loss"], rtol=1e-5)
            assert stacked[i].eval_metrics.keys() == alone[i].eval_metrics.keys()
            for name in ("config.json", "environment.json"):
                assert (run_dir / name).read_text() == (tmp_path / f"a{i}" / name).read_text()
            assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["8"]
        # The members really differ (different seeds, rates, data).
        assert not np.allclose(leaves(stacked[0].state)[0], leaves(stacked[1].state)[0])


def test_resume_equals_uninterrupted_even_after_uneven_stop(tmp_path):
    """A stack stopped at step 4, then one member carried on alone to step 6 (as if the stack
    was interrupted between two members' saves): resuming the stack restarts both at 4, the
    member ahead re-saves and re-logs nothing, and the result is the uninterrupted stack's,
    bit for bit on CPU (the same program)."""
    configs = [apply_overrides(c, ["train.checkpoint_every=2"]) for c in MEMBERS]
    whole = train_stacked(configs, [tmp_path / "w0", tmp_path / "w1"], progress=False)
    dirs = [tmp_path / "r0", tmp_path / "r1"]
    train_stacked(configs, dirs, stop_after=4, progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train_stacked(configs, dirs, progress=False)
    train(configs[0], dirs[0], resume=True, stop_after=6, progress=False)
    resumed = train_stacked(configs, dirs, resume=True, progress=False)
    for a, b in zip(whole, resumed):
        for x, y in zip(leaves(a.state), leaves(b.state), strict=True):
            if jax.default_backend() == "cpu":
                np.testing.assert_array_equal(x, y)
            else:
                np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    for run_dir in dirs:
        steps = [m["step"] for m in read_metrics(run_dir) if m["split"] == "train"]
        assert steps == [2, 4, 6, 8]


def test_grouping_and_bad_stacks(tmp_path):
    wide = apply_overrides(TINY, ["model.d_model=32"])
    configs = [TINY, wide, MEMBERS[1], apply_overrides(wide, ["train.learning_rate=1e-2"])]
    assert group_stackable(configs) == [[0, 2], [1, 3]]
    # Whether gradients are clipped changes the optimizer's state: not one stack.
    assert group_stackable([TINY, apply_overrides(TINY, ["train.grad_clip=0"])]) == [[0], [1]]
    power = apply_overrides(TINY, ["train.schedule=power"])
    assert group_stackable([power, apply_overrides(power, ["train.learning_rate=0.1"])]) == \
        [[0], [1]]
    with pytest.raises(ConfigError, match=r"differs from configs\[0\] in \['model.d_model'\]"):
        train_stacked([TINY, wide], [tmp_path / "a", tmp_path / "b"], progress=False)
    with pytest.raises(ValueError, match="2 configs but 1 run_dirs"):
        train_stacked([TINY, TINY], [tmp_path / "a"], progress=False)


def test_member_run_dirs_are_locked(tmp_path):
    """A member's run directory held by another writer is refused, naming the holder; the
    locks the stack took are released (and nothing was trained)."""
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    dirs[1].mkdir()
    with RunLock(dirs[1]):
        with pytest.raises(RunDirBusy, match=f"m1 is in use: .*pid {os.getpid()} on host"):
            train_stacked(MEMBERS, dirs, progress=False)
    with RunLock(dirs[0]), RunLock(dirs[1]):  # both free again
        pass
    assert not any((d / "checkpoints").exists() for d in dirs)
    with pytest.raises(ValueError, match="more than once"):
        train_stacked(MEMBERS, [dirs[0], dirs[0]], progress=False)


def test_sigint_checkpoints_every_member_and_resume_checks_each_config(tmp_path, monkeypatch):
    """Ctrl-C at step 5 finishes the step, checkpoints both members and raises; resuming with
    a changed (unsafe) key of one member is refused naming it and its run directory, before
    anything is written. (Resuming a stack is tested above.)"""
    configs = [apply_overrides(c, ["train.log_every=1"]) for c in MEMBERS]
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    write, sent = MetricWriter.write, []

    def write_then_interrupt(self, step, metrics, split="train"):
        write(self, step, metrics, split)
        if step == 5 and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(MetricWriter, "write", write_then_interrupt)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT after step 5 of 8"):
        train_stacked(configs, dirs, progress=False)
    monkeypatch.setattr(MetricWriter, "write", write)
    for run_dir in dirs:
        checkpointer = Checkpointer(run_dir / "checkpoints")
        assert checkpointer.all_steps() == [5]
        checkpointer.close()
    changed = [configs[0], apply_overrides(configs[1], ["train.learning_rate=0.01"])]
    with pytest.raises(ConfigError, match=r"m1: .*train.learning_rate: 0.003 -> 0.01"):
        train_stacked(changed, dirs, resume=True, progress=False)
    assert load_config(dirs[1] / "config.json") == configs[1]  # the record is untouched
    assert not (dirs[0] / "resumes.jsonl").exists()
    for run_dir in dirs:
        assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5]


def test_a_diverging_member_stops_the_stack_before_saving_it(tmp_path):
    """Member 1's learning rate makes its loss non-finite: the stack stops naming its run
    directory and step, and no member holds a non-finite checkpoint."""
    overrides = ["train.grad_clip=0", "train.warmup_steps=0", "train.checkpoint_every=1"]
    configs = [apply_overrides(MEMBERS[0], overrides),
               apply_overrides(MEMBERS[1], overrides + ["train.learning_rate=1e30"])]
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    with pytest.raises(NonFiniteTraining, match=r"non-finite .* at step \d+ .* in .*m1: "):
        train_stacked(configs, dirs, progress=False)
    for config, run_dir in zip(configs, dirs):
        checkpointer = Checkpointer(run_dir / "checkpoints")
        _, like = init_train_state(build_model(config), make_optimizer(config.train))
        assert checkpointer.all_steps()  # the finite steps before it were saved
        for step in checkpointer.all_steps():  # restore checks every value is finite
            checkpointer.restore(like, step)
        checkpointer.close()
