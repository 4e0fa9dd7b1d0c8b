"""S4 and LSSL mixers: HiPPO-LegS state spaces in the S4 / S4D block (:class:`SSMBlock`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.layers.registry import register_mixer
from jaxlm.layers.ssm import SSMBlock, log_uniform_dt
from jaxlm.ops.hippo import hippo_legs, nplr_legs
from jaxlm.ops.s4 import bilinear_lower, dense_ssm, dense_ssm_step, s4_discrete, s4_ssm


def _complex_param(x: np.ndarray, channels: int) -> nnx.Param:
    """[N/2] complex -> a real [2, channels, N/2] parameter (real and imaginary parts)."""
    parts = np.stack([x.real, x.imag]).astype(np.float32)[:, None]
    return nnx.Param(jnp.asarray(np.broadcast_to(parts, (2, channels, x.shape[-1]))),
                     weight_decay=False)


class NPLRSSM(nnx.Module):
    """Parameters of ``channels`` S4 SSMs, each initialised at HiPPO-LegS in NPLR form
    (Λ with Re Λ = −exp(log_re) < 0, P, B) with complex C ~ N(0, 1/2) per part and log Δ
    uniform in [log dt_min, log dt_max]. u: [batch, length, channels] -> same."""

    def __init__(self, channels: int, d_state: int, *, dt_min: float = 1e-3,
                 dt_max: float = 0.1, impl: str = "auto", rngs: nnx.Rngs):
        Lambda, P, B, _ = nplr_legs(d_state)
        half = d_state // 2
        # Λ, P, B and Δ get no weight decay (S4's reference registers them with
        # weight_decay 0; C is decayed)
        self.lambda_log_re = nnx.Param(jnp.full((channels, half), np.log(-Lambda.real[0]),
                                                jnp.float32), weight_decay=False)
        self.lambda_im = nnx.Param(jnp.asarray(np.broadcast_to(
            Lambda.imag.astype(np.float32), (channels, half))), weight_decay=False)
        self.p, self.b = _complex_param(P, channels), _complex_param(B, channels)
        key = rngs.params()
        self.c = nnx.Param(jax.random.normal(key, (2, channels, half)) * 0.5 ** 0.5)
        self.log_dt = nnx.Param(log_uniform_dt(jax.random.fold_in(key, 1), channels, dt_min,
                                               dt_max), weight_decay=False)
        self.channels, self.d_state, self.impl = channels, d_state, impl

    def params(self):
        """(Δ [channels], Λ, P, B, C [channels, N/2] complex)."""
        Lambda = -jnp.exp(self.lambda_log_re[...]) + 1j * self.lambda_im[...]
        p, b, c = (x[0] + 1j * x[1] for x in (self.p[...], self.b[...], self.c[...]))
        return jnp.exp(self.log_dt[...]), Lambda, p, b, c

    def __call__(self, u: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        return s4_ssm(u, *self.params(), segment_ids=segment_ids, impl=self.impl)

    def init_state(self, batch_size: int, dtype: Any = jnp.float32) -> jax.Array:
        cplx = jnp.promote_types(dtype, jnp.complex64)
        return jnp.zeros((batch_size, self.channels, self.d_state), cplx)

    def step(self, u_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        return dense_ssm_step(state, u_t, *s4_discrete(*self.params()))


class LSSLSSM(nnx.Module):
    """``channels`` LSSL SSMs: the fixed HiPPO-LegS (A, B), a learned step Δ and output C per
    channel, discretized densely (bilinear). u: [batch, length, channels] -> same."""

    def __init__(self, channels: int, d_state: int, *, dt_min: float = 1e-3,
                 dt_max: float = 0.1, impl: str = "auto", rngs: nnx.Rngs):
        key = rngs.params()
        self.c = nnx.Param(jax.random.normal(key, (channels, d_state)) * d_state ** -0.5)
        self.log_dt = nnx.Param(log_uniform_dt(jax.random.fold_in(key, 1), channels, dt_min,
                                               dt_max))
        self.channels, self.d_state, self.impl = channels, d_state, impl

    def discrete(self):
        """(Ā [channels, N, N], B̄ [channels, N], C [channels, N])."""
        c = self.c[...]
        A, B = (jnp.asarray(x, c.dtype) for x in hippo_legs(self.d_state))
        return (*bilinear_lower(jnp.exp(self.log_dt[...]), A, B), c)

    def __call__(self, u: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        return dense_ssm(u, *self.discrete(), segment_ids=segment_ids, impl=self.impl)

    def init_state(self, batch_size: int, dtype: Any = jnp.float32) -> jax.Array:
        return jnp.zeros((batch_size, self.channels, self.d_state),
                         jnp.promote_types(dtype, self.c[...].dtype))

    def step(self, u_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        return dense_ssm_step(state, u_t, *self.discrete())


@dataclasses.dataclass(frozen=True)
class LSSLConfig:
    d_state: int = 64
    dt_min: float = 1e-3
    dt_max: float = 0.1
    impl: str = "auto"

    def __post_init__(self):
        if self.d_state < 1:
            raise ValueError(f"{self.name} d_state must be >= 1, got {self.d_state}")

    name = "lssl"


@dataclasses.dataclass(frozen=True)
class S4Config(LSSLConfig):
    """S4's options are LSSL's; its state size must be even (conjugate pairs)."""
    name = "s4"

    def __post_init__(self):
        super().__post_init__()
        if self.d_state % 2:
            raise ValueError(f"s4 d_state must be an even integer >= 2, got {self.d_state}")


class S4(SSMBlock):
    """The S4 layer ("Efficiently Modeling Long Sequences with Structured State Spaces"):
    :class:`SSMBlock` around an :class:`NPLRSSM` per channel; its parallel form is the FFT
    convolution with the Cauchy kernel, its step the dense recurrence."""

    def __init__(self, d_model: int, *, d_state: int = 64, dt_min: float = 1e-3,
                 dt_max: float = 0.1, impl: str = "auto", rngs: nnx.Rngs):
        S4Config(d_state, dt_min, dt_max, impl)
        super().__init__(NPLRSSM(d_model, d_state, dt_min=dt_min, dt_max=dt_max, impl=impl,
                                 rngs=rngs), d_model, rngs=rngs)


class LSSL(SSMBlock):
    """The LSSL layer ("Combining Recurrent, Convolutional, and Continuous-time Models with
    Linear State-Space Layers"), with HiPPO-LegS fixed and Δ, C, D learned: :class:`SSMBlock`
    around an :class:`LSSLSSM` per channel; its parallel form convolves with the Krylov kernel
    of the materialized Ā."""

    def __init__(self, d_model: int, *, d_state: int = 64, dt_min: float = 1e-3,
                 dt_max: float = 0.1, impl: str = "auto", rngs: nnx.Rngs):
        LSSLConfig(d_state, dt_min, dt_max, impl)
        super().__init__(LSSLSSM(d_model, d_state, dt_min=dt_min, dt_max=dt_max, impl=impl,
                                 rngs=rngs), d_model, rngs=rngs)


register_mixer("s4", S4Config, S4)
register_mixer("lssl", LSSLConfig, LSSL)
