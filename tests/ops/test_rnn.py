"""LSTM, GRU and sLSTM with block-diagonal recurrent matrices: the ``lax.scan`` form equals the
plain-scan reference (dense block-diagonal matrices; the sLSTM unstabilised), values and
gradients with respect to every input, in float64 (tolerance 1e-10 relative: only summation
order and the sLSTM's exp(−m) scaling differ)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops.rnn import CELLS, block_diagonal, rnn, rnn_initial_state
from tests.helpers import assert_forms_agree, forms_and_grads, normal, rel_err

TOL = 1e-10
HEADS, HEAD_DIM = 2, 3


def inputs(seed, cell, batch, length):
    gates, names = CELLS[cell]
    state = {k: normal(seed + 3 + i, (batch, HEADS, HEAD_DIM)) for i, k in enumerate(names)}
    if cell == "slstm":  # a reachable state: n > 0
        state["n"] = jnp.exp(state["n"])
    return dict(
        pre=normal(seed, (batch, length, HEADS, len(gates), HEAD_DIM)),
        weights=normal(seed + 1, (HEADS, len(gates), HEAD_DIM, HEAD_DIM)) / HEAD_DIM ** 0.5,
        bias=normal(seed + 2, (HEADS, len(gates), HEAD_DIM)),
        state=state,
    )


def run(cell, segment_ids):
    def op(x, impl):
        h, state = rnn(cell, x["pre"], x["weights"], x["bias"], initial_state=x["state"],
                       segment_ids=segment_ids, return_final_state=True, impl=impl)
        return h, jnp.stack([state[k] for k in sorted(state)])
    return op


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("batch, length, packed", [(2, 13, True), (1, 5, False)])
def test_scan_equals_reference(cell, batch, length, packed):
    x = inputs(length, cell, batch, length)
    segment_ids = (jnp.asarray(np.cumsum(np.random.default_rng(0).random((batch, length)) < 0.2,
                                         axis=1)) if packed else None)
    weights = normal(99, (batch, length, HEADS, HEAD_DIM))
    assert_forms_agree(forms_and_grads(run(cell, segment_ids), x, weights), TOL)


def test_block_diagonal_places_each_head_on_the_diagonal():
    w = normal(0, (3, 2, 2, 2))
    dense = block_diagonal(w)
    assert dense.shape == (2, 6, 6)
    assert (dense[1, 2:4, 2:4] == w[1, 1]).all()
    assert (dense[0, 0:2, 2:] == 0).all() and (dense[0, 4:, :4] == 0).all()


def test_slstm_stabiliser_keeps_large_input_gates_finite_in_float32():
    """ĩ = 100 overflows exp in float32; the stabilised scan stays finite and equals the
    float64 reference."""
    x = inputs(1, "slstm", 1, 6)
    pre = x["pre"].at[:, :, :, 0].add(100.0)
    ref = rnn("slstm", pre, x["weights"], impl="reference")
    fast = rnn("slstm", pre.astype(jnp.float32), x["weights"].astype(jnp.float32), impl="xla")
    assert jnp.isfinite(fast).all()
    assert rel_err(fast, ref) < 1e-5


def test_fresh_state_is_zeros_and_bad_shapes_are_named():
    state = rnn_initial_state("slstm", 2, HEADS, HEAD_DIM)
    assert sorted(state) == ["c", "h", "m", "n"] and not any(v.any() for v in state.values())
    x = inputs(0, "lstm", 1, 4)
    with pytest.raises(ValueError, match="cell='gru' has 3 gates"):
        rnn("gru", x["pre"], x["weights"])
    with pytest.raises(ValueError, match="recurrent_weights must have shape"):
        rnn("lstm", x["pre"], x["weights"][:1])
    with pytest.raises(ValueError, match="cell='rnn' is unknown"):
        rnn("rnn", x["pre"], x["weights"])
