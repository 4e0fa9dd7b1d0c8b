"""The pointer-sentinel mixture against a loop over queries that builds each distribution by
hand, in float64: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops import pointer_sentinel_log_probs
from tests.helpers import rel_err


def loop_log_probs(vocab_logits, scores, sentinel, tokens, mask):
    """For each (row, query): softmax over the sentinel and the allowed positions, the
    sentinel's share times softmax(vocab_logits), plus each position's weight on its token."""
    batch, q_len, vocab = vocab_logits.shape
    rows = []
    for b in range(batch):
        queries = []
        for q in range(q_len):
            allowed = [k for k in range(tokens.shape[1]) if mask[b, q, k]]
            weights = jax.nn.softmax(jnp.stack([sentinel[b, q]] + [scores[b, q, k]
                                                                   for k in allowed]))
            p = weights[0] * jax.nn.softmax(vocab_logits[b, q])
            for weight, k in zip(weights[1:], allowed):
                p = p.at[tokens[b, k]].add(weight)
            queries.append(jnp.log(p))
        rows.append(jnp.stack(queries))
    return jnp.stack(rows)


@pytest.mark.parametrize("batch,q_len,k_len,vocab", [(1, 5, 5, 7), (2, 3, 6, 4)])
def test_pointer_sentinel_matches_the_loop(batch, q_len, k_len, vocab):
    """Tolerance 1e-10: float64 on both sides, the same sums in another order."""
    keys = jax.random.split(jax.random.key(batch * 10 + q_len), 5)
    floats = {"vocab_logits": jax.random.normal(keys[0], (batch, q_len, vocab), jnp.float64),
              "scores": 2 * jax.random.normal(keys[1], (batch, q_len, k_len), jnp.float64),
              "sentinel": jax.random.normal(keys[2], (batch, q_len), jnp.float64)}
    tokens = jax.random.randint(keys[3], (batch, k_len), 0, vocab)  # repeats, unseen ids
    mask = np.array(jax.random.bernoulli(keys[4], 0.6, (batch, q_len, k_len)))
    mask[0, 0] = False  # a query with nothing to point at: the output layer alone
    weights = jax.random.normal(jax.random.key(7), (batch, q_len, vocab), jnp.float64)

    def loss(f, op):
        out = op(f["vocab_logits"], f["scores"], f["sentinel"], tokens, mask)
        return jnp.sum(out * weights), out

    (grads, out), (ref_grads, ref) = (jax.grad(loss, has_aux=True)(floats, op)
                                      for op in (pointer_sentinel_log_probs, loop_log_probs))
    assert out.dtype == jnp.float64
    assert rel_err(out, ref) < 1e-10 and rel_err(grads, ref_grads) < 1e-10
    np.testing.assert_allclose(jnp.exp(out).sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(out[0, 0], jax.nn.log_softmax(floats["vocab_logits"][0, 0]))


def test_pointer_sentinel_names_a_bad_shape():
    logits = jnp.zeros((2, 3, 5))
    with pytest.raises(ValueError, match=r"scores must have shape \[batch, q_len, k_len\]"):
        pointer_sentinel_log_probs(logits, jnp.zeros((2, 3, 4)), jnp.zeros((2, 3)),
                                   jnp.zeros((2, 6), jnp.int32), jnp.ones((2, 3, 6), bool))
    with pytest.raises(ValueError, match=r"tokens must have shape \[batch, k_len\]"):
        pointer_sentinel_log_probs(logits, jnp.zeros((2, 3, 6)), jnp.zeros((2, 3)),
                                   jnp.zeros((6,), jnp.int32), jnp.ones((2, 3, 6), bool))
