"""Mamba and Mamba-2 mixers."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.conv import ShortConv
from jaxlm.layers.registry import register_mixer
from jaxlm.ops import gated_linear_attention_step
from jaxlm.ops.selective import finite_rate, selective_scan_step
from jaxlm.parallel.dispatch import selective_scan, ssd


def _dt_bias(key, shape, dt_min: float, dt_max: float) -> jax.Array:
    """Mamba's Δ bias: softplus⁻¹ of time steps drawn log-uniformly from [dt_min, dt_max]."""
    dt = jnp.exp(jax.random.uniform(key, shape, minval=math.log(dt_min),
                                    maxval=math.log(dt_max)))
    return dt + jnp.log(-jnp.expm1(-dt))


def head_decay_init(key: jax.Array, n_heads: int, dt_min: float = 1e-3,
                    dt_max: float = 0.1) -> tuple[jax.Array, jax.Array]:
    """Mamba-2's per-head decay parameters (also Gated DeltaNet's): log A with A uniform in
    [1, 16], and the Δ bias; the decay is exp(−A · softplus(Δ + bias)). Each [n_heads]."""
    a_log = jnp.log(jax.random.uniform(key, (n_heads,), minval=1, maxval=16))
    return a_log, _dt_bias(jax.random.fold_in(key, 1), (n_heads,), dt_min, dt_max)


def head_log_decay(a_log: jax.Array, dt: jax.Array) -> jax.Array:
    """dt · A with A = −exp(a_log): the per-head log-decay of Mamba-2's step and Gated
    DeltaNet (a_log [n_heads]; dt [..., n_heads], positive). A = −inf (a_log above about 88
    in float32) stays a full reset with finite gradients in dt (:func:`finite_rate`)."""
    return dt * finite_rate(-jnp.exp(a_log), dt.dtype)


@dataclasses.dataclass(frozen=True)
class MambaConfig:
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(d_model / 16)
    dt_min: float = 1e-3
    dt_max: float = 0.1
    chunk_size: int = 64
    impl: str = "auto"

    def __post_init__(self):
        for name in ("d_state", "d_conv", "expand", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"mamba {name} must be >= 1, got {getattr(self, name)}")


class Mamba(nnx.Module):
    """The Mamba block's mixer ("Mamba: Linear-Time Sequence Modeling with Selective State
    Spaces"): in-projection to (x, z), causal depthwise conv and SiLU on x, x-projection to
    (Δ, B, C), selective scan with S4D-Real A = −(1..N) and D = 1, SiLU(z) gate,
    out-projection. x: [batch, length, d_model] -> same. The step state is the conv window and
    the SSM state [batch, d_inner, d_state]: O(1) per token."""

    def __init__(self, d_model: int, *, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 0.1,
                 chunk_size: int = 64, impl: str = "auto", rngs: nnx.Rngs):
        MambaConfig(d_state, d_conv, expand, dt_rank, dt_min, dt_max, chunk_size, impl)
        self.d_model = d_model
        self.d_inner = d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.d_state, self.chunk_size, self.impl = d_state, chunk_size, impl
        self.in_proj = nnx.Linear(d_model, 2 * d_inner, use_bias=False, rngs=rngs)
        self.conv = ShortConv(d_inner, d_conv, rngs=rngs)
        self.x_proj = nnx.Linear(d_inner, self.dt_rank + 2 * d_state, use_bias=False, rngs=rngs)
        self.dt_proj = nnx.Linear(self.dt_rank, d_inner, use_bias=False, rngs=rngs)
        self.dt_bias = nnx.Param(_dt_bias(rngs.params(), (d_inner,), dt_min, dt_max))
        a = jnp.broadcast_to(jnp.arange(1, d_state + 1, dtype=jnp.float32), (d_inner, d_state))
        # weight_decay=False: excluded from weight decay, as the reference implementation's
        # _no_weight_decay marks (jaxlm.train.optim reads it)
        self.a_log = nnx.Param(jnp.log(a), weight_decay=False)
        self.d_skip = nnx.Param(jnp.ones((d_inner,)), weight_decay=False)
        self.out_proj = nnx.Linear(d_inner, d_model, use_bias=False, rngs=rngs)

    def _ssm_inputs(self, x_conv):
        dbc = self.x_proj(x_conv)
        dt, b, c = jnp.split(dbc, [self.dt_rank, self.dt_rank + self.d_state], axis=-1)
        return self.dt_proj(dt), b, c, -jnp.exp(self.a_log[...])

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        x_in, z = jnp.split(self.in_proj(x), 2, axis=-1)
        x_conv = nnx.silu(self.conv(x_in, segment_ids=segment_ids))
        dt, b, c, a = self._ssm_inputs(x_conv)
        y = selective_scan(x_conv, dt, a, b, c, self.d_skip[...], z, self.dt_bias[...],
                           delta_softplus=True, segment_ids=segment_ids,
                           chunk_size=self.chunk_size, impl=self.impl)
        return self.out_proj(y)

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, jax.Array]:
        return {"conv": self.conv.init_state(batch_size, dtype),
                "ssm": jnp.zeros((batch_size, self.d_inner, self.d_state), dtype)}

    def step(self, x_t: jax.Array, state: dict[str, jax.Array]):
        x_in, z = jnp.split(self.in_proj(x_t), 2, axis=-1)
        x_conv, window = self.conv.step(x_in, state["conv"])
        x_conv = nnx.silu(x_conv)
        dt, b, c, a = self._ssm_inputs(x_conv)
        dt = jax.nn.softplus(dt + self.dt_bias[...])
        y, ssm = selective_scan_step(state["ssm"], x_conv, dt, a, b[:, None], c[:, None])
        y = (y + self.d_skip[...] * x_conv) * nnx.silu(z)
        return self.out_proj(y.astype(x_t.dtype)), {"conv": window, "ssm": ssm}


@dataclasses.dataclass(frozen=True)
class Mamba2Config:
    d_state: int = 16
    head_dim: int = 16
    expand: int = 2
    n_groups: int = 1
    d_conv: int = 4
    dt_min: float = 1e-3
    dt_max: float = 0.1
    chunk_size: int = 64
    impl: str = "auto"
    norm_eps: float = 1e-5  # epsilon of the gated RMSNorm (state-spaces/mamba's default)

    def __post_init__(self):
        for name in ("d_state", "head_dim", "expand", "n_groups", "d_conv", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"mamba2 {name} must be >= 1, got {getattr(self, name)}")
        if not self.norm_eps >= 0:
            raise ValueError(f"mamba2 norm_eps must be >= 0, got {self.norm_eps!r}")


class Mamba2(nnx.Module):
    """The Mamba-2 mixer ("Transformers are SSMs: Generalized Models and Efficient Algorithms
    Through Structured State Space Duality"): one in-projection to (z, x, B, C, Δ), a short conv
    and SiLU over (x, B, C), SSD heads with a scalar decay A per head and grouped B/C, D skip,
    gated RMSNorm norm(y · silu(z)), out-projection. x: [batch, length, d_model] -> same.

    The gated RMSNorm normalises each of the ``n_groups`` groups of ``d_inner / n_groups``
    channels on its own (state-spaces/mamba's ``RMSNormGated(group_size=d_inner // ngroups)``,
    as in Hugging Face's ``Mamba2``), with epsilon ``norm_eps``."""

    def __init__(self, d_model: int, *, d_state: int = 16, head_dim: int = 16, expand: int = 2,
                 n_groups: int = 1, d_conv: int = 4, dt_min: float = 1e-3, dt_max: float = 0.1,
                 chunk_size: int = 64, impl: str = "auto", norm_eps: float = 1e-5,
                 rngs: nnx.Rngs):
        Mamba2Config(d_state, head_dim, expand, n_groups, d_conv, dt_min, dt_max, chunk_size,
                     impl, norm_eps)
        self.d_inner = d_inner = expand * d_model
        if d_inner % head_dim:
            raise ValueError(f"Mamba2: head_dim={head_dim} must divide d_inner={d_inner} "
                             f"(expand * d_model)")
        self.n_heads = d_inner // head_dim
        if self.n_heads % n_groups:
            raise ValueError(f"Mamba2: n_groups={n_groups} must divide the {self.n_heads} heads")
        self.d_model = d_model
        self.head_dim, self.d_state, self.n_groups = head_dim, d_state, n_groups
        self.chunk_size, self.impl = chunk_size, impl
        conv_width = d_inner + 2 * n_groups * d_state
        self.in_proj = nnx.Linear(d_model, d_inner + conv_width + self.n_heads, use_bias=False,
                                  rngs=rngs)
        self.conv = ShortConv(conv_width, d_conv, rngs=rngs)
        a_log, dt_bias = head_decay_init(rngs.params(), self.n_heads, dt_min, dt_max)
        # no weight decay on A_log, dt_bias and D, as in the reference implementation
        self.a_log = nnx.Param(a_log, weight_decay=False)
        self.dt_bias = nnx.Param(dt_bias, weight_decay=False)
        self.d_skip = nnx.Param(jnp.ones((self.n_heads,)), weight_decay=False)
        self.norm = nnx.RMSNorm(d_inner, epsilon=norm_eps, rngs=rngs)
        self.out_proj = nnx.Linear(d_inner, d_model, use_bias=False, rngs=rngs)

    def _split(self, proj):
        z, xbc, dt = jnp.split(proj, [self.d_inner, 2 * self.d_inner
                                      + 2 * self.n_groups * self.d_state], axis=-1)
        return z, xbc, jax.nn.softplus(dt + self.dt_bias[...])

    def _heads(self, xbc):
        lead = xbc.shape[:-1]
        x, b, c = jnp.split(nnx.silu(xbc), [self.d_inner,
                                            self.d_inner + self.n_groups * self.d_state], -1)
        groups = (*lead, self.n_groups, self.d_state)
        return (x.reshape(*lead, self.n_heads, self.head_dim), b.reshape(groups),
                c.reshape(groups))

    def _output(self, y, z):
        """y (the SSD output) and z [..., d_inner] -> out_proj(groupwise_rms(y · silu(z)) · w)."""
        gated = y.reshape(*z.shape) * nnx.silu(z)
        scale = self.norm.scale[...]
        groups = gated.reshape(*z.shape[:-1], self.n_groups, -1)
        groups = groups.astype(jnp.promote_types(groups.dtype, jnp.float32))  # as RMSNorm
        mean_square = jnp.mean(jnp.square(groups), axis=-1, keepdims=True)
        normed = (groups * jax.lax.rsqrt(mean_square + self.norm.epsilon)).reshape(z.shape)
        return self.out_proj((normed * scale).astype(jnp.result_type(gated, scale)))

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        z, xbc, dt = self._split(self.in_proj(x))
        xs, b, c = self._heads(self.conv(xbc, segment_ids=segment_ids))
        y = ssd(xs, dt, -jnp.exp(self.a_log[...]), b, c, D=self.d_skip[...],
                chunk_size=self.chunk_size, segment_ids=segment_ids, impl=self.impl)
        return self._output(y.astype(x.dtype), z)

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, jax.Array]:
        """conv window and the SSD state [batch, heads, d_state, head_dim] (transposed from the
        op's [.., head_dim, d_state], as gated linear attention keeps it)."""
        return {"conv": self.conv.init_state(batch_size, dtype),
                "ssm": jnp.zeros((batch_size, self.n_heads, self.d_state, self.head_dim),
                                 dtype)}

    def step(self, x_t: jax.Array, state: dict[str, jax.Array]):
        z, xbc, dt = self._split(self.in_proj(x_t))
        xbc, window = self.conv.step(xbc, state["conv"])
        xs, b, c = self._heads(xbc)
        repeat = self.n_heads // self.n_groups
        b, c = (jnp.repeat(t, repeat, axis=1) for t in (b, c))
        log_decay = head_log_decay(self.a_log[...], dt)
        y, ssm = gated_linear_attention_step(state["ssm"], c, b, dt[..., None] * xs, log_decay,
                                             scale=1.0)
        y = y + self.d_skip[...][:, None] * xs
        return self._output(y.astype(x_t.dtype), z), {"conv": window, "ssm": ssm}


register_mixer("mamba", MambaConfig, Mamba, sequence_parallel=True)
register_mixer("mamba2", Mamba2Config, Mamba2, sequence_parallel=True)
