"""Delta-rule mixers: DeltaNet and Gated DeltaNet."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.conv import ShortConv
from jaxlm.layers.mamba import head_decay_init, head_log_decay
from jaxlm.layers.registry import register_mixer
from jaxlm.ops import gated_delta_rule_step
from jaxlm.parallel.dispatch import gated_delta_rule


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / ||x|| over the last axis (the q/k normalisation that keeps the delta rule stable)."""
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


@dataclasses.dataclass(frozen=True)
class DeltaNetConfig:
    n_heads: int = 4
    conv_width: int = 4
    chunk_size: int = 64
    impl: str = "auto"

    def __post_init__(self):
        if self.n_heads < 1 or self.conv_width < 1 or self.chunk_size < 1:
            raise ValueError(f"deltanet n_heads, conv_width and chunk_size must be >= 1, "
                             f"got {self}")


@dataclasses.dataclass(frozen=True)
class GatedDeltaNetConfig(DeltaNetConfig):
    pass


class DeltaNet(nnx.Module):
    """DeltaNet ("Parallelizing Linear Transformers with the Delta Rule over Sequence Length"):
    q, k, v projections through a short causal conv and SiLU, L2-normalised q and k,
    β = sigmoid(W_β x) per head, the delta rule, a per-head RMSNorm, an output projection.
    With ``gated=True`` it is Gated DeltaNet ("Gated Delta Networks: Improving Mamba2 with Delta
    Rule"): a per-head decay α = exp(−exp(A_log) · softplus(W_α x + dt_bias)) and a SiLU output
    gate. x: [batch, length, d_model] -> same.
    """

    def __init__(self, d_model: int, *, n_heads: int = 4, conv_width: int = 4,
                 chunk_size: int = 64, impl: str = "auto", gated: bool = False,
                 rngs: nnx.Rngs):
        DeltaNetConfig(n_heads, conv_width, chunk_size, impl)
        self.d_model = d_model
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.chunk_size, self.impl, self.gated = chunk_size, impl, gated
        width = n_heads * self.head_dim
        self.qkv_proj = nnx.Linear(d_model, 3 * width, use_bias=False, rngs=rngs)
        self.conv = ShortConv(3 * width, conv_width, rngs=rngs)
        self.beta_proj = nnx.Linear(d_model, n_heads, rngs=rngs)
        self.norm = nnx.RMSNorm(self.head_dim, rngs=rngs)
        self.o_proj = nnx.Linear(width, d_model, use_bias=False, rngs=rngs)
        if gated:
            key = rngs.params()
            self.alpha_proj = nnx.Linear(d_model, n_heads, use_bias=False, rngs=rngs)
            a_log, dt_bias = head_decay_init(key, n_heads)  # Mamba-2's decay parameters
            self.a_log, self.dt_bias = nnx.Param(a_log), nnx.Param(dt_bias)
            self.out_gate = nnx.Linear(d_model, width, use_bias=False, rngs=rngs)
        else:
            self.alpha_proj = self.a_log = self.dt_bias = self.out_gate = None

    def _heads(self, t):
        return t.reshape(*t.shape[:-1], self.n_heads, self.head_dim)

    def _mix_inputs(self, x, qkv):
        """Per-head q, k, v, β and log α from the conv output ``qkv`` and the input ``x``."""
        q, k, v = (self._heads(t) for t in jnp.split(nnx.silu(qkv), 3, axis=-1))
        beta = jax.nn.sigmoid(self.beta_proj(x))
        log_alpha = None
        if self.gated:
            rate = jax.nn.softplus(self.alpha_proj(x) + self.dt_bias[...])
            log_alpha = head_log_decay(self.a_log[...], rate)
        return l2_normalize(q), l2_normalize(k), v, beta, log_alpha

    def _output(self, x, out):
        out = self.norm(out).reshape(*x.shape[:-1], -1)
        if self.gated:
            out = out * nnx.silu(self.out_gate(x))
        return self.o_proj(out.astype(x.dtype))

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        qkv = self.conv(self.qkv_proj(x), segment_ids=segment_ids)
        q, k, v, beta, log_alpha = self._mix_inputs(x, qkv)
        out = gated_delta_rule(q, k, v, beta, log_alpha, chunk_size=self.chunk_size,
                               segment_ids=segment_ids, impl=self.impl)
        return self._output(x, out)

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, jax.Array]:
        return {"conv": self.conv.init_state(batch_size, dtype),
                "memory": jnp.zeros((batch_size, self.n_heads, self.head_dim, self.head_dim),
                                    dtype)}

    def step(self, x_t: jax.Array, state: dict[str, jax.Array]):
        qkv, window = self.conv.step(self.qkv_proj(x_t), state["conv"])
        q, k, v, beta, log_alpha = self._mix_inputs(x_t, qkv)
        out, memory = gated_delta_rule_step(state["memory"], q, k, v, beta, log_alpha)
        return self._output(x_t, out), {"conv": window, "memory": memory}


register_mixer("deltanet", DeltaNetConfig, DeltaNet, sequence_parallel=True)
register_mixer("gated_deltanet", GatedDeltaNetConfig, DeltaNet, sequence_parallel=True,
               gated=True)
