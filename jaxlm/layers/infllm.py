"""InfLLM as a decoding mode of attention ("InfLLM: Unveiling the Intrinsic Capacity of LLMs
for Understanding Extremely Long Sequences with Training-Free Memory"): :mod:`jaxlm.ops.infllm` behind the attention
layer's projections, so a model trained with ``attention`` reads long inputs through initial
tokens, a local window and retrieved memory units, with no new parameters."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.attention import Attention
from jaxlm.layers.registry import register_mixer
from jaxlm.ops.infllm import infllm_attention, infllm_cache, infllm_step


@dataclasses.dataclass(frozen=True)
class InfLLMConfig:
    """Options of :class:`InfLLMAttention` (the attention options it shares, then InfLLM's)."""
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    rope: bool = True
    rope_theta: float = 10_000.0
    window: int = 8  # local window in tokens
    block_size: int = 4  # tokens per memory unit
    init_blocks: int = 1  # initial tokens: the first init_blocks units
    top_k: int = 2  # memory units retrieved per query chunk and KV head
    n_repr: int = 2  # representative tokens per unit
    chunk_size: int = 1  # queries per retrieval in the parallel form (decoding: 1)

    def __post_init__(self):
        for name in ("window", "block_size", "n_repr", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"attention_infllm {name} must be a positive integer, got "
                                 f"{value!r}")
        for name in ("init_blocks", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"attention_infllm {name} must be a non-negative integer, "
                                 f"got {value!r}")


class InfLLMAttention(Attention):
    """Attention read through InfLLM's context memory (:func:`jaxlm.ops.infllm_attention`).

    Its parameters are :class:`Attention`'s (q/k/v/o projections), so the weights of a model
    trained with the ``attention`` mixer load into one built with ``attention_infllm``: the
    paper's training-free use. ``__call__`` retrieves per chunk of ``chunk_size`` queries (a
    prefill); ``step`` per token, with the representative scores kept beside the KV cache
    (equal to ``__call__`` when ``chunk_size=1``). Packed rows are refused.
    """

    def __init__(self, d_model: int, *, n_heads: int = 4, n_kv_heads: int | None = None,
                 head_dim: int | None = None, rope: bool = True, rope_theta: float = 10_000.0,
                 window: int = 8, block_size: int = 4, init_blocks: int = 1, top_k: int = 2,
                 n_repr: int = 2, chunk_size: int = 1, rngs: nnx.Rngs):
        self.infllm = InfLLMConfig(n_heads, n_kv_heads, head_dim, rope, rope_theta, window,
                                   block_size, init_blocks, top_k, n_repr, chunk_size)
        super().__init__(d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                         rope=rope, rope_theta=rope_theta, rngs=rngs)

    def _options(self) -> dict[str, int]:
        c = self.infllm
        return dict(window=c.window, block_size=c.block_size, init_blocks=c.init_blocks,
                    top_k=c.top_k, n_repr=c.n_repr)

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        if segment_ids is not None:
            raise ValueError("InfLLMAttention: segment_ids (packed rows) are not supported: "
                             "InfLLM is a decoding mode over one sequence")
        batch, length, _ = x.shape
        q, k, v = self._qkv(x, self._positions(batch, length, None))
        out = infllm_attention(q, k, v, chunk_size=self.infllm.chunk_size, **self._options())
        return self.o_proj(out.reshape(batch, length, -1))

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, jax.Array]:
        """:func:`jaxlm.ops.infllm.infllm_cache`: k, v [batch, max_length, kv_heads, head_dim],
        scores [batch, max_length, kv_heads], pos."""
        if max_length is None:
            raise ValueError("InfLLMAttention.init_state: max_length (the KV cache length) is "
                             "required; got None")
        return infllm_cache(batch_size, max_length, self.n_kv_heads, self.head_dim, dtype)

    def step(self, x_t: jax.Array, state: dict[str, jax.Array]):
        """x_t: [batch, d_model] -> (y_t [batch, d_model], new state)."""
        batch = x_t.shape[0]
        q, k, v = self._qkv(x_t[:, None], jnp.broadcast_to(state["pos"], (batch, 1)))
        out, state = infllm_step(q[:, 0], k[:, 0], v[:, 0], state, **self._options())
        return self.o_proj(out.reshape(batch, -1).astype(x_t.dtype)), state


register_mixer("attention_infllm", InfLLMConfig, InfLLMAttention)
