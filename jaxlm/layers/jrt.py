"""JRT-RNN prefix linear attention ("Just read twice: closing the recall gap for recurrent
language models")."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.linear_attention import feature_map
from jaxlm.layers.registry import register_mixer
from jaxlm.ops import gated_linear_attention, gated_linear_attention_step


@dataclasses.dataclass(frozen=True)
class JRTConfig:
    n_heads: int = 2
    feature_map: str = "taylor"
    feature_dim: int = 8
    prefix_length: int = 32
    chunk_size: int = 64
    impl: str = "auto"

    def __post_init__(self):
        if self.feature_map not in ("elu", "taylor"):
            raise ValueError(f"jrt feature_map must be 'elu' or 'taylor' (positive features for "
                             f"the normalisation), got {self.feature_map!r}")
        if self.prefix_length < 0:
            raise ValueError(f"jrt prefix_length must be >= 0, got {self.prefix_length}")


class JRT(nnx.Module):
    """Prefix linear attention: the first ``prefix_length`` positions (the prompt) read the
    whole prefix non-causally through encoder keys k^e, later positions read it plus the causal
    decoder part through decoder keys k^d:

        y_t = φ(q_t)ᵀ (Σ_{s<P} φ(k^e_s) v_sᵀ + Σ_{P≤s≤t} φ(k^d_s) v_sᵀ) / (same with v = 1),

    where the second sum is empty for t < P. x: [batch, length, d_model] -> same.
    Decoding starts after ``prefill`` of at least the prefix (``step`` alone is the causal
    decoder, i.e. the model with an empty prefix).
    """

    def __init__(self, d_model: int, *, n_heads: int = 2, feature_map: str = "taylor",
                 feature_dim: int = 8, prefix_length: int = 32, chunk_size: int = 64,
                 impl: str = "auto", rngs: nnx.Rngs):
        JRTConfig(n_heads, feature_map, feature_dim, prefix_length, chunk_size, impl)
        self.d_model = d_model
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.feature_map, self.feature_dim = feature_map, feature_dim
        self.prefix_length, self.chunk_size, self.impl = prefix_length, chunk_size, impl
        self.qk_proj = nnx.Linear(d_model, 3 * n_heads * feature_dim, use_bias=False, rngs=rngs)
        self.v_proj = nnx.Linear(d_model, n_heads * self.head_dim, use_bias=False, rngs=rngs)
        self.o_proj = nnx.Linear(n_heads * self.head_dim, d_model, use_bias=False, rngs=rngs)

    def _features(self, x):
        shape = (*x.shape[:-1], self.n_heads, self.feature_dim)
        q, k_enc, k_dec = (feature_map(self.feature_map, t.reshape(shape))
                           for t in jnp.split(self.qk_proj(x), 3, axis=-1))
        v = self.v_proj(x).reshape(*x.shape[:-1], self.n_heads, self.head_dim)
        v = jnp.concatenate([v, jnp.ones_like(v[..., :1])], axis=-1)  # last column: normaliser
        return q, k_enc, k_dec, v

    def _output(self, x, out):
        out = out[..., :-1] / out[..., -1:]
        return self.o_proj(out.reshape(*x.shape[:-1], -1).astype(x.dtype))

    def prefill(self, x: jax.Array, *, max_length: int | None = None):
        """Parallel form that also returns the state for ``step``: (y, state)."""
        del max_length
        length = x.shape[1]
        prefix = min(self.prefix_length, length)
        q, k_enc, k_dec, v = self._features(x)
        scale = q.shape[-1] ** -0.5
        state = jnp.einsum("bshk,bshv->bhkv", k_enc[:, :prefix], v[:, :prefix])
        out = jnp.einsum("bthk,bhkv->bthv", q[:, :prefix] * scale, state)
        if length > prefix:
            rest, state = gated_linear_attention(
                q[:, prefix:], k_dec[:, prefix:], v[:, prefix:], None, scale=scale,
                chunk_size=self.chunk_size, initial_state=state, return_final_state=True,
                impl=self.impl)
            out = jnp.concatenate([out, rest.astype(out.dtype)], axis=1)
        return self._output(x, out), state

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        if segment_ids is not None:
            raise ValueError("JRT: segment_ids (packed rows) are not supported: the "
                             "non-causal prefix is defined per row; pass one document per row")
        return self.prefill(x)[0]

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> jax.Array:
        dk = feature_map(self.feature_map, jnp.zeros((1, self.feature_dim))).shape[-1]
        return jnp.zeros((batch_size, self.n_heads, dk, self.head_dim + 1), dtype)

    def step(self, x_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        q, _, k_dec, v = self._features(x_t)
        out, state = gated_linear_attention_step(state, q, k_dec, v)
        return self._output(x_t, out), state


register_mixer("jrt", JRTConfig, JRT)

