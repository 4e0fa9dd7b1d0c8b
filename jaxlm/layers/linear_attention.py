"""Linear-attention mixers: LinearAttention (feature maps) and GLA."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.registry import register_mixer
from jaxlm.ops import gated_linear_attention_step
from jaxlm.parallel.dispatch import gated_linear_attention, linear_attention

FEATURE_MAPS = ("elu", "relu", "identity", "taylor")


def feature_map(name: str, x: jax.Array) -> jax.Array:
    """x: [..., f] -> features. ``taylor`` is Based's 2nd-order Taylor map of exp(q·k)
    ("Simple linear attention language models balance the recall-throughput tradeoff"):
    [1, x, vec(x xᵀ)/√2] so that φ(q)·φ(k) = 1 + q·k + (q·k)²/2."""
    if name == "elu":
        return jax.nn.elu(x) + 1
    if name == "relu":
        return jax.nn.relu(x)
    if name == "identity":
        return x
    if name == "taylor":
        outer = (x[..., :, None] * x[..., None, :]).reshape(*x.shape[:-1], -1)
        return jnp.concatenate([jnp.ones_like(x[..., :1]), x, outer / jnp.sqrt(2.0)], -1)
    raise ValueError(f"feature_map={name!r} is unknown; expected one of {list(FEATURE_MAPS)}")


@dataclasses.dataclass(frozen=True)
class LinearAttentionConfig:
    n_heads: int = 4
    feature_map: str = "elu"
    feature_dim: int | None = None  # q/k width per head before the map; None: head_dim
    normalize: bool = True
    chunk_size: int = 64
    impl: str = "auto"

    def __post_init__(self):
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"linear_attention feature_map={self.feature_map!r} is unknown; "
                             f"expected one of {list(FEATURE_MAPS)}")
        if self.normalize and self.feature_map not in ("elu", "taylor"):
            raise ValueError(f"linear_attention normalize=True needs positive features "
                             f"(feature_map 'elu' or 'taylor'), got {self.feature_map!r}")


class LinearAttention(nnx.Module):
    """Causal linear attention ("Transformers are RNNs"), o_t = Σ_{s≤t} φ(q_t)·φ(k_s) v_s,
    optionally normalised by Σ_{s≤t} φ(q_t)·φ(k_s). x: [batch, length, d_model] -> same."""

    def __init__(self, d_model: int, *, n_heads: int = 4, feature_map: str = "elu",
                 feature_dim: int | None = None, normalize: bool = True, chunk_size: int = 64,
                 impl: str = "auto", rngs: nnx.Rngs):
        LinearAttentionConfig(n_heads, feature_map, feature_dim, normalize, chunk_size, impl)
        self.d_model = d_model
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.feature_dim = feature_dim or self.head_dim
        self.feature_map, self.normalize = feature_map, normalize
        self.chunk_size, self.impl = chunk_size, impl
        self.qk_proj = nnx.Linear(d_model, 2 * n_heads * self.feature_dim, use_bias=False,
                                  rngs=rngs)
        self.v_proj = nnx.Linear(d_model, n_heads * self.head_dim, use_bias=False, rngs=rngs)
        self.o_proj = nnx.Linear(n_heads * self.head_dim, d_model, use_bias=False, rngs=rngs)

    def _features(self, x):
        q, k = jnp.split(self.qk_proj(x), 2, axis=-1)
        shape = (*x.shape[:-1], self.n_heads, self.feature_dim)
        q, k = (feature_map(self.feature_map, t.reshape(shape)) for t in (q, k))
        v = self.v_proj(x).reshape(*x.shape[:-1], self.n_heads, self.head_dim)
        return q, k, v

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        q, k, v = self._features(x)
        out = linear_attention(q, k, v, normalize=self.normalize, chunk_size=self.chunk_size,
                               segment_ids=segment_ids, impl=self.impl)
        return self.o_proj(out.reshape(*x.shape[:-1], -1))

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> jax.Array:
        dk = feature_map(self.feature_map, jnp.zeros((1, self.feature_dim))).shape[-1]
        return jnp.zeros((batch_size, self.n_heads, dk, self.head_dim + self.normalize), dtype)

    def step(self, x_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        q, k, v = self._features(x_t)
        if self.normalize:
            v = jnp.concatenate([v, jnp.ones_like(v[..., :1])], axis=-1)
        out, state = gated_linear_attention_step(state, q, k, v)
        if self.normalize:
            out = out[..., :-1] / out[..., -1:]
        return self.o_proj(out.reshape(x_t.shape[0], -1).astype(x_t.dtype)), state


@dataclasses.dataclass(frozen=True)
class GLAConfig:
    n_heads: int = 4
    expand_k: float = 0.5  # key width = expand_k * d_model, as in the GLA paper
    gate_low_rank: int = 16
    gate_temperature: float = 16.0
    chunk_size: int = 64
    impl: str = "auto"


class GLA(nnx.Module):
    """Gated linear attention ("Gated Linear Attention Transformers with Hardware-Efficient
    Training"): per-channel forget gates from a low-rank projection,
    log g = logsigmoid(W₂ W₁ x + b) / τ, a per-head RMSNorm and a SiLU output gate.
    x: [batch, length, d_model] -> same."""

    def __init__(self, d_model: int, *, n_heads: int = 4, expand_k: float = 0.5,
                 gate_low_rank: int = 16, gate_temperature: float = 16.0, chunk_size: int = 64,
                 impl: str = "auto", rngs: nnx.Rngs):
        self.d_model = d_model
        self.n_heads = n_heads
        self.key_dim = max(int(d_model * expand_k) // n_heads, 1)
        self.head_dim = d_model // n_heads
        self.temperature, self.chunk_size, self.impl = gate_temperature, chunk_size, impl
        key_width, value_width = n_heads * self.key_dim, n_heads * self.head_dim
        self.q_proj = nnx.Linear(d_model, key_width, use_bias=False, rngs=rngs)
        self.k_proj = nnx.Linear(d_model, key_width, use_bias=False, rngs=rngs)
        self.v_proj = nnx.Linear(d_model, value_width, use_bias=False, rngs=rngs)
        self.gate_down = nnx.Linear(d_model, gate_low_rank, use_bias=False, rngs=rngs)
        self.gate_up = nnx.Linear(gate_low_rank, key_width, rngs=rngs)
        self.out_gate = nnx.Linear(d_model, value_width, use_bias=False, rngs=rngs)
        self.norm = nnx.RMSNorm(self.head_dim, rngs=rngs)
        self.o_proj = nnx.Linear(value_width, d_model, use_bias=False, rngs=rngs)

    def _inputs(self, x):
        heads = lambda t, d: t.reshape(*x.shape[:-1], self.n_heads, d)
        log_g = jax.nn.log_sigmoid(self.gate_up(self.gate_down(x))) / self.temperature
        return (heads(self.q_proj(x), self.key_dim), heads(self.k_proj(x), self.key_dim),
                heads(self.v_proj(x), self.head_dim), heads(log_g, self.key_dim))

    def _output(self, x, out):
        out = self.norm(out).reshape(*x.shape[:-1], -1) * nnx.silu(self.out_gate(x))
        return self.o_proj(out.astype(x.dtype))

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        q, k, v, log_g = self._inputs(x)
        out = gated_linear_attention(q, k, v, log_g, chunk_size=self.chunk_size,
                                     segment_ids=segment_ids, impl=self.impl)
        return self._output(x, out)

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> jax.Array:
        return jnp.zeros((batch_size, self.n_heads, self.key_dim, self.head_dim), dtype)

    def step(self, x_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        q, k, v, log_g = self._inputs(x_t)
        out, state = gated_linear_attention_step(state, q, k, v, log_g)
        return self._output(x_t, out), state


register_mixer("linear_attention", LinearAttentionConfig, LinearAttention, sequence_parallel=True)
register_mixer("gla", GLAConfig, GLA, sequence_parallel=True)
