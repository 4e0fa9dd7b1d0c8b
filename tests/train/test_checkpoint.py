"""Checkpoint integrity: a flipped, truncated or deleted file in the newest step falls back to
the newest intact step with a warning naming the step and why; none intact is one line."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.train.checkpoint import (CHECKSUMS, DAMAGED, CheckpointError, Checkpointer,
                                    CheckpointWarning)

STATE = {"a": jnp.arange(1000.0), "b": jnp.ones((30, 30))}


def write_steps(directory, steps=(1, 2, 3), keep=2):
    checkpointer = Checkpointer(directory, keep=keep)
    for step in steps:
        checkpointer.save(step, jax.tree.map(lambda x: x + step, STATE), info={"step": step})
    checkpointer.close()
    return Checkpointer(directory, keep=keep)


def largest_file(step_dir):
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def flip(step_dir):
    path = largest_file(step_dir)
    data = bytearray(path.read_bytes())
    for i in range(0, min(64, len(data))):
        data[len(data) // 2 + i - 32] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(step_dir):
    path = largest_file(step_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete(name):
    def damage(step_dir):
        for path in list(step_dir.rglob(name)):
            path.unlink()
    return damage


def empty(step_dir):
    for path in step_dir.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


DAMAGES = {"flip": flip, "truncate": truncate, "delete_metadata": delete("_METADATA"),
           "delete_manifest": delete("manifest.ocdbt"), "delete_checksums": delete(CHECKSUMS),
           "empty": empty}


def test_old_steps_deleted_only_after_newer_checksums(tmp_path):
    checkpointer = write_steps(tmp_path / "ck")
    assert checkpointer.all_steps() == [2, 3]
    assert all((tmp_path / "ck" / str(s) / CHECKSUMS).exists() for s in (2, 3))
    assert checkpointer.info(3) == {"step": 3}
    restored = checkpointer.restore(STATE)
    np.testing.assert_array_equal(restored["a"], STATE["a"] + 3)
    checkpointer.close()


@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_damaged_newest_step_falls_back_to_the_previous(tmp_path, damage):
    checkpointer = write_steps(tmp_path / "ck")
    DAMAGES[damage](tmp_path / "ck" / "3")
    with pytest.warns(CheckpointWarning) as record:
        restored = checkpointer.restore(STATE, set_aside=True)
    np.testing.assert_array_equal(restored["a"], STATE["a"] + 2)
    messages = [str(w.message) for w in record]
    assert any(m.startswith("checkpoint step 3 ") and " skipped: " in m for m in messages)
    assert any(m.startswith("damaged checkpoint step 3 moved to ") for m in messages)
    # The damaged step is set aside, so the run can save step 3 again.
    assert (tmp_path / DAMAGED / "3").exists() and checkpointer.all_steps() == [2]
    checkpointer.save(3, STATE)
    checkpointer.close()
    assert Checkpointer(tmp_path / "ck").all_steps() == [2, 3]


def test_no_intact_step_fails_in_one_line(tmp_path):
    checkpointer = write_steps(tmp_path / "ck")
    flip(tmp_path / "ck" / "3")
    truncate(tmp_path / "ck" / "2")
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError) as error:
        checkpointer.restore(STATE)
    message = str(error.value)
    assert "\n" not in message and "step 3: " in message and "step 2: " in message
    checkpointer.close()


def test_unverified_newer_step_never_deletes_the_last_intact_one(tmp_path):
    """keep=1: a step whose save has not finished (no checksums yet) does not delete the
    intact step before it; once its checksums are written, the older one goes."""
    checkpointer = write_steps(tmp_path / "ck", steps=(1,), keep=1)
    checkpointer.save(2, STATE)
    checkpointer._manager.wait_until_finished()  # step 2 on disk, its checksums not yet
    assert checkpointer.all_steps() == [1, 2]
    with pytest.warns(CheckpointWarning, match="step 2 .* no jaxlm_checksums.json"):
        restored = Checkpointer(tmp_path / "ck").restore(STATE)
    np.testing.assert_array_equal(restored["a"], STATE["a"] + 1)
    checkpointer.close()
    assert checkpointer.all_steps() == [2]
