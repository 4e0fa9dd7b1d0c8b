"""Shared test helpers."""

import jax
import jax.numpy as jnp
import numpy as np


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| over every leaf of two pytrees (||a - b|| where b is all zeros, e.g.
    the gradient of an input an op ignores)."""
    num = sum(float(jnp.sum((x - y).astype(jnp.float64) ** 2))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    den = sum(float(jnp.sum(y.astype(jnp.float64) ** 2)) for y in jax.tree.leaves(b))
    return float(np.sqrt(num / den)) if den else float(np.sqrt(num))


def to_float64(tree):
    """Casts the float leaves of a pytree (e.g. an NNX module) to float64."""
    return jax.tree.map(lambda x: x.astype(jnp.float64)
                        if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
