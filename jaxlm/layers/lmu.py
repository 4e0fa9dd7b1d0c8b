"""The LMU mixer: a fixed Legendre (LegT) memory of a few projected channels (LMUFormer)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.registry import register_mixer
from jaxlm.ops.checks import check_positive_fields
from jaxlm.ops.lmu import legt_zoh, lmu_memory, lmu_memory_step


@dataclasses.dataclass(frozen=True)
class LMUConfig:
    """Options of the ``lmu`` mixer: ``n_inputs`` channels u each remembered by ``order``
    Legendre coefficients of a window of ``theta`` tokens."""
    n_inputs: int = 4
    order: int = 32
    theta: float = 64.0
    impl: str = "auto"

    def __post_init__(self):
        check_positive_fields("lmu", self, ("n_inputs", "order"))
        if not self.theta > 0:
            raise ValueError(f"lmu.theta must be > 0 (the memory window in tokens), "
                             f"got {self.theta!r}")


class LMU(nnx.Module):
    """The parallelisable LMU of LMUFormer ("LMUFormer: Low Complexity Yet Powerful Spiking
    Model With Legendre Memory Units"; the memory from "Legendre Memory Units: Continuous-Time
    Representation in Recurrent Neural Networks"), as a sequence mixer:

        u_t = ReLU(W_u x_t + b_u)                          (n_inputs channels)
        m_t = Ā m_{t-1} + B̄ u_t                            (per channel, order coefficients)
        y_t = ReLU(W_h [vec(m_t); x_t] + b_h)

    with the LegT (Ā, B̄) fixed (zero-order hold of θ ṁ = A m + B u, window ``theta`` tokens;
    :mod:`jaxlm.ops.lmu`). The memory has no feedback from y, so it is linear time-invariant:
    its parallel form is an FFT convolution with the impulse response Ā^l B̄, its ``step`` the
    streaming recurrence. LMUFormer's convolutional patch embedding and channel mixer are not
    included (the LM's blocks supply the MLP). x: [batch, length, d_model] -> same.
    """

    def __init__(self, d_model: int, *, n_inputs: int = 4, order: int = 32,
                 theta: float = 64.0, impl: str = "auto", rngs: nnx.Rngs):
        LMUConfig(n_inputs, order, theta, impl)
        self.n_inputs, self.order, self.theta, self.impl = n_inputs, order, float(theta), impl
        self.d_model = d_model
        self.in_proj = nnx.Linear(d_model, n_inputs, rngs=rngs)
        self.out_proj = nnx.Linear(n_inputs * order + d_model, d_model, rngs=rngs)

    def _system(self, dtype):
        a_bar, b_bar = legt_zoh(self.order, self.theta)
        return jnp.asarray(a_bar, dtype), jnp.asarray(b_bar, dtype)

    def _output(self, x, memory):
        flat = memory.reshape(*memory.shape[:-2], -1).astype(x.dtype)
        return nnx.relu(self.out_proj(jnp.concatenate([flat, x], axis=-1)))

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        u = nnx.relu(self.in_proj(x))
        memory = lmu_memory(u, *self._system(u.dtype), segment_ids=segment_ids, impl=self.impl)
        return self._output(x, memory)

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> jax.Array:
        return jnp.zeros((batch_size, self.n_inputs, self.order),
                         jnp.promote_types(dtype, jnp.float32))

    def step(self, x_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        u_t = nnx.relu(self.in_proj(x_t))
        state = lmu_memory_step(state, u_t, *self._system(state.dtype))
        return self._output(x_t, state), state


register_mixer("lmu", LMUConfig, LMU)
