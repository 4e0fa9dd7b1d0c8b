"""A sequence model over real vectors, for in-context regression ("What Can Transformers Learn
In-Context? A Case Study of Simple Function Classes")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models.config import ModelConfig
from jaxlm.models.lm import Block, add_positions


class SequenceRegressor(nnx.Module):
    """Linear read-in -> the blocks of ``config.pattern`` -> RMSNorm -> linear read-out.

    ``__call__``: inputs [batch, length, input_dim] float -> predictions [batch, length]
    (float32), one scalar per position. ``config.vocab_size`` and ``tie_embeddings`` are unused.
    """

    def __init__(self, config: ModelConfig, input_dim: int, *, rngs: nnx.Rngs):
        if input_dim < 1:
            raise ValueError(f"SequenceRegressor: input_dim must be >= 1, got {input_dim}")
        self.config = config
        self.input_dim = input_dim
        self.read_in = nnx.Linear(input_dim, config.d_model, rngs=rngs)
        self.positions = (nnx.Embed(config.max_length, config.d_model, rngs=rngs)
                          if config.learned_positions else None)
        self.blocks = nnx.List([Block(config, name, rngs=rngs)
                                for name in config.layer_mixers()])
        self.final_norm = nnx.RMSNorm(config.d_model, epsilon=config.norm_eps, rngs=rngs)
        self.read_out = nnx.Linear(config.d_model, 1, rngs=rngs)

    def __call__(self, inputs: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        if inputs.ndim != 3 or inputs.shape[-1] != self.input_dim:
            raise ValueError(f"SequenceRegressor: inputs must have shape [batch, length, "
                             f"{self.input_dim}], got {tuple(inputs.shape)}")
        h = add_positions(self.read_in(inputs), self.positions, "SequenceRegressor")
        for block in self.blocks:
            h = block(h, segment_ids=segment_ids)
        return self.read_out(self.final_norm(h))[..., 0].astype(jnp.float32)
