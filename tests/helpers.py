"""Shared test helpers."""

import jax
import jax.numpy as jnp
import numpy as np


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| over every leaf of two pytrees (||a - b|| where b is all zeros, e.g.
    the gradient of an input an op ignores)."""
    def sq(x):  # |x|², complex entries included
        return float(jnp.sum(jnp.abs(jnp.asarray(x)).astype(jnp.float64) ** 2))

    num = sum(sq(jnp.asarray(x) - jnp.asarray(y))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    den = sum(sq(y) for y in jax.tree.leaves(b))
    return float(np.sqrt(num / den)) if den else float(np.sqrt(num))


def to_float64(tree):
    """Casts the float leaves of a pytree (e.g. an NNX module) to float64."""
    return jax.tree.map(lambda x: x.astype(jnp.float64)
                        if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def forms_and_grads(op, floats, weights, impls=("reference", "xla")):
    """Runs ``op(floats, impl) -> (out, state)`` for each impl (the reference first) under one
    jit.

    Returns {impl: (grads, (out, state))}, the gradients of sum(out * weights) + sum(state²)
    with respect to every entry of the dict ``floats``.
    """
    @jax.jit
    def run(floats):
        def loss(floats, impl):
            out, state = op(floats, impl)
            return jnp.sum(out * weights) + jnp.sum(state ** 2), (out, state)
        return {impl: jax.grad(loss, has_aux=True)(floats, impl)
                for impl in impls}

    return run(floats)


def assert_forms_agree(results, tol):
    """The values and every gradient of each form in :func:`forms_and_grads`' results match
    the first form's (the reference)."""
    (g_ref, v_ref), *others = results.values()
    for impl, (g_fast, v_fast) in zip(list(results)[1:], others):
        assert rel_err(v_fast, v_ref) < tol, impl
        for key in g_ref:
            assert rel_err(g_fast[key], g_ref[key]) < tol, (impl, key)


def normal(seed: int, shape: tuple[int, ...], dtype=jnp.float64) -> jax.Array:
    """Standard normal test input from NumPy's generator: fresh per seed, and quick (eager
    ``jax.random`` compiles a sampler per shape, seconds per test on CPU)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def loop_matches(tokens, segment_ids, orders):
    """Entry (b, n - 1, q, j): for every k < n, position q - k and position j - 1 - k exist,
    lie in the documents of q and of j, and hold the same token."""
    batch, length = tokens.shape
    out = np.zeros((batch, orders, length, length), bool)
    for b, n, q, j in np.ndindex(batch, orders, length, length):
        out[b, n, q, j] = all(
            q - k >= 0 and j - 1 - k >= 0 and segment_ids[b, q - k] == segment_ids[b, q]
            and segment_ids[b, j - 1 - k] == segment_ids[b, j]
            and tokens[b, q - k] == tokens[b, j - 1 - k] for k in range(n + 1))
    return out
