"""Hard-wired n-gram heads: the layer against a float64 loop over queries and orders (values and
gradients), documents kept apart, and a decoder with them generating step by step as its
parallel form predicts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.layers import NgramHeads
from jaxlm.models import ModelConfig, build_lm
from tests.helpers import loop_matches, normal, rel_err, to_float64


def heads(dim: int, orders: int, seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
    """Float64 parameters of heads whose output projection (zero at initialisation) is drawn
    at random."""
    graphdef, params = nnx.split(NgramHeads(dim, orders, rngs=nnx.Rngs(params=seed)))
    params = to_float64(params)
    params["out"]["kernel"][...] = normal(seed + 2, params["out"]["kernel"].shape)
    return graphdef, params


def loop_heads(layer, h, tokens, segment_ids):
    """y_t = h_t + W_o [mean over matches of order n of W_n h_j]_n, one query at a time."""
    batch, length, dim = h.shape
    matches = loop_matches(np.asarray(tokens), np.asarray(segment_ids), layer.orders)
    w_v = layer.values.kernel[...].reshape(dim, layer.orders, dim)
    rows = []
    for b in range(batch):
        outs = []
        for t in range(length):
            reads = []
            for n in range(layer.orders):
                hits = [j for j in range(t + 1) if matches[b, n, t, j]]
                reads.append(sum((h[b, j] @ w_v[:, n] for j in hits), jnp.zeros(dim)) /
                             max(len(hits), 1))
            outs.append(h[b, t] + jnp.concatenate(reads) @ layer.out.kernel[...])
        rows.append(jnp.stack(outs))
    return jnp.stack(rows)


@pytest.mark.parametrize("batch,length,orders", [(1, 9, 1), (2, 13, 3)])
def test_ngram_heads_match_the_loop(batch, length, orders):
    """Tolerance 1e-10: float64 on both sides, the same sums in another order. Three token
    values, so matches of every order occur; row 0 is packed (two documents)."""
    dim = 4
    graphdef, params = heads(dim, orders)
    tokens = jax.random.randint(jax.random.key(length), (batch, length), 0, 3)
    segment_ids = jnp.asarray([[0] * 4 + [1] * (length - 4)] + [[0] * length] * (batch - 1))
    h = normal(length, (batch, length, dim))
    weights = normal(99, (batch, length, dim))

    def loss(h, params, op):
        out = op(nnx.merge(graphdef, params), h)
        return jnp.sum(out * weights), out

    parallel = lambda m, h: m(h, tokens, segment_ids=segment_ids)
    loop = lambda m, h: loop_heads(m, h, tokens, segment_ids)
    (grads, out), (ref_grads, ref) = (
        jax.grad(loss, argnums=(0, 1), has_aux=True)(h, params, op) for op in (parallel, loop))
    assert out.dtype == jnp.float64
    assert rel_err(out, ref) < 1e-10 and rel_err(grads, ref_grads) < 1e-10


def test_ngram_heads_name_a_bad_order():
    with pytest.raises(ValueError, match="NgramHeads: orders must be >= 1, got 0"):
        NgramHeads(4, 0, rngs=nnx.Rngs(params=0))
    with pytest.raises(ValueError, match=r"model.ngram_heads must be a non-negative integer, "
                                         r"and 0 unless model.kind='decoder'; got 2 with "
                                         r"model.kind='hierarchical'"):
        ModelConfig(kind="hierarchical", ngram_heads=2)


def test_decoder_with_ngram_heads_steps_as_its_parallel_form():
    """Prefill of a prompt, then one token at a time, against the parallel logits (float32
    throughout; 1e-5 is a few ulps of logits of order one)."""
    config = ModelConfig(vocab_size=5, d_model=8, n_layers=1, ngram_heads=3)
    model = build_lm(config, rngs=nnx.Rngs(params=0))
    model.ngram.out.kernel[...] = jax.random.normal(jax.random.key(1),
                                                   model.ngram.out.kernel.shape, jnp.float32)
    tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 3)
    full = model(tokens)
    no_heads = build_lm(dataclasses.replace(config, ngram_heads=0), rngs=nnx.Rngs(params=0))
    assert not np.allclose(full, no_heads(tokens), atol=1e-3)  # the heads do contribute
    logits, state = model.prefill(tokens[:, :6], max_length=16)
    np.testing.assert_allclose(logits, full[:, :6], atol=1e-5)
    for t in range(6, 16):
        logits, state = model.step(tokens[:, t], state)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)
