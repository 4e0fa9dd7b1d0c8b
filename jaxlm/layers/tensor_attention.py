"""Tensor (higher-order) attention as a sequence mixer: each query attends over pairs of keys."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.registry import register_mixer
from jaxlm.ops.checks import check_positive_fields
from jaxlm.ops.tensor_attention import tensor_attention, tensor_attention_step


@dataclasses.dataclass(frozen=True)
class TensorAttentionConfig:
    """Options of the ``tensor_attention`` mixer (the keyword arguments of
    :class:`TensorAttention`)."""
    n_heads: int = 2
    query_chunk: int = 64  # queries per step of the xla form: memory O(query_chunk · L²) per head
    impl: str = "auto"

    def __post_init__(self):
        check_positive_fields("tensor_attention", self, ("n_heads", "query_chunk"))


class TensorAttention(nnx.Module):
    """Causal tensor attention ("How to Capture Higher-order Correlations? Generalizing Matrix
    Softmax Attention to Kronecker Computation"): five projections of x per head, Q, K1, K2,
    V1, V2, then per head

        out = D^{-1} exp(Q (K1 ⊘ K2)^T / √d) (V1 ⊘ V2)

    over the pairs (j, k) with j, k <= i (:mod:`jaxlm.ops.tensor_attention`), and an output
    projection. Cubic in length (O(L³ d) time per head): a mixer for short rows. It has no
    positional encoding of its own (the pair scores are symmetric in position); use
    ``model.learned_positions`` where order matters.

    ``__call__``: x [batch, length, d_model] -> same; packed rows via ``segment_ids``.
    ``step``: one token against a cache of every past K1, K2, V1, V2 (``max_length`` slots;
    past that it keeps the latest ``max_length`` tokens), O(slots² d) per step.
    Raises ValueError when n_heads does not divide d_model.
    """

    def __init__(self, d_model: int, *, n_heads: int = 2, query_chunk: int = 64,
                 impl: str = "auto", rngs: nnx.Rngs):
        TensorAttentionConfig(n_heads, query_chunk, impl)
        if d_model % n_heads:
            raise ValueError(f"tensor_attention: n_heads={n_heads} must divide "
                             f"d_model={d_model}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.query_chunk, self.impl = query_chunk, impl
        self.in_proj = nnx.Linear(d_model, 5 * d_model, use_bias=False, rngs=rngs)
        self.out_proj = nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)

    def _project(self, x):
        """x [..., d_model] -> q, k1, k2, v1, v2, each [..., heads, head_dim]."""
        parts = self.in_proj(x).reshape(*x.shape[:-1], 5, self.n_heads, self.head_dim)
        return [parts[..., i, :, :] for i in range(5)]

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        out = tensor_attention(*self._project(x), segment_ids=segment_ids,
                               query_chunk=self.query_chunk, impl=self.impl)
        return self.out_proj(out.reshape(x.shape))

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, jax.Array]:
        """The cache: k1, k2, v1, v2 [batch, max_length, heads, head_dim], slot_pos
        [max_length] (-1: empty) and pos (the next token's position)."""
        if max_length is None:
            raise ValueError("TensorAttention.init_state: max_length (the cache length) is "
                             "required; got None")
        shape = (batch_size, max_length, self.n_heads, self.head_dim)
        state = {name: jnp.zeros(shape, dtype) for name in ("k1", "k2", "v1", "v2")}
        state.update(slot_pos=jnp.full((max_length,), -1, jnp.int32),
                     pos=jnp.zeros((), jnp.int32))
        return state

    def step(self, x_t: jax.Array, state: dict[str, jax.Array]):
        """x_t: [batch, d_model] -> (y_t [batch, d_model], new state)."""
        q, k1, k2, v1, v2 = self._project(x_t)
        pos = state["pos"]
        slot = pos % state["slot_pos"].shape[0]
        new = {name: state[name].at[:, slot].set(value.astype(state[name].dtype))
               for name, value in (("k1", k1), ("k2", k2), ("v1", v1), ("v2", v2))}
        new.update(slot_pos=state["slot_pos"].at[slot].set(pos), pos=pos + 1)
        valid = jnp.broadcast_to(new["slot_pos"] >= 0, (x_t.shape[0], new["slot_pos"].shape[0]))
        out = tensor_attention_step(q, new["k1"], new["k2"], new["v1"], new["v2"], valid)
        return self.out_proj(out.reshape(x_t.shape).astype(x_t.dtype)), new


register_mixer("tensor_attention", TensorAttentionConfig, TensorAttention)
