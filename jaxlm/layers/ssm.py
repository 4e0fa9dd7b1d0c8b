"""State-space mixers on diagonal SSMs: S4D and H3, and the block S4, S4D and LSSL share."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.conv import ShortConv
from jaxlm.layers.registry import register_mixer
from jaxlm.ops.ssm import DISCRETIZATIONS, diagonal_ssm, diagonal_ssm_step, s4d_init


class DiagonalSSM(nnx.Module):
    """Parameters of ``channels`` diagonal SSMs (S4D): A = −exp(log_re) + i·im, B = 1, complex
    C ~ N(0, 1/2) per part, log Δ uniform in [log dt_min, log dt_max]. u: [batch, length,
    channels] -> y of the same shape (without a skip term)."""

    def __init__(self, channels: int, d_state: int, *, init: str = "lin", dt_min: float = 1e-3,
                 dt_max: float = 0.1, discretization: str = "zoh", impl: str = "auto",
                 rngs: nnx.Rngs):
        log_re, im = s4d_init(init, channels, d_state)
        # A and Δ get no weight decay (S4D's reference registers them with weight_decay 0;
        # C is decayed)
        self.a_log_re = nnx.Param(log_re, weight_decay=False)
        self.a_im = nnx.Param(im, weight_decay=False)
        key = rngs.params()
        self.c = nnx.Param(jax.random.normal(key, (2, channels, d_state)) * 0.5 ** 0.5)
        self.log_dt = nnx.Param(log_uniform_dt(jax.random.fold_in(key, 1), channels, dt_min,
                                               dt_max), weight_decay=False)
        self.channels, self.d_state, self.impl = channels, d_state, impl
        self.discretization = discretization

    def params(self):
        a = -jnp.exp(self.a_log_re[...]) + 1j * self.a_im[...]
        c = self.c[0] + 1j * self.c[1]
        return jnp.exp(self.log_dt[...]), a, jnp.ones_like(a), c

    def __call__(self, u: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        return diagonal_ssm(u, *self.params(), segment_ids=segment_ids,
                            discretization=self.discretization, impl=self.impl)

    def init_state(self, batch_size: int, dtype: Any = jnp.float32) -> jax.Array:
        cplx = jnp.promote_types(dtype, jnp.complex64)
        return jnp.zeros((batch_size, self.channels, self.d_state), cplx)

    def step(self, u_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        y, state = diagonal_ssm_step(state, u_t, *self.params(),
                                     discretization=self.discretization)
        return y.astype(u_t.dtype), state


def log_uniform_dt(key: jax.Array, channels: int, dt_min: float, dt_max: float) -> jax.Array:
    """log Δ [channels], uniform in [log dt_min, log dt_max] (S4's initialisation)."""
    return jax.random.uniform(key, (channels,), minval=math.log(dt_min),
                              maxval=math.log(dt_max))


class SSMBlock(nnx.Module):
    """The S4 / S4D / LSSL layer around a per-channel SSM ``ssm`` (a module with
    ``__call__(u, segment_ids=)``, ``init_state(batch, dtype)`` and ``step(u_t, state)``):
    y = SSM(x) + D ⊙ x, GELU, then a GLU output projection. x: [batch, length, d_model] ->
    same."""

    def __init__(self, ssm: nnx.Module, d_model: int, *, rngs: nnx.Rngs):
        self.d_model = d_model
        self.ssm = ssm
        self.d_skip = nnx.Param(jax.random.normal(rngs.params(), (d_model,)))
        self.out_proj = nnx.Linear(d_model, 2 * d_model, rngs=rngs)

    def _output(self, x, y):
        y = nnx.gelu(y + self.d_skip[...] * x)
        return nnx.glu(self.out_proj(y), axis=-1)

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        return self._output(x, self.ssm(x, segment_ids=segment_ids))

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> jax.Array:
        return self.ssm.init_state(batch_size, dtype)

    def step(self, x_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        y, state = self.ssm.step(x_t, state)
        return self._output(x_t, y), state


@dataclasses.dataclass(frozen=True)
class S4DConfig:
    d_state: int = 32
    init: str = "lin"  # S4D-Lin, S4D-Inv or S4D-Real: "lin" | "inv" | "real"
    dt_min: float = 1e-3
    dt_max: float = 0.1
    discretization: str = "zoh"  # "zoh" | "bilinear"
    impl: str = "auto"

    def __post_init__(self):
        if self.init not in ("lin", "inv", "real"):
            raise ValueError(f"s4d init={self.init!r} is unknown; expected 'lin', 'inv' or "
                             f"'real'")
        if self.discretization not in DISCRETIZATIONS:
            raise ValueError(f"s4d discretization={self.discretization!r} is unknown; expected "
                             f"one of {sorted(DISCRETIZATIONS)}")


class S4D(SSMBlock):
    """The S4D layer ("On the Parameterization and Initialization of Diagonal State Space
    Models"): :class:`SSMBlock` around a :class:`DiagonalSSM` per channel."""

    def __init__(self, d_model: int, *, d_state: int = 32, init: str = "lin",
                 dt_min: float = 1e-3, dt_max: float = 0.1, discretization: str = "zoh",
                 impl: str = "auto", rngs: nnx.Rngs):
        S4DConfig(d_state, init, dt_min, dt_max, discretization, impl)
        super().__init__(DiagonalSSM(d_model, d_state, init=init, dt_min=dt_min, dt_max=dt_max,
                                     discretization=discretization, impl=impl, rngs=rngs),
                         d_model, rngs=rngs)


@dataclasses.dataclass(frozen=True)
class H3Config:
    head_dim: int = 1
    d_state: int = 32  # of the diagonal SSM
    shift_width: int = 4  # length of the shift SSM (a learned causal filter over k)
    dt_min: float = 1e-3
    dt_max: float = 0.1
    impl: str = "auto"

    def __post_init__(self):
        if self.head_dim < 1 or self.d_state < 1 or self.shift_width < 1:
            raise ValueError(f"h3 head_dim, d_state and shift_width must be >= 1, got {self}")


class H3(nnx.Module):
    """H3 ("Hungry Hungry Hippos: Towards Language Modeling with State Space Models"):
    q, k, v projections; a shift SSM on k (a learned causal filter of ``shift_width`` taps);
    per head the outer product k̃ vᵀ; a diagonal SSM over each of its entries; the output
    q · SSM(k̃ vᵀ) per head; an output projection. head_dim=1 is the elementwise form
    q ⊙ SSM(shift(k) ⊙ v). x: [batch, length, d_model] -> same."""

    def __init__(self, d_model: int, *, head_dim: int = 1, d_state: int = 32,
                 shift_width: int = 4, dt_min: float = 1e-3, dt_max: float = 0.1,
                 impl: str = "auto", rngs: nnx.Rngs):
        H3Config(head_dim, d_state, shift_width, dt_min, dt_max, impl)
        if d_model % head_dim:
            raise ValueError(f"H3: head_dim={head_dim} must divide d_model={d_model}")
        self.d_model = d_model
        self.n_heads, self.head_dim = d_model // head_dim, head_dim
        self.qkv_proj = nnx.Linear(d_model, 3 * d_model, use_bias=False, rngs=rngs)
        self.shift = ShortConv(d_model, shift_width, rngs=rngs)
        self.ssm = DiagonalSSM(self.n_heads * head_dim * head_dim, d_state, dt_min=dt_min,
                               dt_max=dt_max, impl=impl, rngs=rngs)
        self.out_proj = nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)

    def _kv(self, k_shift, v):
        lead, h, p = v.shape[:-1], self.n_heads, self.head_dim
        kv = k_shift.reshape(*lead, h, p, 1) * v.reshape(*lead, h, 1, p)
        return kv.reshape(*lead, h * p * p)

    def _output(self, q, kv_ssm):
        lead, h, p = q.shape[:-1], self.n_heads, self.head_dim
        y = jnp.einsum("...hi,...hij->...hj", q.reshape(*lead, h, p),
                       kv_ssm.reshape(*lead, h, p, p))
        return self.out_proj(y.reshape(*lead, h * p))

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        q, k, v = jnp.split(self.qkv_proj(x), 3, axis=-1)
        kv = self._kv(self.shift(k, segment_ids=segment_ids), v)
        return self._output(q, self.ssm(kv, segment_ids=segment_ids))

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, jax.Array]:
        return {"shift": self.shift.init_state(batch_size, dtype),
                "ssm": self.ssm.init_state(batch_size, dtype)}

    def step(self, x_t: jax.Array, state: dict[str, jax.Array]):
        q, k, v = jnp.split(self.qkv_proj(x_t), 3, axis=-1)
        k_shift, window = self.shift.step(k, state["shift"])
        kv_ssm, ssm = self.ssm.step(self._kv(k_shift, v), state["ssm"])
        return self._output(q, kv_ssm), {"shift": window, "ssm": ssm}


register_mixer("s4d", S4DConfig, S4D)
register_mixer("h3", H3Config, H3)
