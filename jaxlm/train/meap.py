"""MEAP ("Mask-Enhanced Autoregressive Prediction: Pay Less Attention to Learn More"): replace a
small random fraction of the input tokens by a mask token and still train plain next-token
prediction on the unchanged targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mask_inputs(key: jax.Array, inputs: jax.Array, rate: float, mask_token: int) -> jax.Array:
    """inputs [batch, length] int -> the same with each token independently replaced by
    ``mask_token`` with probability ``rate`` (a Bernoulli draw from ``key``). Raises ValueError
    for a rate outside [0, 1) or float inputs (continuous tasks have no tokens to mask)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"mask_inputs: rate must be in [0, 1), got {rate!r}")
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
        raise ValueError(f"mask_inputs: inputs must be token ids (integers), got dtype "
                         f"{inputs.dtype}")
    if rate == 0.0:
        return inputs
    masked = jax.random.bernoulli(key, rate, inputs.shape)
    return jnp.where(masked, jnp.asarray(mask_token, inputs.dtype), inputs)
