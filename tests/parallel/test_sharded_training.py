"""Training under a mesh gives the single-device loss curve and parameters (float32; XLA may
sum a sharded batch or sequence in another order, so within 1e-5 relative, not bit for bit),
for an attention (also with dropout), a Mamba and a DeltaNet model; with a sequence axis their
mixers run ring attention and LASP-2 (tests/parallel/test_dispatch.py shows the switch). Bad
meshes, and sequence axes on models without a sequence-parallel path, fail before compiling."""

import jax
import numpy as np
import pytest

from jaxlm.config import apply_overrides
from jaxlm.train import read_metrics, train
from tests.train.test_train import TINY

MODELS = {"attention": [], "mamba": ["model.pattern=mamba"],
          "deltanet": ["model.pattern=deltanet", "model.deltanet.n_heads=2"],
          # The same dropout masks however the activations are split (partitionable threefry).
          "attention_dropout": ["model.dropout=0.2", "model.d_ff=16"]}


def losses(run_dir):
    return [m["loss"] for m in read_metrics(run_dir) if m["split"] == "train"]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_data_and_sequence_sharded_training_equals_one_device(tmp_path, model):
    config = apply_overrides(TINY, MODELS[model] + ["train.steps=4"])
    one = train(config, tmp_path / "one", progress=False)
    sharded_config = apply_overrides(config, ["mesh.data=2", "mesh.sequence=4"])
    sharded = train(sharded_config, tmp_path / "sharded", progress=False)
    np.testing.assert_allclose(losses(tmp_path / "sharded"), losses(tmp_path / "one"),
                               rtol=1e-5)
    for a, b in zip(jax.tree.leaves(sharded.state.params), jax.tree.leaves(one.state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    leaf = jax.tree.leaves(sharded.state.params)[0]
    assert len(leaf.sharding.device_set) == 8


def test_fsdp_shards_parameters_and_matches(tmp_path):
    config = apply_overrides(TINY, ["train.steps=4"])
    one = train(config, tmp_path / "one", progress=False)
    sharded = train(apply_overrides(config, ["mesh.data=-1", "mesh.fsdp=2"]),
                    tmp_path / "fsdp", progress=False)
    np.testing.assert_allclose(losses(tmp_path / "fsdp"), losses(tmp_path / "one"), rtol=1e-5)
    embed = max(jax.tree.leaves(sharded.state.params), key=lambda x: x.size)
    assert "fsdp" in str(embed.sharding.spec)


@pytest.mark.parametrize("overrides, message", [
    (["mesh.data=3"], "multiply to 3 but there are 8 devices"),
    (["mesh.data=8", "train.batch_size=4"], "batch_size=4 must be a multiple"),
    (["mesh.data=1", "mesh.sequence=-1", "data.mqar.seq_len=12"], "seq_len=12"),
    (["mesh.data=4", "mesh.tensor=2"], "tensor parallelism is not built"),
    (["mesh.data=2", "mesh.sequence=4", "model.pattern=attention,s4", "model.n_layers=2"],
     r"mixers \['s4'\] of model.pattern='attention,s4' have no sequence-parallel path"),
    (["mesh.data=2", "mesh.sequence=4", "model.kind=hierarchical"],
     "model.kind='hierarchical' has no sequence-parallel path"),
    (["mesh.data=2", "mesh.sequence=4", "model.ngram_heads=2"],
     "model.ngram_heads=2 has no sequence-parallel path"),
])
def test_bad_mesh_fails_before_compiling(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(apply_overrides(TINY, overrides), tmp_path, progress=False)
