"""A pointer-sentinel output head ("Pointer Sentinel Mixture Models"): the parameters around
``jaxlm.ops.pointer_sentinel_log_probs``.

Position t points at the inputs 0..t of its own document (pointing at position j predicts the
token x_j) with one attention head over the final hidden states; a learned sentinel vector
takes the probability the pointer does not claim and hands it to the output layer.

The key of position j reads the hidden state before it as well as its own,
k_j = W_k h_j + W_p h_{j-1} (zero before a document's first token): a query then finds the
places where the context that led to a token resembles its own and copies what came next (an
induction head, "In-context Learning and Induction Heads"), with no need for the backbone to
learn to move the previous token forward first.

With ``ngram_orders = N > 0`` the scores also read hard-wired n-gram matches (the n-gram heads
of "In-Context Language Learning: Architectures and Algorithms", ``jaxlm.ops.context_matches``):
score(t, j) gains w_1(h_t) + ... + w_n(h_t) when the last n tokens before j equal the last n
tokens up to t, for the longest such n <= N, with the weights w read from the query's state. A
large weight makes the pointer copy what followed the longest earlier match of the context,
as a classical in-context compressor (PPM) does. Matches depend on token ids only through
equality, so the head stays lexinvariant.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.ops.attention import attention_mask
from jaxlm.ops.ngram import context_matches
from jaxlm.ops.pointer import pointer_sentinel_log_probs
from jaxlm.ops.segments import document_ids, segment_starts


class PointerSentinel(nnx.Module):
    """``__call__``: final hidden states h [batch, length, dim], the output layer's logits
    [batch, length, vocab] and the input tokens [batch, length] -> log-probabilities
    [batch, length, vocab]. ``init_state`` / ``prefill`` / ``step`` keep the keys and tokens
    of the positions so far and the last hidden state, so generation points at the whole
    prompt."""

    def __init__(self, dim: int, *, ngram_orders: int = 0, rngs: nnx.Rngs):
        if ngram_orders < 0:
            raise ValueError(f"PointerSentinel: ngram_orders must be >= 0, got {ngram_orders}")
        self.query = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
        self.key = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
        self.previous_key = nnx.Linear(dim, dim, use_bias=False, rngs=rngs)
        self.sentinel = nnx.Param(jnp.zeros((dim,)))
        self.scale = dim ** -0.5
        self.ngram_orders = ngram_orders
        # Zero weights: at initialisation the matches change nothing.
        self.match_weights = (nnx.Linear(dim, ngram_orders, kernel_init=nnx.initializers.zeros,
                                         rngs=rngs) if ngram_orders else None)

    def _scores(self, h: jax.Array, keys: jax.Array, tokens: jax.Array,
                query_positions: jax.Array | None, segment_ids: jax.Array | None
                ) -> tuple[jax.Array, jax.Array]:
        """h [batch, q_len, dim] at ``query_positions`` (None: every position), keys
        [batch, k_len, dim] and tokens [batch, k_len] of the context -> (pointer scores
        [batch, q_len, k_len], sentinel scores [batch, q_len])."""
        q = self.query(h)
        scores = jnp.einsum("bqd,bkd->bqk", q, keys) * self.scale
        if self.match_weights is not None:
            matches = context_matches(tokens, self.ngram_orders, query_positions=query_positions,
                                      segment_ids=segment_ids)
            scores = scores + jnp.einsum("bqn,bnqk->bqk", self.match_weights(h),
                                         matches.astype(scores.dtype))
        return scores, (q @ self.sentinel[...]) * self.scale

    def _keys(self, h: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        """h [batch, length, dim] -> keys [batch, length, dim]."""
        batch, length, _ = h.shape
        before = jnp.pad(h[:, :-1], [(0, 0), (1, 0), (0, 0)])
        before = jnp.where(segment_starts(segment_ids, batch, length)[..., None], 0, before)
        return self.key(h) + self.previous_key(before)

    def __call__(self, h: jax.Array, vocab_logits: jax.Array, tokens: jax.Array, *,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        segment_ids = document_ids(segment_ids)  # a document: a maximal run of equal ids
        return self._parallel(h, vocab_logits, tokens, self._keys(h, segment_ids), segment_ids)

    def _parallel(self, h: jax.Array, vocab_logits: jax.Array, tokens: jax.Array,
                  keys: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        positions = jnp.arange(tokens.shape[1])
        mask = attention_mask(positions, positions, causal=True, window=None,
                              q_segment=segment_ids, k_segment=segment_ids)
        scores, sentinel = self._scores(h, keys, tokens, None, segment_ids)
        return pointer_sentinel_log_probs(vocab_logits, scores, sentinel, tokens, mask)

    def init_state(self, batch_size: int, *, max_length: int,
                   dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Keys [batch, max_length, dim], tokens [batch, max_length] of the context and the
        last hidden state [batch, dim]."""
        dim = self.sentinel.shape[0]
        return {"keys": jnp.zeros((batch_size, max_length, dim), dtype),
                "tokens": jnp.zeros((batch_size, max_length), jnp.int32),
                "last": jnp.zeros((batch_size, dim), dtype)}

    def prefill(self, h: jax.Array, vocab_logits: jax.Array, tokens: jax.Array, *,
                max_length: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The parallel form over a prompt, and the state that continues it."""
        state = self.init_state(tokens.shape[0], max_length=max_length, dtype=h.dtype)
        length = tokens.shape[1]
        keys = self._keys(h, None)
        state = {"keys": state["keys"].at[:, :length].set(keys),
                 "tokens": state["tokens"].at[:, :length].set(tokens.astype(jnp.int32)),
                 "last": h[:, -1]}
        return self._parallel(h, vocab_logits, tokens, keys, None), state

    def step(self, h: jax.Array, vocab_logits: jax.Array, tokens: jax.Array,
             state: dict[str, jax.Array], pos: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """h [batch, dim], vocab_logits [batch, vocab], tokens [batch] at position ``pos`` ->
        (log-probabilities [batch, vocab], new state)."""
        key = self.key(h) + self.previous_key(state["last"])
        state = {"keys": state["keys"].at[:, pos].set(key.astype(state["keys"].dtype)),
                 "tokens": state["tokens"].at[:, pos].set(tokens.astype(jnp.int32)), "last": h}
        scores, sentinel = self._scores(h[:, None], state["keys"], state["tokens"],
                                        jnp.reshape(pos, (1,)), None)
        mask = jnp.arange(state["tokens"].shape[1]) <= pos
        log_p = pointer_sentinel_log_probs(vocab_logits[:, None], scores, sentinel,
                                           state["tokens"], mask)
        return log_p[:, 0], state
