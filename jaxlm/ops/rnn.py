"""Traditional (nonlinear) RNNs with several heads: LSTM, GRU and sLSTM.

"FlashRNN: Optimizing Traditional RNNs on Modern Hardware" runs ``heads`` small RNNs side by
side: the recurrent matrix is block-diagonal, one [head_dim, head_dim] block per head and gate.
The input part of every gate, W x_t + b, does not depend on the state, so it is computed for all
time steps at once by the caller (one matmul); what remains is the recurrence

    g_t = (W x_t + b) + R h_{t-1} + b_R          (per head: R [gates, head_dim, head_dim])

followed by a pointwise cell. The cells (σ the logistic sigmoid):

- LSTM ("Long Short-Term Memory"), gates (i, f, z, o):
  c_t = σ(f) c_{t-1} + σ(i) tanh(z),  h_t = σ(o) tanh(c_t).
- GRU ("Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine
  Translation", in PyTorch's and FlashRNN's form), gates (r, z, n), the recurrent bias b_R of n
  inside the reset gate: r = σ(x_r + R_r h + b_r), z = σ(x_z + R_z h + b_z),
  n = tanh(x_n + r ⊙ (R_n h + b_n)), h_t = (1 − z) n + z h_{t-1}.
- sLSTM ("xLSTM: Extended Long Short-Term Memory"), gates (i, f, z, o) with exponential input
  gating, a normaliser state n and a stabiliser state m (eqs. 8-17 of the paper; the forget gate
  is sigmoid, as in the paper's code):
  c_t = f_t c_{t-1} + i_t z_t,  n_t = f_t n_{t-1} + i_t,  h_t = o_t c_t / n_t,
  with z_t = tanh(z̃), o_t = σ(õ), i_t = exp(ĩ), f_t = σ(f̃). Stabilised:
  m_t = max(log f_t + m_{t-1}, ĩ_t),  i'_t = exp(ĩ_t − m_t),
  f'_t = exp(log f_t + m_{t-1} − m_t)
  replace i_t, f_t; this scales c and n alike by exp(−m_t), so h is unchanged. At a fresh state
  (n = 0) m_t = ĩ_t.

The cells are nonlinear in h, so the recurrence has no associative (parallel) scan: every form
is sequential in time. ``impl="reference"`` is a plain scan over time that multiplies by the
materialised block-diagonal matrix and, for the sLSTM, runs the unstabilised recursion (exact in
float64 while exp(ĩ) stays finite; for tests). ``impl="xla"`` is a ``lax.scan`` whose body is
one batched [heads] matmul with the recurrent weights held in the loop (FlashRNN's point:
weights stay resident; no Pallas kernel yet) and the stabilised cell.

States are dicts of [batch, heads, head_dim] arrays: ``h`` (all), ``c`` (LSTM, sLSTM), ``n``
and ``m`` (sLSTM). Zeros are the fresh state; a packed document starts from it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.ops.checks import Impl, accepts_numpy, check_rank, check_shape, resolve_impl
from jaxlm.ops.segments import segment_starts

# cell -> (gate names, state names)
CELLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "lstm": (("i", "f", "z", "o"), ("h", "c")),
    "gru": (("r", "z", "n"), ("h",)),
    "slstm": (("i", "f", "z", "o"), ("h", "c", "n", "m")),
}


def _check_cell(op: str, cell: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if cell not in CELLS:
        raise ValueError(f"{op}: cell={cell!r} is unknown; expected one of {sorted(CELLS)}")
    return CELLS[cell]


def rnn_initial_state(cell: str, batch: int, heads: int, head_dim: int,
                      dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """The fresh (all-zero) state of ``cell``: {name: [batch, heads, head_dim]}."""
    _, names = _check_cell("rnn_initial_state", cell)
    return {name: jnp.zeros((batch, heads, head_dim), dtype) for name in names}


def _cell(cell: str, pre: jax.Array, rec: jax.Array, state: dict[str, jax.Array]):
    """The stabilised pointwise cell. pre: input part [batch, heads, gates, head_dim]; rec:
    recurrent part R h + b_R, same shape. Returns the new state."""
    if cell == "gru":
        r = jax.nn.sigmoid(pre[..., 0, :] + rec[..., 0, :])
        z = jax.nn.sigmoid(pre[..., 1, :] + rec[..., 1, :])
        n = jnp.tanh(pre[..., 2, :] + r * rec[..., 2, :])
        return {"h": (1 - z) * n + z * state["h"]}
    g = pre + rec
    i, f, z, o = (g[..., k, :] for k in range(4))
    if cell == "lstm":
        c = jax.nn.sigmoid(f) * state["c"] + jax.nn.sigmoid(i) * jnp.tanh(z)
        return {"h": jax.nn.sigmoid(o) * jnp.tanh(c), "c": c}
    log_f_plus_m = jax.nn.log_sigmoid(f) + state["m"]
    m = jnp.where(state["n"] == 0, i, jnp.maximum(log_f_plus_m, i))
    i_gate, f_gate = jnp.exp(i - m), jnp.exp(log_f_plus_m - m)
    c = f_gate * state["c"] + i_gate * jnp.tanh(z)
    n = f_gate * state["n"] + i_gate
    return {"h": jax.nn.sigmoid(o) * c / n, "c": c, "n": n, "m": m}


@accepts_numpy
def rnn_step(cell: str, state: dict[str, jax.Array], gate_inputs_t: jax.Array,
             recurrent_weights: jax.Array, recurrent_bias: jax.Array | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One token of :func:`rnn`: gate_inputs_t [batch, heads, gates, head_dim] (W x_t + b) ->
    (h_t [batch, heads, head_dim], new state)."""
    rec = jnp.einsum("bhd,hgde->bhge", state["h"], recurrent_weights.astype(state["h"].dtype))
    if recurrent_bias is not None:
        rec = rec + recurrent_bias.astype(rec.dtype)
    state = _cell(cell, gate_inputs_t.astype(rec.dtype), rec, state)
    return state["h"], state


def _check(op, cell, gate_inputs, recurrent_weights, recurrent_bias, initial_state,
           segment_ids):
    gates, names = _check_cell(op, cell)
    layout = "[batch, length, heads, gates, head_dim]"
    check_rank(op, "gate_inputs", gate_inputs, layout)
    batch, length, heads, n_gates, head_dim = gate_inputs.shape
    if n_gates != len(gates):
        raise ValueError(f"{op}: cell={cell!r} has {len(gates)} gates {gates}, but gate_inputs "
                         f"has shape {tuple(gate_inputs.shape)} = {layout}")
    check_shape(op, "recurrent_weights", recurrent_weights, (heads, n_gates, head_dim, head_dim),
                "[heads, gates, head_dim, head_dim]")
    if recurrent_bias is not None:
        check_shape(op, "recurrent_bias", recurrent_bias, (heads, n_gates, head_dim),
                    "[heads, gates, head_dim]")
    if initial_state is not None:
        if not isinstance(initial_state, dict) or set(initial_state) != set(names):
            raise ValueError(f"{op}: initial_state must be a dict with keys {names} for "
                             f"cell={cell!r}, got {initial_state!r:.200}")
        for name in names:
            check_shape(op, f"initial_state[{name!r}]", initial_state[name],
                        (batch, heads, head_dim), "[batch, heads, head_dim]")
    if segment_ids is not None:
        check_shape(op, "segment_ids", segment_ids, (batch, length), "[batch, length]")


@accepts_numpy
def rnn(cell: str, gate_inputs: jax.Array, recurrent_weights: jax.Array,
        recurrent_bias: jax.Array | None = None, *,
        initial_state: dict[str, jax.Array] | None = None, return_final_state: bool = False,
        segment_ids: jax.Array | None = None, impl: str | Impl = "auto"):
    """Runs ``heads`` RNNs of one cell type (module docstring) over a sequence.

    Args:
      cell: "lstm", "gru" or "slstm".
      gate_inputs: [batch, length, heads, gates, head_dim], the input part W x_t + b of every
        gate, in the cell's gate order (LSTM and sLSTM: i, f, z, o; GRU: r, z, n).
      recurrent_weights: [heads, gates, head_dim, head_dim]; the block of head h and gate g maps
        h_{t-1} (row vector) to the gate: (h_{t-1} R[h, g])_e.
      recurrent_bias: [heads, gates, head_dim] or None, added to R h (GRU: inside the reset gate
        for n).
      initial_state: {name: [batch, heads, head_dim]} (see :func:`rnn_initial_state`); zeros
        when None.
      segment_ids: [batch, length]; the state resets to zeros where a packed document starts.
      impl: "reference" (plain scan, dense block-diagonal matrix, unstabilised sLSTM),
        "xla" (``lax.scan``, per-head matmuls, stabilised), "auto" (= "xla").

    Returns:
      h [batch, length, heads, head_dim] in the promoted dtype of the inputs (at least float32),
      and the final state when asked.

    Raises:
      ValueError: an unknown cell or impl, or shapes that do not agree (the message names the
        argument).
    """
    op = "rnn"
    _check(op, cell, gate_inputs, recurrent_weights, recurrent_bias, initial_state, segment_ids)
    chosen = resolve_impl(op, impl, ("reference", "xla"))
    batch, length, heads, _, head_dim = gate_inputs.shape
    dtype = jnp.promote_types(jnp.result_type(gate_inputs, recurrent_weights), jnp.float32)
    state = (rnn_initial_state(cell, batch, heads, head_dim, dtype) if initial_state is None
             else {k: v.astype(dtype) for k, v in initial_state.items()})
    keep = ~segment_starts(segment_ids, batch, length)  # [batch, length]
    run = _reference if chosen is Impl.REFERENCE else _scan
    h, state = run(cell, gate_inputs.astype(dtype), recurrent_weights.astype(dtype),
                   None if recurrent_bias is None else recurrent_bias.astype(dtype), state, keep)
    return (h, state) if return_final_state else h


def _scan(cell, gate_inputs, weights, bias, state, keep):
    def body(state, inputs):
        pre_t, keep_t = inputs
        state = jax.tree.map(lambda s: jnp.where(keep_t[:, None, None], s, 0), state)
        h, state = rnn_step(cell, state, pre_t, weights, bias)
        return state, h

    state, hs = jax.lax.scan(body, state, (jnp.swapaxes(gate_inputs, 0, 1), keep.T))
    return jnp.swapaxes(hs, 0, 1), state


def block_diagonal(weights: jax.Array) -> jax.Array:
    """[heads, gates, head_dim, head_dim] -> [gates, heads·head_dim, heads·head_dim], the
    block-diagonal recurrent matrix of each gate."""
    heads, gates, d, _ = weights.shape
    mask = jnp.asarray(np.kron(np.eye(heads), np.ones((d, d))), weights.dtype)
    tiled = jnp.tile(jnp.moveaxis(weights, 0, 1), (1, 1, heads)).reshape(gates, heads * d,
                                                                          heads * d)
    return tiled * mask  # block (a, b) of the tiled matrix is head a's; masked to a == b


def _reference(cell, gate_inputs, weights, bias, state, keep):
    """A plain scan over time of the flat [batch, heads·head_dim] state with the dense
    block-diagonal matrices and the cells written out; the sLSTM unstabilised (c̃ = e^m c,
    ñ = e^m n), its m kept only to return the stabilised final state."""
    batch, length, heads, gates, d = gate_inputs.shape
    dense = block_diagonal(weights)  # [gates, H·d, H·d]
    flat_bias = (jnp.zeros((gates, heads * d), dense.dtype) if bias is None
                 else jnp.swapaxes(bias, 0, 1).reshape(gates, heads * d))
    flat = {k: v.reshape(batch, heads * d) for k, v in state.items()}
    if cell == "slstm":  # to the unstabilised state
        flat["c"], flat["n"] = flat["c"] * jnp.exp(flat["m"]), flat["n"] * jnp.exp(flat["m"])
    sig = lambda a: 1 / (1 + jnp.exp(-a))

    def body(flat, inputs):
        x, keep_t = inputs  # x [batch, gates, H·d]
        flat = {k: jnp.where(keep_t[:, None], v, 0) for k, v in flat.items()}
        rec = [flat["h"] @ dense[g] + flat_bias[g] for g in range(gates)]
        if cell == "gru":
            r, z = sig(x[:, 0] + rec[0]), sig(x[:, 1] + rec[1])
            n = jnp.tanh(x[:, 2] + r * rec[2])
            flat = {"h": (1 - z) * n + z * flat["h"]}
        elif cell == "lstm":
            i, f, z, o = (x[:, g] + rec[g] for g in range(4))
            c = sig(f) * flat["c"] + sig(i) * jnp.tanh(z)
            flat = {"h": sig(o) * jnp.tanh(c), "c": c}
        else:
            i, f, z, o = (x[:, g] + rec[g] for g in range(4))
            c = sig(f) * flat["c"] + jnp.exp(i) * jnp.tanh(z)
            n = sig(f) * flat["n"] + jnp.exp(i)
            m = jnp.where(flat["n"] == 0, i, jnp.maximum(jnp.log(sig(f)) + flat["m"], i))
            flat = {"h": sig(o) * c / n, "c": c, "n": n, "m": m}
        return flat, flat["h"]

    xs = jnp.swapaxes(gate_inputs, 2, 3).reshape(batch, length, gates, heads * d)
    flat, hs = jax.lax.scan(body, flat, (jnp.swapaxes(xs, 0, 1), keep.T))
    if cell == "slstm":  # back to the stabilised state
        flat["c"], flat["n"] = flat["c"] * jnp.exp(-flat["m"]), flat["n"] * jnp.exp(-flat["m"])
    h = jnp.swapaxes(hs, 0, 1).reshape(batch, length, heads, d)
    return h, {k: v.reshape(batch, heads, d) for k, v in flat.items()}
