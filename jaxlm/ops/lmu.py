"""The Legendre Memory Unit's linear memory ("Legendre Memory Units: Continuous-Time
Representation in Recurrent Neural Networks"), in the parallel form LMUFormer uses
("LMUFormer: Low Complexity Yet Powerful Spiking Model With Legendre Memory Units").

Each input channel u drives its own memory of ``order`` Legendre coefficients of the window
[t − θ, t] of its past (LegT, :func:`jaxlm.ops.hippo.hippo_legt`). The continuous system
θ ṁ = A m + B u is discretised by zero-order hold with one step per token,

    Ā = exp(A/θ),   B̄ = A⁻¹ (Ā − I) B,   m_t = Ā m_{t-1} + B̄ u_t,

a linear time-invariant recurrence, so the memory is also the causal convolution
m_t = Σ_{s≤t} Ā^{t−s} B̄ u_s with the impulse response H_l = Ā^l B̄ (the LMU's parallel
training form), computed by FFT.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from jaxlm.ops.checks import Impl, accepts_numpy, check_rank, check_shape, resolve_impl
from jaxlm.ops.hippo import hippo_legt
from jaxlm.ops.s4 import krylov_columns
from jaxlm.ops.segments import segment_starts
from jaxlm.ops.ssm import fft_causal_conv


@functools.lru_cache(maxsize=None)
def legt_zoh(order: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """(Ā [order, order], B̄ [order]) float64: the zero-order hold of the LegT system with
    window ``theta`` steps, one step per token, from the exponential of the augmented matrix
    [[A/θ, B/θ], [0, 0]] (whose top-right block is A⁻¹(Ā − I)B)."""
    A, B = hippo_legt(order, theta)
    augmented = np.zeros((order + 1, order + 1))
    augmented[:order, :order], augmented[:order, order] = A, B
    expm = scipy.linalg.expm(augmented)
    return expm[:order, :order], expm[:order, order]


def _check(op, u, a_bar, b_bar, initial_state, segment_ids):
    check_rank(op, "u", u, "[batch, length, channels]")
    batch, length, channels = u.shape
    check_rank(op, "a_bar", a_bar, "[order, order]")
    order = a_bar.shape[0]
    check_shape(op, "a_bar", a_bar, (order, order), "[order, order]")
    check_shape(op, "b_bar", b_bar, (order,), "[order]")
    if initial_state is not None:
        check_shape(op, "initial_state", initial_state, (batch, channels, order),
                    "[batch, channels, order]")
    if segment_ids is not None:
        check_shape(op, "segment_ids", segment_ids, (batch, length), "[batch, length]")


@accepts_numpy
def lmu_memory(u: jax.Array, a_bar: jax.Array, b_bar: jax.Array, *,
               initial_state: jax.Array | None = None, return_final_state: bool = False,
               segment_ids: jax.Array | None = None, impl: str | Impl = "auto"):
    """The memory m_t = Ā m_{t-1} + B̄ u_t of every channel (one shared Ā, B̄).

    Args:
      u: [batch, length, channels] real.
      a_bar: [order, order]; b_bar: [order] (e.g. :func:`legt_zoh`).
      initial_state: [batch, channels, order]; zeros when None.
      segment_ids: [batch, length]; the memory resets where a packed document starts.
      impl: "reference" (sequential scan), "xla" (FFT convolution with the impulse response
        Ā^l B̄; the scan when a state goes in or out or rows are packed, since a convolution
        cannot reset), "auto" (= "xla").

    Returns:
      m [batch, length, channels, order] in u's dtype (computed in at least float32), and the
      final state [batch, channels, order] when asked.

    Raises:
      ValueError: shapes that do not agree or an unknown impl (the message names the argument).
    """
    op = "lmu_memory"
    _check(op, u, a_bar, b_bar, initial_state, segment_ids)
    chosen = resolve_impl(op, impl, ("reference", "xla"))
    batch, length, channels = u.shape
    order = a_bar.shape[0]
    real = jnp.promote_types(jnp.result_type(u, a_bar), jnp.float32)
    u, a_bar, b_bar = u.astype(real), a_bar.astype(real), b_bar.astype(real)
    stateful = initial_state is not None or return_final_state or segment_ids is not None
    if chosen is not Impl.REFERENCE and not stateful:
        response = krylov_columns(a_bar, b_bar, length).T  # [length, order]
        flat = fft_causal_conv(jnp.repeat(u, order, axis=-1), jnp.tile(response, (1, channels)))
        return flat.reshape(batch, length, channels, order)
    state = (jnp.zeros((batch, channels, order), real) if initial_state is None
             else initial_state.astype(real))
    keep = ~segment_starts(segment_ids, batch, length)

    def body(m, inputs):
        u_t, keep_t = inputs
        m = lmu_memory_step(jnp.where(keep_t[:, None, None], m, 0), u_t, a_bar, b_bar)
        return m, m

    state, ms = jax.lax.scan(body, state, (jnp.swapaxes(u, 0, 1), keep.T))
    memory = jnp.swapaxes(ms, 0, 1)
    return (memory, state) if return_final_state else memory


@accepts_numpy
def lmu_memory_step(state: jax.Array, u_t: jax.Array, a_bar: jax.Array, b_bar: jax.Array
                    ) -> jax.Array:
    """One token: state [batch, channels, order], u_t [batch, channels] -> the new state
    (which is also the memory read out at this token)."""
    return (jnp.einsum("nk,bck->bcn", a_bar.astype(state.dtype), state)
            + u_t[..., None].astype(state.dtype) * b_bar.astype(state.dtype))
