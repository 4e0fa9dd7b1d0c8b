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

from jaxlm.ops.checks import accepts_numpy, check_shape


@accepts_numpy
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
