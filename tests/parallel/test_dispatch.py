"""Models under ``jax.set_mesh`` with a sequence axis run their mixers' sequence-parallel forms
(a ``shard_map`` per layer shows in the traced program) and give the one-device logits and
gradients (float32, within 2e-5 relative: the same sums regrouped), with packed rows, at a length
(12) that the 4-way split divides (training requires it) but ring attention's 8 half-chunks do
not (it pads). The ops' own tests cover lengths the split does not divide."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxlm.models import ModelConfig, build_lm
from jaxlm.parallel import MeshConfig, make_mesh, sequence_mesh
from tests.helpers import rel_err
from tests.parallel.test_sequence import segments

TOL = 2e-5
BASE = ModelConfig(vocab_size=32, d_model=16, n_layers=1, d_ff=0)
ATTENTION = dataclasses.replace(BASE.attention, n_heads=4, n_kv_heads=2)
MODELS = {
    "ring": dataclasses.replace(BASE, pattern="attention", attention=ATTENTION),
    "zigzag": dataclasses.replace(BASE, pattern="attention", attention=dataclasses.replace(
        ATTENTION, sequence_parallel="zigzag")),
    "ulysses": dataclasses.replace(BASE, pattern="attention", attention=dataclasses.replace(
        ATTENTION, sequence_parallel="ulysses")),
    "window+gla": dataclasses.replace(BASE, pattern="attention_window,gla", n_layers=2),
    "linear_attention": dataclasses.replace(BASE, pattern="linear_attention"),
    "gated_deltanet": dataclasses.replace(BASE, pattern="gated_deltanet"),
    "mamba": dataclasses.replace(BASE, pattern="mamba"),
    "mamba2": dataclasses.replace(BASE, pattern="mamba2"),
}


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MeshConfig(data=2, sequence=4))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_under_sequence_mesh_equals_one_device(mesh, name):
    model = build_lm(MODELS[name], rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    batch, length = 2, 12
    tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, 32)
    seg = segments(batch, length)
    weights = jax.random.normal(jax.random.key(2), (batch, length, 32))

    def loss(params):
        logits = nnx.merge(graphdef, params)(tokens, segment_ids=seg)
        return jnp.sum(logits * weights)

    one = jax.jit(jax.value_and_grad(loss))(params)
    with jax.set_mesh(mesh):
        split = jax.jit(jax.value_and_grad(loss))(params)
        program = str(jax.make_jaxpr(loss)(params))
    assert program.count("shard_map") >= len(MODELS[name].layer_mixers())
    assert "shard_map" not in str(jax.make_jaxpr(loss)(params))
    assert rel_err(split, one) < TOL


def test_sequence_mesh_follows_the_context(mesh):
    assert sequence_mesh() is None
    with jax.set_mesh(mesh):
        assert sequence_mesh() is not None
    with jax.set_mesh(make_mesh(MeshConfig(data=-1))):
        assert sequence_mesh() is None  # a sequence axis of size 1 splits nothing
