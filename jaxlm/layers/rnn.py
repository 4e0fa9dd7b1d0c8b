"""Traditional RNN mixers with several heads: LSTM, GRU and sLSTM (FlashRNN, xLSTM)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.layers.registry import register_mixer
from jaxlm.ops.rnn import CELLS, rnn, rnn_initial_state, rnn_step


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
    """Options of the ``lstm`` mixer (and, by subclassing, ``gru`` and ``slstm``)."""
    n_heads: int = 4  # block-diagonal recurrent matrices: one block per head
    impl: str = "auto"

    def __post_init__(self):
        if not isinstance(self.n_heads, int) or self.n_heads < 1:
            raise ValueError(f"{self.name} n_heads must be a positive integer, "
                             f"got {self.n_heads!r}")

    name = "lstm"


@dataclasses.dataclass(frozen=True)
class GRUConfig(LSTMConfig):
    name = "gru"


@dataclasses.dataclass(frozen=True)
class SLSTMConfig(LSTMConfig):
    name = "slstm"


class RNN(nnx.Module):
    """A multi-head LSTM, GRU or sLSTM as a sequence mixer ("FlashRNN: Optimizing Traditional
    RNNs on Modern Hardware"; the sLSTM from "xLSTM: Extended Long Short-Term Memory").

    The input part of every gate, W x_t + b, is one projection of the whole sequence; the
    recurrence g_t = W x_t + b + R h_{t-1} (+ b_R for the GRU's n gate) with R block-diagonal,
    ``n_heads`` blocks of [head_dim, head_dim] per gate, then the cell (see
    :mod:`jaxlm.ops.rnn` for the equations) and an output projection of h. The sLSTM output goes
    through a per-head layer norm first (xLSTM's group norm). The cells are nonlinear in h, so
    the parallel form is a sequential ``lax.scan`` too: there is no parallel scan.

    Initialisation: R ~ N(0, 1/head_dim); LSTM forget-gate bias 1; sLSTM forget-gate bias
    linspace(3, 6) over each head's channels (long memory at the start, as in xLSTM).

    x: [batch, length, d_model] -> same. Raises ValueError when n_heads does not divide d_model.
    """

    def __init__(self, d_model: int, *, cell: str, n_heads: int = 4, impl: str = "auto",
                 rngs: nnx.Rngs):
        LSTMConfig(n_heads, impl)
        if cell not in CELLS:
            raise ValueError(f"RNN: cell={cell!r} is unknown; expected one of {sorted(CELLS)}")
        if d_model % n_heads:
            raise ValueError(f"{cell}: n_heads={n_heads} must divide d_model={d_model}")
        gates = CELLS[cell][0]
        self.cell, self.impl = cell, impl
        self.d_model = d_model
        self.n_heads, self.head_dim, self.n_gates = n_heads, d_model // n_heads, len(gates)
        self.in_proj = nnx.Linear(d_model, len(gates) * d_model, rngs=rngs)
        bias = np.zeros((n_heads, len(gates), self.head_dim), np.float32)
        if cell == "lstm":
            bias[:, gates.index("f")] = 1.0
        elif cell == "slstm":
            bias[:, gates.index("f")] = np.linspace(3.0, 6.0, self.head_dim)
        self.in_proj.bias = nnx.Param(jnp.asarray(bias.reshape(-1)))
        self.recurrent = nnx.Param(jax.random.normal(
            rngs.params(), (n_heads, len(gates), self.head_dim, self.head_dim))
            * self.head_dim ** -0.5)
        self.recurrent_bias = (nnx.Param(jnp.zeros((n_heads, len(gates), self.head_dim)))
                               if cell == "gru" else None)
        self.norm = nnx.LayerNorm(self.head_dim, rngs=rngs) if cell == "slstm" else None
        self.out_proj = nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)

    def _gates(self, x):
        return self.in_proj(x).reshape(*x.shape[:-1], self.n_heads, self.n_gates, self.head_dim)

    def _weights(self):
        bias = None if self.recurrent_bias is None else self.recurrent_bias[...]
        return self.recurrent[...], bias

    def _output(self, x, h):
        if self.norm is not None:
            h = self.norm(h)
        return self.out_proj(h.reshape(*x.shape[:-1], -1).astype(x.dtype))

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        h = rnn(self.cell, self._gates(x), *self._weights(), segment_ids=segment_ids,
                impl=self.impl)
        return self._output(x, h)

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, jax.Array]:
        return rnn_initial_state(self.cell, batch_size, self.n_heads, self.head_dim,
                                 jnp.promote_types(dtype, jnp.float32))

    def step(self, x_t: jax.Array, state: dict[str, jax.Array]):
        h, state = rnn_step(self.cell, state, self._gates(x_t), *self._weights())
        return self._output(x_t, h), state


register_mixer("lstm", LSTMConfig, RNN, cell="lstm")
register_mixer("gru", GRUConfig, RNN, cell="gru")
register_mixer("slstm", SLSTMConfig, RNN, cell="slstm")
