"""Routing attention against a loop over clusters that gathers each cluster's members by hand
(float64; values and gradients agree to 1e-12 relative, the same sums in another order), and
the k-means update against its definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.ops import attention, masked_attention
from jaxlm.ops.routing_attention import routing_attention, unit_norm, update_centroids
from tests.helpers import normal, rel_err
from tests.ops.test_sparse_attention import qkv, values_and_grads

TOL = 1e-12


def centroids_like(seed, heads, n_clusters, d=8):
    """Unit centroids [heads, n_clusters, d], as :func:`init_centroids` draws them."""
    return unit_norm(normal(seed, (heads, n_clusters, d)))


def members(x, centroids, size):
    """Per (batch, head, cluster): the positions routed there, by the definition.
    x [b, L, h, d] numpy."""
    unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
    sim = np.einsum("blhd,hcd->bhcl", unit, centroids)
    if size is None:
        nearest = sim.argmax(axis=2)  # [b, h, L]
        return [[[np.flatnonzero(nearest[b, h] == c) for c in range(sim.shape[2])]
                 for h in range(sim.shape[1])] for b in range(sim.shape[0])]
    return [[[np.sort(np.argsort(-sim[b, h, c], kind="stable")[:size])
              for c in range(sim.shape[2])] for h in range(sim.shape[1])]
            for b in range(sim.shape[0])]


def loop_reference(q, k, v, centroids, size, segment_ids=None):
    """Per cluster: causal softmax of its queries over its keys (dense attention with that
    cluster's mask, built by loops from the membership lists); outputs averaged over the
    clusters in which a query had a key. Returns a function of (q, k, v), differentiable, with
    the membership of these q and k fixed."""
    batch, length, heads, _ = q.shape
    qm = members(np.asarray(q), np.asarray(centroids), size)
    km = members(np.repeat(np.asarray(k), heads // k.shape[2], 2), np.asarray(centroids), size)
    seg = np.zeros((batch, length)) if segment_ids is None else np.asarray(segment_ids)
    masks = np.zeros((len(qm[0][0]), batch, heads, length, length), bool)
    for b in range(batch):
        for h in range(heads):
            for c, (qs, ks) in enumerate(zip(qm[b][h], km[b][h])):
                for i in qs:
                    for j in ks:
                        masks[c, b, h, i, j] = j <= i and seg[b, j] == seg[b, i]
    has_key = jnp.asarray(masks.any(-1))[..., None]  # [C, b, h, L, 1]
    count = jnp.maximum(has_key.sum(0), 1)

    def reference(q, k, v):
        outs = jnp.stack([jnp.moveaxis(masked_attention(q, k, v, m, q.shape[-1] ** -0.5), 1, 2)
                          for m in masks])  # [C, b, h, L, d]
        return jnp.moveaxis(jnp.sum(outs * has_key, 0) / count, 1, 2)

    return reference


@pytest.mark.parametrize("batch, length, heads, kv_heads, n_clusters, size",
                         [(2, 13, 4, 2, 3, None), (2, 13, 4, 2, 3, 5), (1, 9, 2, 1, 2, 9),
                          (1, 16, 2, 2, 4, 3)])
def test_equals_loop_over_clusters(batch, length, heads, kv_heads, n_clusters, size):
    q, k, v = qkv(length, batch, length, heads, kv_heads)
    centroids = centroids_like(1, heads, n_clusters)
    fast = values_and_grads(
        lambda q, k, v: routing_attention(q, k, v, centroids, cluster_size=size), q, k, v)
    want = values_and_grads(loop_reference(q, k, v, centroids, size), q, k, v)
    assert rel_err(fast, want) < TOL


@pytest.mark.parametrize("size", [None, 6])
def test_packed_rows_never_cross_documents(size):
    q, k, v = qkv(3, 2, 14, 2, 2)
    segment_ids = jnp.array([[0] * 5 + [1] * 9, [0] * 10 + [1] * 4])
    centroids = centroids_like(2, 2, 3)
    out = jax.jit(routing_attention, static_argnames="cluster_size")(
        q, k, v, centroids, cluster_size=size, segment_ids=segment_ids)
    want = loop_reference(q, k, v, centroids, size, segment_ids)(q, k, v)
    assert rel_err(out, want) < TOL


@pytest.mark.parametrize("size", [None, 11])
def test_one_cluster_is_causal_attention(size):
    q, k, v = qkv(4, 2, 11, 4, 2)
    centroids = centroids_like(0, 4, 1)
    out, want = jax.jit(lambda q, k, v: (routing_attention(q, k, v, centroids, cluster_size=size),
                                         attention(q, k, v, impl="reference")))(q, k, v)
    assert rel_err(out, want) < TOL


def test_routing_vectors_decide_the_clusters():
    """Routed by q_route / k_route: with one vector for every token all share a cluster."""
    q, k, v = qkv(5, 1, 10, 2, 2)
    centroids = centroids_like(0, 2, 4)
    same = jnp.broadcast_to(q[:, :1], q.shape)
    out, want = jax.jit(lambda q, k, v: (routing_attention(q, k, v, centroids, q_route=same,
                                                           k_route=same),
                                         attention(q, k, v, impl="reference")))(q, k, v)
    assert rel_err(out, want) < TOL


def test_update_moves_centroids_to_their_members_mean_without_gradient():
    q, k, _ = qkv(6, 2, 12, 2, 1)
    centroids = centroids_like(3, 2, 3)
    update = jax.jit(update_centroids, static_argnames="decay")
    new = update(centroids, q, k, decay=0.0)
    x = np.concatenate([np.asarray(q), np.repeat(np.asarray(k), 2, 2)], axis=1)
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    unit = np.asarray(centroids)
    nearest = np.einsum("blhd,hcd->blhc", x, unit).argmax(-1)  # [b, 2L, h]
    for h in range(2):
        for c in range(3):
            chosen = x[:, :, h][nearest[:, :, h] == c]
            if len(chosen):
                mean = chosen.mean(0)
                np.testing.assert_allclose(new[h, c], mean / np.linalg.norm(mean), rtol=1e-5)
            else:
                np.testing.assert_array_equal(new[h, c], centroids[h, c])
    grad = jax.grad(lambda q: jnp.sum(update_centroids(centroids, q, k, decay=0.5)))(q)
    assert not np.any(grad)
    slow = update(centroids, q, k, decay=0.9)
    assert np.allclose(np.linalg.norm(slow, axis=-1), 1, atol=1e-5)


def test_bad_arguments_are_named():
    q, k, v = qkv(0, 1, 6, 2, 2)
    centroids = centroids_like(0, 2, 3)
    with pytest.raises(ValueError, match=r"centroids must have shape \[heads, n_clusters"):
        routing_attention(q, k, v, centroids[:1])
    with pytest.raises(ValueError, match="cluster_size"):
        routing_attention(q, k, v, centroids, cluster_size=0)
    with pytest.raises(ValueError, match="decay must be in"):
        update_centroids(centroids, q, k, decay=1.0)
