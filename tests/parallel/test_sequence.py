"""LASP-2 sequence parallelism on 8 simulated CPU devices equals the single-device op, values,
final states and gradients (float64: the same sums regrouped, relative error < 1e-10), at
lengths the device count divides and does not (padded), with packed rows whose documents start
inside a chunk and exactly at a chunk boundary, and whose ids come back (a document is a run)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops import gated_delta_rule, gated_linear_attention, selective_scan, ssd
from jaxlm.parallel import (MeshConfig, make_mesh, sequence_parallel_delta_rule,
                            sequence_parallel_gla, sequence_parallel_selective_scan,
                            sequence_parallel_ssd)
from tests.helpers import normal, rel_err

TOL = 1e-10


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MeshConfig(data=2, sequence=4))


def segments(batch, length):
    """Row 0: documents start inside chunks, and the last one has the first one's id again
    ([0, 1, 0]: three documents, the first and last on different devices); row 1 (for length
    16 on 4 devices): at position 8, a chunk boundary."""
    ids = np.zeros((batch, length), np.int32)
    ids[0, length // 3:] = 1
    ids[0, 2 * length // 3:] = 0
    if batch > 1:
        ids[1, length // 2:] = 1
    return jnp.asarray(ids)


def gla_inputs(batch, length, heads=2, dk=4, dv=3):
    return dict(q=normal(1, (batch, length, heads, dk)), k=normal(2, (batch, length, heads, dk)),
                v=normal(3, (batch, length, heads, dv)),
                log_g=-jnp.abs(normal(4, (batch, length, heads, dk))) * 0.3,
                init=normal(5, (batch, heads, dk, dv)))


def delta_inputs(batch, length, heads=2, dk=4, dv=3):
    k = normal(2, (batch, length, heads, dk))
    return dict(q=normal(1, (batch, length, heads, dk)),
                k=k / jnp.linalg.norm(k, axis=-1, keepdims=True),
                v=normal(3, (batch, length, heads, dv)),
                beta=jax.nn.sigmoid(normal(4, (batch, length, heads))),
                log_alpha=-jnp.abs(normal(6, (batch, length, heads))) * 0.2,
                init=normal(5, (batch, heads, dk, dv)))


def ssd_inputs(batch, length, heads=2, head_dim=3, d_state=4):
    return dict(x=normal(1, (batch, length, heads, head_dim)),
                dt=jax.nn.softplus(normal(2, (batch, length, heads))),
                A=-jnp.exp(normal(3, (heads,))), B=normal(4, (batch, length, 1, d_state)),
                C=normal(5, (batch, length, 1, d_state)), D=normal(6, (heads,)),
                init=normal(7, (batch, heads, head_dim, d_state)))


def selective_inputs(batch, length, d_inner=3, d_state=4):
    return dict(u=normal(1, (batch, length, d_inner)), delta=normal(2, (batch, length, d_inner)),
                A=-jnp.exp(normal(3, (d_inner, d_state))), B=normal(4, (batch, length, d_state)),
                C=normal(5, (batch, length, d_state)), D=normal(6, (d_inner,)),
                z=normal(7, (batch, length, d_inner)), bias=normal(8, (d_inner,)),
                init=normal(9, (batch, d_inner, d_state)))


def single_and_parallel(name, mesh, seg):
    """(inputs maker, single-device fn, sequence-parallel fn) of one op; both fns map a dict of
    float inputs to (out, final state)."""
    if name == "gla":
        make = gla_inputs
        one = lambda a: gated_linear_attention(a["q"], a["k"], a["v"], a["log_g"], chunk_size=2,
                                               initial_state=a["init"], segment_ids=seg,
                                               return_final_state=True)
        many = lambda a: sequence_parallel_gla(a["q"], a["k"], a["v"], a["log_g"], mesh=mesh,
                                               chunk_size=2, initial_state=a["init"],
                                               segment_ids=seg, return_final_state=True)
    elif name == "delta_rule":
        make = delta_inputs
        one = lambda a: gated_delta_rule(a["q"], a["k"], a["v"], a["beta"], a["log_alpha"],
                                         chunk_size=2, initial_state=a["init"],
                                         segment_ids=seg, return_final_state=True)
        many = lambda a: sequence_parallel_delta_rule(
            a["q"], a["k"], a["v"], a["beta"], a["log_alpha"], mesh=mesh, chunk_size=2,
            initial_state=a["init"], segment_ids=seg, return_final_state=True)
    elif name == "ssd":
        make = ssd_inputs
        one = lambda a: ssd(a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"], chunk_size=2,
                            initial_state=a["init"], segment_ids=seg, return_final_state=True)
        many = lambda a: sequence_parallel_ssd(a["x"], a["dt"], a["A"], a["B"], a["C"],
                                               D=a["D"], mesh=mesh, chunk_size=2,
                                               initial_state=a["init"], segment_ids=seg,
                                               return_final_state=True)
    else:
        make = selective_inputs
        one = lambda a: selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"],
                                       a["z"], a["bias"], True, chunk_size=2,
                                       initial_state=a["init"], segment_ids=seg,
                                       return_final_state=True)
        many = lambda a: sequence_parallel_selective_scan(
            a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["bias"], True,
            mesh=mesh, chunk_size=2, initial_state=a["init"], segment_ids=seg,
            return_final_state=True)
    return make, one, many


def values_and_grads(fn, inputs, weights):
    def loss(inputs):
        out, state = fn(inputs)
        return jnp.sum(out * weights) + jnp.sum(state ** 2), (out, state)
    return jax.jit(jax.grad(loss, has_aux=True))(inputs)


@pytest.mark.parametrize("name", ["gla", "delta_rule", "ssd", "selective_scan"])
@pytest.mark.parametrize("length, packed", [(16, False), (13, True)])
def test_sequence_parallel_equals_one_device(mesh, name, length, packed):
    batch = 2
    seg = segments(batch, length) if packed else None
    make, one, many = single_and_parallel(name, mesh, seg)
    inputs = make(batch, length)
    weights = normal(11, one(inputs)[0].shape)
    assert rel_err(values_and_grads(many, inputs, weights),
                   values_and_grads(one, inputs, weights)) < TOL


def test_document_starting_at_a_chunk_boundary(mesh):
    """Length 16 on 4 sequence devices: row 1's second document starts at position 8, the
    first position of the third device; no state may be carried into it."""
    seg = segments(2, 16)
    make, one, many = single_and_parallel("delta_rule", mesh, seg)
    inputs = make(2, 16)
    assert rel_err(jax.jit(many)(inputs), jax.jit(one)(inputs)) < TOL


def test_missing_axis_is_named():
    mesh = jax.make_mesh((8,), ("data",))
    a = gla_inputs(1, 8)
    with pytest.raises(ValueError, match="no axis 'sequence'"):
        sequence_parallel_gla(a["q"], a["k"], a["v"], None, mesh=mesh)


def test_bad_input_is_named_with_the_whole_shapes(mesh):
    a = delta_inputs(2, 16)
    with pytest.raises(ValueError, match=r"beta must have shape .* got \(2, 15, 2\)"):
        sequence_parallel_delta_rule(a["q"], a["k"], a["v"], a["beta"][:, :15], mesh=mesh)
    with pytest.raises(ValueError, match=r"q must have shape"):
        sequence_parallel_gla(a["q"][0], a["k"], a["v"], None, mesh=mesh)
