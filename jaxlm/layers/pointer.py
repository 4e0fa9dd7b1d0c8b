"""A pointer-sentinel output head ("Pointer Sentinel Mixture Models"): the parameters around
``jaxlm.ops.pointer_sentinel_log_probs``.

Position t points at the inputs 0..t of its own document (pointing at position j predicts the
token x_j) with one attention head over the final hidden states; a learned sentinel vector
takes the probability the pointer does not claim and hands it to the output layer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.ops.attention import attention_mask
from jaxlm.ops.pointer import pointer_sentinel_log_probs


class PointerSentinel(nnx.Module):
    """``__call__``: final hidden states h [batch, length, dim], the output layer's logits
    [batch, length, vocab] and the input tokens [batch, length] -> log-probabilities
    [batch, length, vocab]. ``init_state`` / ``prefill`` / ``step`` keep the keys and tokens
    of the positions so far, so generation points at the whole prompt."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.query = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
        self.key = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
        self.sentinel = nnx.Param(jnp.zeros((dim,)))
        self.scale = dim ** -0.5

    def _scores(self, q: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q [batch, q_len, dim], keys [batch, k_len, dim] -> (pointer scores, sentinel)."""
        scores = jnp.einsum("bqd,bkd->bqk", q, keys) * self.scale
        return scores, (q @ self.sentinel[...]) * self.scale

    def __call__(self, h: jax.Array, vocab_logits: jax.Array, tokens: jax.Array, *,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        positions = jnp.arange(tokens.shape[1])
        mask = attention_mask(positions, positions, causal=True, window=None,
                              q_segment=segment_ids, k_segment=segment_ids)
        scores, sentinel = self._scores(self.query(h), self.key(h))
        return pointer_sentinel_log_probs(vocab_logits, scores, sentinel, tokens,
                                          jnp.broadcast_to(mask, scores.shape))

    def init_state(self, batch_size: int, *, max_length: int,
                   dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Keys [batch, max_length, dim] and tokens [batch, max_length] of the context."""
        dim = self.sentinel.shape[0]
        return {"keys": jnp.zeros((batch_size, max_length, dim), dtype),
                "tokens": jnp.zeros((batch_size, max_length), jnp.int32)}

    def prefill(self, h: jax.Array, vocab_logits: jax.Array, tokens: jax.Array, *,
                max_length: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The parallel form over a prompt, and the state that continues it."""
        state = self.init_state(tokens.shape[0], max_length=max_length, dtype=h.dtype)
        length = tokens.shape[1]
        state = {"keys": state["keys"].at[:, :length].set(self.key(h)),
                 "tokens": state["tokens"].at[:, :length].set(tokens)}
        return self(h, vocab_logits, tokens), state

    def step(self, h: jax.Array, vocab_logits: jax.Array, tokens: jax.Array,
             state: dict[str, jax.Array], pos: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """h [batch, dim], vocab_logits [batch, vocab], tokens [batch] at position ``pos`` ->
        (log-probabilities [batch, vocab], new state)."""
        state = {"keys": state["keys"].at[:, pos].set(self.key(h).astype(state["keys"].dtype)),
                 "tokens": state["tokens"].at[:, pos].set(tokens)}
        scores, sentinel = self._scores(self.query(h)[:, None], state["keys"])
        mask = (jnp.arange(state["tokens"].shape[1]) <= pos)[None, None]
        log_p = pointer_sentinel_log_probs(vocab_logits[:, None], scores, sentinel,
                                           state["tokens"], jnp.broadcast_to(mask, scores.shape))
        return log_p[:, 0], state
