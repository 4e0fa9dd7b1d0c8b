"""Training: the loss falls, resuming equals not stopping (bit for bit on CPU), checkpoints are
never overwritten by accident."""

import json

import jax
import numpy as np
import pytest

from jaxlm.config import Config, apply_overrides
from flax import nnx

from jaxlm.train import build_model, read_metrics, train

TINY = apply_overrides(Config(), [
    "model.d_model=16", "model.n_layers=1", "model.vocab_size=64", "model.attention.n_heads=2",
    "data.mqar.vocab_size=64", "data.mqar.seq_len=16", "data.mqar.num_kv_pairs=2",
    "train.steps=8", "train.batch_size=8", "train.log_every=2", "train.warmup_steps=2",
    "train.eval_batches=1", "train.tensorboard=false",
])


ROUTING = apply_overrides(TINY, ["model.pattern=sparse_attention",
                                 "model.sparse_attention.selection=routing",
                                 "model.sparse_attention.n_heads=2",
                                 "model.sparse_attention.n_clusters=2"])


DROPOUT = apply_overrides(TINY, ["model.dropout=0.3", "model.d_ff=16"])


def leaves(state):
    """Every array of a train state, random keys as their key data."""
    as_array = lambda x: np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key) else x)
    return [as_array(x) for x in jax.tree.leaves((state.params, state.opt_state,
                                                  state.variables))]


@pytest.mark.parametrize("config", [TINY, ROUTING, DROPOUT], ids=["attention", "routing",
                                                                  "dropout"])
def test_resume_equals_uninterrupted(tmp_path, config):
    """Bit for bit on CPU; within float tolerance on accelerators, whose reductions may be
    non-deterministic. Routing attention's centroids and the dropout stream's key and count
    (train-state variables, not parameters) are checkpointed and resumed too."""
    whole = train(config, tmp_path / "whole", progress=False)
    first = train(config, tmp_path / "split", stop_after=4, progress=False)
    assert int(first.state.step) == 4
    second = train(config, tmp_path / "split", resume=True, progress=False)
    assert int(second.state.step) == 8
    for a, b in zip(leaves(whole.state), leaves(second.state)):
        if jax.default_backend() == "cpu":
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # Metrics of both halves were written, once each.
    steps = [m["step"] for m in read_metrics(tmp_path / "split") if m["split"] == "train"]
    assert steps == [2, 4, 6, 8]


def test_existing_checkpoint_needs_resume(tmp_path):
    train(TINY, tmp_path, stop_after=2, progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train(TINY, tmp_path, progress=False)


def test_loss_falls_and_outputs_are_written(tmp_path):
    config = apply_overrides(TINY, ["train.steps=40", "train.learning_rate=1e-2",
                                    "train.tensorboard=true", "train.checkpoint_every=10",
                                    "train.eval_every=20", "train.keep_checkpoints=2"])
    result = train(config, tmp_path, progress=False)
    rows = read_metrics(tmp_path)
    train_losses = [m["loss"] for m in rows if m["split"] == "train"]
    assert train_losses[-1] < train_losses[0]
    assert {m["step"] for m in rows if m["split"] == "validation"} == {20, 40}
    assert result.eval_metrics["loss"] > 0
    for name in ("config.json", "environment.json", "metrics.jsonl"):
        assert (tmp_path / name).exists()
    environment = json.loads((tmp_path / "environment.json").read_text())
    assert environment["backend"] == "cpu" and environment["cpu_cores"] >= 1
    assert any((tmp_path / "tensorboard").iterdir())
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [30, 40]


def test_routing_centroids_are_variables_the_optimizer_never_sees(tmp_path):
    result = train(ROUTING, tmp_path, stop_after=3, progress=False)
    assert "centroids" not in str(jax.tree_util.tree_structure(result.state.params))
    centroids = jax.tree.leaves(result.state.variables)
    assert centroids and all(np.allclose(np.linalg.norm(c, axis=-1), 1, atol=1e-5)
                             for c in centroids)
    initial = jax.tree.leaves(nnx.state(build_model(ROUTING), nnx.Not(nnx.Param)))
    assert not any(np.allclose(a, b) for a, b in zip(centroids, initial))


def test_dropout_stream_advances_each_step_apart_from_the_parameters(tmp_path):
    """The dropout stream advances with each training step, and the parameters start where a
    dropout-free model's do (the masks have a stream of their own)."""
    result = train(DROPOUT, tmp_path, stop_after=3, progress=False)
    counts = [int(x) for x in jax.tree.leaves(result.state.variables)
              if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]
    assert counts == [3 * 2]  # one block: its mixer and its MLP output, each step
    no_dropout = apply_overrides(DROPOUT, ["model.dropout=0"])
    same = lambda a, b: jax.tree.all(jax.tree.map(np.array_equal, a, b))
    assert same(nnx.state(build_model(DROPOUT), nnx.Param),
                nnx.state(build_model(no_dropout), nnx.Param))


def test_schedule_with_warmup_as_long_as_the_run():
    """A trial run of a long config (warm-up >= steps) still gets a schedule that rises and
    ends at the final learning rate, for every schedule."""
    from jaxlm.config import TrainConfig
    from jaxlm.train import make_schedule
    for schedule in ("cosine", "linear", "constant"):
        sched = make_schedule(TrainConfig(steps=5, warmup_steps=100, schedule=schedule,
                                          learning_rate=1.0))
        values = [float(sched(i)) for i in range(6)]
        assert values[0] == 0.0 and max(values) > 0.5 and all(v >= 0 for v in values)


def test_weight_decay_skips_the_parameters_layers_mark():
    """Mamba's A_log [d_inner, d_state] and D, Mamba-2's A_log, dt_bias and D, S4D's A and Δ
    are not decayed (as in the reference implementations); projection matrices are."""
    from jaxlm.train.optim import decay_mask
    expected = {"mamba": ["a_log", "d_skip"], "mamba2": ["a_log", "d_skip", "dt_bias"],
                "s4d": ["a_im", "a_log_re", "log_dt"]}
    for pattern, marked in expected.items():
        model = build_model(apply_overrides(TINY, [f"model.pattern={pattern}"]))
        mask = decay_mask(nnx.state(model, nnx.Param))
        flags = {jax.tree_util.keystr(path): flag
                 for path, flag in jax.tree_util.tree_leaves_with_path(mask)}
        mixer = "['blocks'][0]['mixer']"
        ssm = mixer + ("['ssm']" if pattern == "s4d" else "")
        assert not any(flags[f"{ssm}['{name}']"] for name in marked), pattern
        assert flags[f"{mixer}['out_proj']['kernel']"], pattern
