"""Mixture-of-Memories ("MoM: Linear Sequence Modeling with Mixture-of-Memories")."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.deltanet import l2_normalize
from jaxlm.layers.registry import register_mixer
from jaxlm.ops import (gated_delta_rule, gated_delta_rule_step, gated_linear_attention,
                       gated_linear_attention_step)

MEMORY_KINDS = ("delta", "linear")


@dataclasses.dataclass(frozen=True)
class MoMConfig:
    n_heads: int = 2
    n_memories: int = 4
    top_k: int = 2
    memory: str = "delta"  # each memory's update rule: "delta" (DeltaNet) or "linear"
    shared_memory: bool = True
    chunk_size: int = 64
    impl: str = "auto"

    def __post_init__(self):
        if self.memory not in MEMORY_KINDS:
            raise ValueError(f"mom memory={self.memory!r} is unknown; expected one of "
                             f"{list(MEMORY_KINDS)}")
        if not 1 <= self.top_k <= self.n_memories:
            raise ValueError(f"mom top_k must be in [1, n_memories={self.n_memories}], "
                             f"got {self.top_k}")


class MoM(nnx.Module):
    """A router sends each token to the top-k of ``n_memories`` memories (plus an always-active
    shared memory); each memory is a recurrent state with its own key/value projections, written
    only by the tokens routed to it, and the output mixes the routed memories' reads by the
    router weights. Linear in length: memories are extra heads of one chunked op call, with
    the writes of unrouted tokens masked out (β = 0 for the delta rule, k = 0 for linear).
    x: [batch, length, d_model] -> same.
    """

    def __init__(self, d_model: int, *, n_heads: int = 2, n_memories: int = 4, top_k: int = 2,
                 memory: str = "delta", shared_memory: bool = True, chunk_size: int = 64,
                 impl: str = "auto", rngs: nnx.Rngs):
        MoMConfig(n_heads, n_memories, top_k, memory, shared_memory, chunk_size, impl)
        self.d_model = d_model
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.n_memories, self.top_k, self.memory = n_memories, top_k, memory
        self.n_slots = n_memories + int(shared_memory)  # routed memories, then the shared one
        self.chunk_size, self.impl = chunk_size, impl
        width = n_heads * self.head_dim
        self.q_proj = nnx.Linear(d_model, width, use_bias=False, rngs=rngs)
        self.kv_proj = nnx.Linear(d_model, 2 * self.n_slots * width, use_bias=False, rngs=rngs)
        self.beta_proj = nnx.Linear(d_model, self.n_slots * n_heads, rngs=rngs)
        self.router = nnx.Linear(d_model, n_memories, use_bias=False, rngs=rngs)
        self.norm = nnx.RMSNorm(self.head_dim, rngs=rngs)
        self.o_proj = nnx.Linear(width, d_model, use_bias=False, rngs=rngs)

    def routing(self, x: jax.Array) -> jax.Array:
        """Router weights [..., n_slots]: softmax over memories, kept on the top-k and
        renormalised, zero elsewhere; the shared memory (last slot) always has weight 1."""
        logits = self.router(x)
        probs = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1)
        kth = jax.lax.top_k(probs, self.top_k)[0][..., -1:]
        kept = jnp.where(probs >= kth, probs, 0.0)
        weights = kept / kept.sum(-1, keepdims=True)
        if self.n_slots > self.n_memories:
            weights = jnp.concatenate([weights, jnp.ones_like(weights[..., :1])], axis=-1)
        return weights.astype(x.dtype)

    def _inputs(self, x):
        """Per-slot q, k, v, β as heads ``n_slots * n_heads``, and the routing weights."""
        lead, h, d, m = x.shape[:-1], self.n_heads, self.head_dim, self.n_slots
        weights = self.routing(x)  # [..., m]
        routed = (weights > 0)[..., :, None]  # [..., m, 1]
        q = l2_normalize(nnx.silu(self.q_proj(x))).reshape(*lead, 1, h, d)
        q = jnp.broadcast_to(q, (*lead, m, h, d)).reshape(*lead, m * h, d)
        k, v = jnp.split(self.kv_proj(x).reshape(*lead, m, 2 * h, d), 2, axis=-2)
        k = l2_normalize(nnx.silu(k))
        beta = jax.nn.sigmoid(self.beta_proj(x)).reshape(*lead, m, h)
        beta = jnp.where(routed, beta, 0.0)
        if self.memory == "linear":
            k = jnp.where(routed[..., None], k, 0.0)
        return (q, k.reshape(*lead, m * h, d), v.reshape(*lead, m * h, d),
                beta.reshape(*lead, m * h), weights)

    def _output(self, x, out, weights):
        lead = x.shape[:-1]
        out = self.norm(out).reshape(*lead, self.n_slots, self.n_heads * self.head_dim)
        mixed = jnp.einsum("...m,...mc->...c", weights, out)
        return self.o_proj(mixed.astype(x.dtype))

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        q, k, v, beta, weights = self._inputs(x)
        kw = dict(chunk_size=self.chunk_size, segment_ids=segment_ids, impl=self.impl)
        if self.memory == "delta":
            out = gated_delta_rule(q, k, v, beta, None, **kw)
        else:
            out = gated_linear_attention(q, k, v, None, **kw)
        return self._output(x, out, weights)

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> jax.Array:
        heads = self.n_slots * self.n_heads
        return jnp.zeros((batch_size, heads, self.head_dim, self.head_dim), dtype)

    def step(self, x_t: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        q, k, v, beta, weights = self._inputs(x_t)
        if self.memory == "delta":
            out, state = gated_delta_rule_step(state, q, k, v, beta)
        else:
            out, state = gated_linear_attention_step(state, q, k, v)
        return self._output(x_t, out, weights), state


register_mixer("mom", MoMConfig, MoM)
