"""Rotary position embedding ("RoFormer: Enhanced Transformer with Rotary Position Embedding"),
with the frequency scalings of position interpolation ("Extending Context Window of Large
Language Models via Positional Interpolation") and Llama 3.1."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.ops.checks import accepts_numpy

ROPE_SCALINGS = ("default", "linear", "llama3")


def rope_frequencies(head_dim: int, *, theta: float = 10_000.0, scaling: str = "default",
                     factor: float = 1.0, low_freq_factor: float = 1.0,
                     high_freq_factor: float = 4.0, original_max_length: int = 8192
                     ) -> np.ndarray:
    """The rotation frequencies [head_dim // 2] (radians per position, float64 NumPy).

    ``scaling`` (Hugging Face's ``rope_type``): ``"default"`` theta^(-2i / head_dim);
    ``"linear"`` those divided by ``factor`` (position interpolation); ``"llama3"`` Llama 3.1's:
    wavelengths longer than ``original_max_length / low_freq_factor`` divided by ``factor``,
    shorter than ``original_max_length / high_freq_factor`` kept, and a smooth interpolation
    between. Raises ValueError for any other ``scaling``."""
    if scaling not in ROPE_SCALINGS:
        raise ValueError(f"rope scaling={scaling!r} is not supported; expected one of "
                         f"{ROPE_SCALINGS}")
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling == "linear":
        return freqs / factor
    if scaling == "llama3":
        wavelength = 2 * math.pi / freqs
        smooth = ((original_max_length / wavelength - low_freq_factor)
                  / (high_freq_factor - low_freq_factor))
        scaled = np.where(wavelength > original_max_length / low_freq_factor,
                          freqs / factor, freqs)
        medium = ((wavelength >= original_max_length / high_freq_factor)
                  & (wavelength <= original_max_length / low_freq_factor))
        return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return freqs


@accepts_numpy
def apply_rope(x: jax.Array, positions: jax.Array, *, theta: float = 10_000.0,
               frequencies: jax.Array | np.ndarray | None = None) -> jax.Array:
    """Rotates channel pairs (i, i + head_dim/2) of ``x`` by position-dependent angles.

    x: [batch, length, heads, head_dim] with even head_dim; positions: [batch, length] integers;
    ``frequencies`` [head_dim // 2] (radians per position; default theta^(-2i / head_dim), see
    :func:`rope_frequencies` for scaled ones). Returns an array of x's shape and dtype;
    computed in at least float32.
    """
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"apply_rope: head_dim must be even, got x.shape={tuple(x.shape)}")
    acc = jnp.promote_types(x.dtype, jnp.float32)
    half = head_dim // 2
    if frequencies is None:
        freqs = theta ** (-jnp.arange(half, dtype=acc) * 2 / head_dim)
    else:
        if np.shape(frequencies) != (half,):
            raise ValueError(f"apply_rope: frequencies must have shape [head_dim // 2] = "
                             f"[{half}], got {tuple(np.shape(frequencies))}")
        freqs = jnp.asarray(frequencies, acc)
    angles = positions.astype(acc)[..., None, None] * freqs  # [batch, length, 1, half]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = jnp.split(x.astype(acc), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
