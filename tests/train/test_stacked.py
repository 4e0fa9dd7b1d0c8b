"""Stacked training: a member of a stack equals the same point trained alone, its run directory
holds what a separate run writes, and a stack resumes (also after an uneven interruption)."""

import jax
import numpy as np
import pytest

from jaxlm.config import ConfigError, apply_overrides
from jaxlm.train import read_metrics, train
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
