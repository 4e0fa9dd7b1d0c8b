"""Multi-head / grouped-query softmax attention as a sequence mixer, with a KV cache for
``step``."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.layers.registry import register_mixer
from jaxlm.ops import attention_mask, masked_attention, segment_positions
from jaxlm.ops.recycled_attention import recycled_attention, select_recycled_keys
from jaxlm.ops.rope import ROPE_SCALINGS, apply_rope, rope_frequencies
from jaxlm.parallel.dispatch import ATTENTION_SCHEMES, causal_attention


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Options of :class:`Attention` (the keyword arguments of its constructor)."""
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: as many as n_heads; fewer: grouped-query attention
    head_dim: int | None = None  # None: d_model // n_heads
    window: int | None = None  # sliding window length; None: full causal attention
    rope: bool = True
    rope_theta: float = 10_000.0
    impl: str = "auto"
    # under a mesh that splits the length: "ring", "zigzag" (balanced ring) or "ulysses"
    sequence_parallel: str = "ring"
    # RoPE frequency scaling (Hugging Face's rope_type): "default", "linear" or "llama3",
    # with its parameters (see jaxlm.ops.rope.rope_frequencies)
    rope_scaling: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_length: int = 8192
    # decoding only (Recycled Attention): full attention every recycle_every steps, else over
    # the recycle_top_k keys the last full step attended to most; None: always full
    recycle_every: int | None = None
    recycle_top_k: int = 32

    def __post_init__(self):
        if self.rope_scaling not in ROPE_SCALINGS:
            raise ValueError(f"attention rope_scaling={self.rope_scaling!r}; expected one of "
                             f"{ROPE_SCALINGS}")
        if self.sequence_parallel not in ATTENTION_SCHEMES:
            raise ValueError(f"attention sequence_parallel={self.sequence_parallel!r}; expected "
                             f"one of {ATTENTION_SCHEMES}")
        for name in ("n_heads", "n_kv_heads", "head_dim", "window", "recycle_every",
                     "recycle_top_k"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"attention {name} must be a positive integer"
                                 f"{'' if name == 'n_heads' else ' or None'}, got {value!r}")
        n_kv = self.n_kv_heads or self.n_heads
        if self.n_heads % n_kv:
            raise ValueError(f"attention n_kv_heads={self.n_kv_heads} must divide "
                             f"n_heads={self.n_heads}")


class Attention(nnx.Module):
    """Causal softmax attention ("Attention Is All You Need"), optionally grouped-query
    ("GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints"),
    sliding-window, and with rotary positions.

    ``__call__``: x [batch, length, d_model] -> [batch, length, d_model]; positions restart at
    every document of a packed row when ``segment_ids`` is given.
    ``step``: one token against a KV cache. With a window the cache is a ring buffer of
    ``window`` slots, so decoding memory is O(window); without one it holds ``max_length``
    tokens (past that it keeps the latest ``max_length``, i.e. acts as a window).
    With ``recycle_every=S`` the step is Recycled Attention ("Recycled Attention: Efficient
    inference for long-context language models"; :mod:`jaxlm.ops.recycled_attention`): full
    attention over the cache every S steps, choosing per KV head the ``recycle_top_k`` cached
    tokens with the most attention; the steps between attend over those and the tokens since.
    The parallel form is unchanged.
    """

    def __init__(self, d_model: int, *, n_heads: int = 4, n_kv_heads: int | None = None,
                 head_dim: int | None = None, window: int | None = None, rope: bool = True,
                 rope_theta: float = 10_000.0, impl: str = "auto",
                 sequence_parallel: str = "ring", rope_scaling: str = "default",
                 rope_factor: float = 1.0, rope_low_freq_factor: float = 1.0,
                 rope_high_freq_factor: float = 4.0, rope_original_max_length: int = 8192,
                 recycle_every: int | None = None, recycle_top_k: int = 32,
                 rngs: nnx.Rngs):
        config = AttentionConfig(n_heads, n_kv_heads, head_dim, window, rope, rope_theta, impl,
                                 sequence_parallel, rope_scaling, rope_factor,
                                 rope_low_freq_factor, rope_high_freq_factor,
                                 rope_original_max_length, recycle_every, recycle_top_k)
        self.recycle_every, self.recycle_top_k = recycle_every, recycle_top_k
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = head_dim or d_model // n_heads
        if self.head_dim < 1 or (rope and self.head_dim % 2):
            raise ValueError(f"Attention: head_dim={self.head_dim} (from d_model={d_model}, "
                             f"n_heads={n_heads}) must be positive{' and even with rope' * rope}")
        self.window = config.window
        self.rope = rope
        self.rope_theta = rope_theta
        # a tuple (static under jit) of the RoPE frequencies, None for the default ones
        self.rope_frequencies = None if rope_scaling == "default" else tuple(rope_frequencies(
            self.head_dim, theta=rope_theta, scaling=rope_scaling, factor=rope_factor,
            low_freq_factor=rope_low_freq_factor, high_freq_factor=rope_high_freq_factor,
            original_max_length=rope_original_max_length))
        self.impl = impl
        self.sequence_parallel = sequence_parallel
        kv_width = self.n_kv_heads * self.head_dim
        self.q_proj = nnx.Linear(d_model, n_heads * self.head_dim, use_bias=False, rngs=rngs)
        self.k_proj = nnx.Linear(d_model, kv_width, use_bias=False, rngs=rngs)
        self.v_proj = nnx.Linear(d_model, kv_width, use_bias=False, rngs=rngs)
        self.o_proj = nnx.Linear(n_heads * self.head_dim, d_model, use_bias=False, rngs=rngs)

    def _project(self, x: jax.Array):
        """x [batch, length, d_model] -> q [batch, length, heads, head_dim], k and v
        [batch, length, kv_heads, head_dim], before rotary positions."""
        batch, length, _ = x.shape
        q = self.q_proj(x).reshape(batch, length, self.n_heads, self.head_dim)
        k = self.k_proj(x).reshape(batch, length, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(batch, length, self.n_kv_heads, self.head_dim)
        return q, k, v

    @staticmethod
    def _positions(batch: int, length: int, segment_ids: jax.Array | None) -> jax.Array:
        """[batch, length] rotary positions, restarting at every document of a packed row."""
        if segment_ids is None:
            return jnp.broadcast_to(jnp.arange(length), (batch, length))
        return segment_positions(segment_ids)

    def _rotate(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        if not self.rope:
            return x
        freqs = None if self.rope_frequencies is None else np.asarray(self.rope_frequencies)
        return apply_rope(x, positions, theta=self.rope_theta, frequencies=freqs)

    def _qkv(self, x: jax.Array, positions: jax.Array):
        q, k, v = self._project(x)
        return self._rotate(q, positions), self._rotate(k, positions), v

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
                 bias: jax.Array | None = None) -> jax.Array:
        """``bias`` [batch, length, length] is added to every head's scores (MrT5's soft
        deletion); the op then takes its reference form."""
        batch, length, _ = x.shape
        q, k, v = self._qkv(x, self._positions(batch, length, segment_ids))
        out = causal_attention(q, k, v, window=self.window, segment_ids=segment_ids, bias=bias,
                               impl=self.impl, scheme=self.sequence_parallel)
        return self.o_proj(out.reshape(batch, length, -1))

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, jax.Array]:
        """KV cache: k, v [batch, slots, kv_heads, head_dim]; slot_pos [slots] (-1 = empty);
        pos: the position of the next token. With ``recycle_every``, also ``recycled``
        [batch, kv_heads, min(recycle_top_k, slots)] (the positions the last full step chose,
        -1: none) and ``last_full`` (that step's position)."""
        if self.window is None and max_length is None:
            raise ValueError("Attention.init_state: max_length (the KV cache length) is required "
                             "for full attention; got None")
        slots = self.window if max_length is None else min(self.window or max_length, max_length)
        shape = (batch_size, slots, self.n_kv_heads, self.head_dim)
        state = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
                 "slot_pos": jnp.full((slots,), -1, jnp.int32), "pos": jnp.zeros((), jnp.int32)}
        if self.recycle_every is not None:
            state["recycled"] = jnp.full(
                (batch_size, self.n_kv_heads, min(self.recycle_top_k, slots)), -1, jnp.int32)
            state["last_full"] = jnp.full((), -self.recycle_every, jnp.int32)
        return state

    def step(self, x_t: jax.Array, state: dict[str, jax.Array]):
        """x_t: [batch, d_model] -> (y_t [batch, d_model], new state)."""
        batch = x_t.shape[0]
        pos = state["pos"]
        q, k, v = self._qkv(x_t[:, None], jnp.broadcast_to(pos, (batch, 1)))
        slot = pos % state["slot_pos"].shape[0]
        cache_k = state["k"].at[:, slot].set(k[:, 0].astype(state["k"].dtype))
        cache_v = state["v"].at[:, slot].set(v[:, 0].astype(state["v"].dtype))
        slot_pos = state["slot_pos"].at[slot].set(pos)
        mask = attention_mask(pos[None], slot_pos, causal=True, window=self.window)
        mask &= (slot_pos >= 0)[None, :]
        mask = jnp.broadcast_to(mask, (batch, 1, slot_pos.shape[0]))
        new_state = {"k": cache_k, "v": cache_v, "slot_pos": slot_pos, "pos": pos + 1}
        if self.recycle_every is None:
            out = masked_attention(q, cache_k, cache_v, mask, self.head_dim ** -0.5)
        else:
            out, recycled, last_full = self._recycled_step(q, mask, new_state, state)
            new_state.update(recycled=recycled, last_full=last_full)
        return self.o_proj(out.reshape(batch, -1)), new_state

    def _recycled_step(self, q, mask, cache, state):
        """Recycled Attention's step: (out [batch, 1, heads, head_dim], recycled positions,
        position of the last full step)."""
        pos, scale, every = state["pos"], self.head_dim ** -0.5, self.recycle_every

        def full(_):
            out = masked_attention(q, cache["k"], cache["v"], mask, scale)
            chosen = select_recycled_keys(q[:, 0], cache["k"], cache["slot_pos"], mask[:, 0],
                                          scale, self.recycle_top_k)
            return out, chosen, pos

        def recycled(_):
            since = state["last_full"] + 1 + jnp.arange(every, dtype=jnp.int32)
            since = jnp.broadcast_to(since, (*state["recycled"].shape[:2], every))
            positions = jnp.concatenate([state["recycled"], since], axis=-1)
            out = recycled_attention(q[:, 0], cache["k"], cache["v"], cache["slot_pos"],
                                     positions, pos, scale, window=self.window)
            return out[:, None], state["recycled"], state["last_full"]

        return jax.lax.cond(pos - state["last_full"] >= every, full, recycled, None)


register_mixer("attention", AttentionConfig, Attention, sequence_parallel=True)


@dataclasses.dataclass(frozen=True)
class WindowAttentionConfig(AttentionConfig):
    """Options of the ``attention_window`` mixer: attention with a sliding window by default."""
    window: int | None = 32


@register_mixer("attention_window", WindowAttentionConfig, sequence_parallel=True)
def _build_window_attention(d_model: int, config: WindowAttentionConfig, *,
                            rngs: nnx.Rngs) -> Attention:
    if config.window is None:
        raise ValueError("attention_window: window must be a positive integer, got None "
                         "(use the 'attention' mixer for full attention)")
    return Attention(d_model, **dataclasses.asdict(config), rngs=rngs)
