"""Two JAX processes on localhost (4 CPU devices each, joined by ``jax.distributed``) train
with mesh data=2 x sequence=4 through ``experiments/two_process_training.py``: the loss curve
equals one process's over 8 devices (float32, within 1e-5 relative), and the checkpoint they
write together restores in one process to the same parameters."""

import importlib.util
import pathlib

import jax
import numpy as np

from jaxlm.config import load_config
from jaxlm.train import Checkpointer, build_model, init_train_state, make_optimizer

SCRIPT = pathlib.Path(__file__).parents[2] / "experiments" / "two_process_training.py"


def restored_params(run_dir: pathlib.Path):
    config = load_config(run_dir / "config.json")
    _, like = init_train_state(build_model(config), make_optimizer(config.train))
    checkpointer = Checkpointer(run_dir / "checkpoints")
    try:
        assert checkpointer.latest_step() == config.train.steps
        return checkpointer.restore(like).params
    finally:
        checkpointer.close()


def test_two_processes_train_like_one(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("two_process_training", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--out", str(tmp_path), "--steps", "3", "--timeout", "300"])
    rows = [line.split("|")[1:4] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    assert [int(step) for step, _, _ in rows] == [1, 2, 3]
    together, alone = (np.array([float(row[i]) for row in rows]) for i in (1, 2))
    np.testing.assert_allclose(together, alone, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(restored_params(tmp_path / "processes")),
                    jax.tree.leaves(restored_params(tmp_path / "one_process"))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_bad_distributed_config_is_named():
    import pytest
    from jaxlm.parallel import DistributedConfig
    with pytest.raises(ValueError, match="distributed.process_id=2: expected 0 <= id < "
                                         "num_processes=2"):
        DistributedConfig(initialize=True, num_processes=2, process_id=2)
