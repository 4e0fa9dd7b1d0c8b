"""Feed-forward blocks."""

from __future__ import annotations

import jax
from flax import nnx


class GatedMLP(nnx.Module):
    """SwiGLU feed-forward ("GLU Variants Improve Transformer").

    x: [..., d_model] -> [..., d_model]; out = W_o (silu(W_g x) * W_u x).
    """

    def __init__(self, d_model: int, d_ff: int, *, rngs: nnx.Rngs):
        self.gate = nnx.Linear(d_model, d_ff, use_bias=False, rngs=rngs)
        self.up = nnx.Linear(d_model, d_ff, use_bias=False, rngs=rngs)
        self.down = nnx.Linear(d_ff, d_model, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(nnx.silu(self.gate(x)) * self.up(x))
