"""Hard-wired n-gram heads ("In-Context Language Learning: Architectures and Algorithms",
Akyürek, Wang, Kim, Andreas).

The paper finds that Transformers learn in-context languages through "n-gram heads": heads
that attend to the positions whose preceding n tokens equal the current last n tokens and read
what came next, so their output is the in-context n-gram distribution of the next token.
Wiring such heads into a model improves recurrent and convolutional models on in-context
language learning, and language modelling. Here the heads of orders 1..N attend uniformly to
the matching positions (``jaxlm.ops.context_matches``): position j holds token x_j, and it
matches query t at order n when x_{j-n..j-1} = x_{t-n+1..t}, inside one document. Each order
reads its own value projection of the hidden states; the concatenated results go through an
output projection (zero at initialisation) into the residual stream:

    y_t = h_t + W_o [mean_{j in M_1(t)} W_1 h_j, ..., mean_{j in M_N(t)} W_N h_j]

(an empty mean is zero). The heads read token ids, so a model with them calls them with its
input tokens.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.ops.attention import attention_mask
from jaxlm.ops.ngram import context_matches


class NgramHeads(nnx.Module):
    """``__call__``: hidden states h [batch, length, dim] and the tokens [batch, length] ->
    h plus the n-gram heads' output [batch, length, dim]. ``init_state`` / ``prefill`` / ``step``
    keep the tokens and value vectors seen so far (a cache like attention's), for generation."""

    def __init__(self, dim: int, orders: int, *, rngs: nnx.Rngs):
        if orders < 1:
            raise ValueError(f"NgramHeads: orders must be >= 1, got {orders}")
        self.orders = orders
        self.values = nnx.Linear(dim, orders * dim, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(orders * dim, dim, use_bias=False,
                              kernel_init=nnx.initializers.zeros, rngs=rngs)

    def _values(self, h: jax.Array) -> jax.Array:
        """h [batch, length, dim] -> value vectors [batch, length, orders, dim]."""
        return self.values(h).reshape(h.shape[:-1] + (self.orders, h.shape[-1]))

    def _read(self, h: jax.Array, values: jax.Array, tokens: jax.Array,
              query_positions: jax.Array | None, segment_ids: jax.Array | None,
              visible: jax.Array) -> jax.Array:
        """The heads at the queries h [batch, q_len, dim] over the context's values [batch,
        k_len, orders, dim] and tokens [batch, k_len]; ``visible`` [q_len, k_len]: the causal
        mask."""
        matches = context_matches(tokens, self.orders, query_positions=query_positions,
                                  segment_ids=segment_ids) & visible
        weights = matches.astype(values.dtype)
        # Orders as a batch axis of both operands (values [batch, orders, k_len, dim]) and the
        # mean's division after the product, on the [batch, q_len, orders] counts rather than
        # on the [batch, orders, q_len, k_len] weights.
        sums = jnp.einsum("bnqk,bnkd->bqnd", weights, jnp.swapaxes(values, 1, 2))
        counts = jnp.swapaxes(weights.sum(-1), 1, 2)[..., None]  # [batch, q_len, orders, 1]
        read = sums / jnp.maximum(counts, 1.0)
        return h + self.out(read.reshape(read.shape[:2] + (-1,)))

    def __call__(self, h: jax.Array, tokens: jax.Array, *,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        return self._parallel(h, self._values(h), tokens, segment_ids)

    def _parallel(self, h: jax.Array, values: jax.Array, tokens: jax.Array,
                  segment_ids: jax.Array | None) -> jax.Array:
        positions = jnp.arange(tokens.shape[1])
        visible = attention_mask(positions, positions, causal=True, window=None)
        return self._read(h, values, tokens, None, segment_ids, visible)

    def init_state(self, batch_size: int, *, max_length: int,
                   dtype: Any = jnp.float32) -> dict[str, jax.Array]:
        """Tokens [batch, max_length] and value vectors [batch, max_length, orders, dim]."""
        dim = self.out.out_features
        return {"tokens": jnp.zeros((batch_size, max_length), jnp.int32),
                "values": jnp.zeros((batch_size, max_length, self.orders, dim), dtype)}

    def prefill(self, h: jax.Array, tokens: jax.Array, *,
                max_length: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The parallel form over a prompt, and the state that continues it."""
        state = self.init_state(tokens.shape[0], max_length=max_length, dtype=h.dtype)
        length = tokens.shape[1]
        values = self._values(h)
        state = {"tokens": state["tokens"].at[:, :length].set(tokens.astype(jnp.int32)),
                 "values": state["values"].at[:, :length].set(values)}
        return self._parallel(h, values, tokens, None), state

    def step(self, h: jax.Array, tokens: jax.Array, state: dict[str, jax.Array],
             pos: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """h [batch, dim] and tokens [batch] at position ``pos`` -> (output [batch, dim], new
        state)."""
        values = self._values(h[:, None])[:, 0]
        state = {"tokens": state["tokens"].at[:, pos].set(tokens.astype(jnp.int32)),
                 "values": state["values"].at[:, pos].set(values.astype(state["values"].dtype))}
        visible = (jnp.arange(state["tokens"].shape[1]) <= pos)[None]
        out = self._read(h[:, None], state["values"], state["tokens"], jnp.reshape(pos, (1,)),
                         None, visible)
        return out[:, 0], state
