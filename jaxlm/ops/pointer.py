"""The pointer-sentinel output distribution ("Pointer Sentinel Mixture Models", Merity, Xiong,
Bradbury, Socher).

A pointer scores every earlier position of the context, a sentinel scores "none of them", and
one softmax over the sentinel and the allowed positions gives weights (g, a_1, ..., a_k). The
next-token distribution is

    p(v) = g * softmax(vocab_logits)[v] + sum_{j : tokens_j = v} a_j,

so a token's probability grows with the pointer weight on its earlier occurrences (uniform
weights give its frequency in the context), and whatever the pointer does not claim goes to
the output layer. The copy part depends on token ids only through equality, which makes it a
natural head for lexinvariant models ("Lexinvariant Language Models"): it states in-context
counts in probability space, where a tied output layer over random vectors can only state them
linearly in logit space.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import check_shape


def pointer_sentinel_log_probs(vocab_logits: jax.Array, scores: jax.Array, sentinel: jax.Array,
                               tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Log-probabilities of the pointer-sentinel mixture.

    vocab_logits: [batch, q_len, vocab] the output layer's logits;
    scores: [batch, q_len, k_len] the pointer's score for each context position;
    sentinel: [batch, q_len] the sentinel's score;
    tokens: [batch, k_len] int, the token each context position would copy;
    mask: bool, broadcastable to [batch, q_len, k_len]: the positions each query may point at.
    Returns log p: [batch, q_len, vocab] float32 (it sums to one over the vocabulary).
    """
    batch, q_len, vocab = vocab_logits.shape
    op = "pointer_sentinel_log_probs"
    check_shape(op, "tokens", tokens, (batch, None), "[batch, k_len]")
    k_len = tokens.shape[1]
    check_shape(op, "scores", scores, (batch, q_len, k_len), "[batch, q_len, k_len]")
    check_shape(op, "sentinel", sentinel, (batch, q_len), "[batch, q_len]")
    acc = jnp.promote_types(scores.dtype, jnp.float32)
    scores = jnp.where(mask, scores.astype(acc), -jnp.inf)
    weights = jax.nn.log_softmax(jnp.concatenate([sentinel[..., None].astype(acc), scores], -1))
    copy = jnp.einsum("bqk,bkv->bqv", jnp.exp(weights[..., 1:]),
                      jax.nn.one_hot(tokens, vocab, dtype=acc))
    pointed = copy > 0  # log 0 = -inf without a NaN gradient through the log
    log_copy = jnp.where(pointed, jnp.log(jnp.where(pointed, copy, 1.0)), -jnp.inf)
    from_vocab = weights[..., :1] + jax.nn.log_softmax(vocab_logits.astype(acc), axis=-1)
    return jnp.logaddexp(from_vocab, log_copy)


def context_matches(tokens: jax.Array, orders: int, *, query_positions: jax.Array | None = None,
                    segment_ids: jax.Array | None = None) -> jax.Array:
    """Which earlier contexts match each query's last n tokens: the hard-wired n-gram heads of
    "In-Context Language Learning: Architectures and Algorithms" (Akyürek et al.), stated for
    a pointer (pointing at position j predicts token j).

    tokens: [batch, length] int; query_positions: [q_len] positions of the queries (default
    every position); segment_ids: [batch, length] document ids of a packed row, or None.
    Returns bool [batch, orders, q_len, length]: entry (b, n - 1, q, j) is True when the n
    tokens ending at query position q equal the n tokens ending at position j - 1, all of them
    inside the document of q (respectively j). So a match of order n implies every lower
    order, and j = 0 (or a document start) matches nothing. It depends on token ids only
    through equality, so it keeps a model lexinvariant.
    """
    if tokens.ndim != 2:
        raise ValueError(f"context_matches: tokens must have shape [batch, length], "
                         f"got {tuple(tokens.shape)}")
    if orders < 1:
        raise ValueError(f"context_matches: orders must be >= 1, got {orders}")
    length = tokens.shape[1]
    keys = jnp.arange(length)
    queries = keys if query_positions is None else query_positions

    def back(positions: jax.Array, shift: int, missing: int) -> jax.Array:
        """The token ``shift`` places before each position, ``missing`` where that falls
        before the row or the position's document: [batch, len(positions)]."""
        source = positions - shift
        valid = source >= 0
        source = jnp.maximum(source, 0)
        if segment_ids is not None:
            valid = valid & (segment_ids[:, source] == segment_ids[:, positions])
        return jnp.where(valid, tokens[:, source], missing)

    matched, out = None, []
    for n in range(orders):  # -1 and -2 never equal each other or a token id
        same = back(queries, n, -1)[:, :, None] == back(keys, n + 1, -2)[:, None, :]
        matched = same if matched is None else matched & same
        out.append(matched)
    return jnp.stack(out, axis=1)
