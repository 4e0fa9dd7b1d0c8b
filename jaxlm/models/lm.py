"""Decoder-only language model over any registered mixer pattern."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers import GatedMLP, NgramHeads, build_mixer, prefill
from jaxlm.models.config import ModelConfig
from jaxlm.ops.landmark_attention import insert_landmarks, remove_landmarks


def residual_dropout(rate: float, rngs: nnx.Rngs) -> nnx.Dropout | None:
    """Dropout on a sublayer's output before it joins the residual stream ("Attention Is All
    You Need", section 5.4), or None for ``rate == 0``. It is off until ``model.train()`` and
    draws its masks from the ``dropout`` stream of ``rngs`` (or ``default``)."""
    if not rate:
        return None
    if "dropout" not in rngs and "default" not in rngs:
        raise ValueError(f"model.dropout={rate} needs a 'dropout' (or 'default') stream in "
                         f"rngs, e.g. nnx.Rngs(params=0, dropout=1); the rngs given have "
                         f"neither")
    return nnx.Dropout(rate, deterministic=True, rngs=rngs)


class Block(nnx.Module):
    """Pre-norm residual block: x + drop(mixer(norm(x))), then x + drop(mlp(norm(x))) when
    d_ff > 0; ``drop`` is ``config.dropout`` in training mode and the identity otherwise."""

    def __init__(self, config: ModelConfig, mixer_name: str, *, rngs: nnx.Rngs):
        d = config.d_model
        self.mixer_name = mixer_name
        self.dropout = residual_dropout(config.dropout, rngs)
        self.mixer_norm = nnx.RMSNorm(d, epsilon=config.norm_eps, rngs=rngs)
        self.mixer = build_mixer(mixer_name, d, config.mixer_config(mixer_name), rngs=rngs)
        if config.d_ff:
            self.mlp_norm = nnx.RMSNorm(d, epsilon=config.norm_eps, rngs=rngs)
            self.mlp = GatedMLP(d, config.d_ff, rngs=rngs)
        else:
            self.mlp_norm = self.mlp = None

    def _drop(self, y: jax.Array) -> jax.Array:
        return y if self.dropout is None else self.dropout(y)

    def _mlp(self, x):
        return x if self.mlp is None else x + self._drop(self.mlp(self.mlp_norm(x)))

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
                 **mixer_options: Any) -> jax.Array:
        """``mixer_options`` go to the mixer (e.g. ``bias=`` for attention)."""
        y = self.mixer(self.mixer_norm(x), segment_ids=segment_ids, **mixer_options)
        return self._mlp(x + self._drop(y))

    def step(self, x_t: jax.Array, state: Any) -> tuple[jax.Array, Any]:
        y, state = self.mixer.step(self.mixer_norm(x_t), state)
        return self._mlp(x_t + self._drop(y)), state

    def prefill(self, x: jax.Array, *, max_length: int) -> tuple[jax.Array, Any]:
        y, state = prefill(self.mixer, self.mixer_norm(x), max_length=max_length)
        return self._mlp(x + self._drop(y)), state


def prefill_blocks(blocks, h: jax.Array, *, max_length: int) -> tuple[jax.Array, list]:
    """Runs ``blocks`` over a prompt h [batch, length, d_model]: (output, each block's state)."""
    states = []
    for block in blocks:
        h, state = block.prefill(h, max_length=max_length)
        states.append(state)
    return h, states


def step_blocks(blocks, h: jax.Array, states: list) -> tuple[jax.Array, list]:
    """One token h [batch, d_model] through ``blocks``: (output, each block's new state)."""
    new_states = []
    for block, state in zip(blocks, states):
        h, state = block.step(h, state)
        new_states.append(state)
    return h, new_states


def add_positions(h: jax.Array, positions: nnx.Embed | None, owner: str) -> jax.Array:
    """h [batch, length, d_model] plus learned absolute positions (unchanged when None)."""
    if positions is None:
        return h
    length = h.shape[1]
    if length > positions.num_embeddings:
        raise ValueError(f"{owner}: length {length} exceeds model.max_length="
                         f"{positions.num_embeddings} of the learned positions")
    return h + positions(jnp.arange(length))[None]


class DecoderLM(nnx.Module):
    """Token embedding -> blocks -> RMSNorm -> logits.

    ``__call__``: tokens [batch, length] int -> logits [batch, length, vocab_size] (float32;
    float64 for float64 parameters).
    ``init_state`` / ``step``: the recurrent form used for generation; one token at a time,
    tokens [batch] -> logits [batch, vocab_size].
    A pattern with ``landmark_attention`` makes the model insert a learned landmark embedding
    after every ``landmark_attention.block_size`` tokens ("Landmark Attention"), before the
    first block, and drop those positions from its outputs; ``step`` feeds one in after every
    block it completes. Packed rows are then refused.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed = nnx.Embed(config.vocab_size, config.d_model, rngs=rngs)
        self.positions = (nnx.Embed(config.max_length, config.d_model, rngs=rngs)
                          if config.learned_positions else None)
        self.blocks = nnx.List([Block(config, name, rngs=rngs)
                                for name in config.layer_mixers()])
        self.ngram = (NgramHeads(config.d_model, config.ngram_heads, rngs=rngs)
                      if config.ngram_heads else None)
        self.final_norm = nnx.RMSNorm(config.d_model, epsilon=config.norm_eps, rngs=rngs)
        self.head = (None if config.tie_embeddings else
                     nnx.Linear(config.d_model, config.vocab_size, use_bias=False, rngs=rngs))
        self.landmark_block = (config.landmark_attention.block_size
                               if "landmark_attention" in config.layer_mixers() else None)
        self.landmark = (nnx.Param(nnx.initializers.normal(1.0)(rngs.params(), (config.d_model,)))
                         if self.landmark_block else None)

    def _landmarks(self, h: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
        """h [batch, length, d_model] with the landmark embedding after every block."""
        if segment_ids is not None:
            raise ValueError("DecoderLM: segment_ids (packed rows) are not supported with "
                             "landmark_attention in the pattern (landmarks are inserted per row)")
        return insert_landmarks(h, self.landmark_block, self.landmark[...].astype(h.dtype))

    def _logits(self, h: jax.Array) -> jax.Array:
        return self._head(self.final_norm(h))

    def _head(self, h: jax.Array) -> jax.Array:
        """Normalised hidden states [..., d_model] -> logits [..., vocab_size] (float32, or
        float64 for a float64 model)."""
        logits = self.embed.attend(h) if self.head is None else self.head(h)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))

    def _embed(self, tokens: jax.Array) -> jax.Array:
        """tokens [batch, length] -> token (+ learned position) embeddings."""
        if tokens.ndim != 2:
            raise ValueError(f"DecoderLM: tokens must have shape [batch, length], "
                             f"got {tuple(tokens.shape)}")
        return add_positions(self.embed(tokens), self.positions, "DecoderLM")

    def __call__(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None
                 ) -> jax.Array | dict[str, jax.Array]:
        """Logits; or {"logits", "aux_loss"} when mixers in training mode sow auxiliary losses
        (``sows_aux_loss``: LongVQ's commitment loss), which the training loss adds."""
        if not any(getattr(b.mixer, "sows_aux_loss", False) and not b.mixer.deterministic
                   for b in self.blocks):
            return self._head(self.hidden(tokens, segment_ids=segment_ids))
        h, sown = nnx.capture(DecoderLM.hidden, nnx.Intermediate)(self, tokens,
                                                                  segment_ids=segment_ids)
        logits, aux = self._head(h), jax.tree.leaves(sown)
        return {"logits": logits, "aux_loss": sum(aux)} if aux else logits

    def hidden(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        """tokens [batch, length] -> the normalised final hidden states [batch, length,
        d_model] that the output layer reads (what probes of the representation read)."""
        h = self._embed(tokens)
        if self.ngram is not None:
            h = self.ngram(h, tokens, segment_ids=segment_ids)
        if self.landmark is not None:
            h = self._landmarks(h, segment_ids)
        for block in self.blocks:
            h = block(h, segment_ids=segment_ids)
        if self.landmark is not None:
            h = remove_landmarks(h, self.landmark_block)
        return self.final_norm(h)

    def _cache_length(self, max_length: int) -> int:
        """Rows of the mixers' caches for ``max_length`` tokens (landmarks included)."""
        return max_length + (max_length // self.landmark_block if self.landmark_block else 0)

    def init_state(self, batch_size: int, *, max_length: int,
                   dtype: Any = jnp.float32) -> dict[str, Any]:
        """Recurrent state for ``step``: one state per layer and the next position (and the
        n-gram heads' cache)."""
        layers = [block.mixer.init_state(batch_size, dtype,
                                         max_length=self._cache_length(max_length))
                  for block in self.blocks]
        state = {"pos": jnp.zeros((), jnp.int32), "layers": layers}
        if self.ngram is not None:
            state["ngram"] = self.ngram.init_state(batch_size, max_length=max_length, dtype=dtype)
        return state

    def prefill(self, tokens: jax.Array, *, max_length: int) -> tuple[jax.Array, dict[str, Any]]:
        """Reads a prompt: tokens [batch, length] -> (logits [batch, length, vocab_size], the
        state after the prompt, ready for ``step``; room for ``max_length`` tokens in all)."""
        h, state = self._embed(tokens), {}
        if self.ngram is not None:
            h, state["ngram"] = self.ngram.prefill(h, tokens, max_length=max_length)
        if self.landmark is not None:
            h = self._landmarks(h)
        h, state["layers"] = prefill_blocks(self.blocks, h,
                                            max_length=self._cache_length(max_length))
        if self.landmark is not None:
            h = remove_landmarks(h, self.landmark_block)
        state["pos"] = jnp.asarray(tokens.shape[1], jnp.int32)
        return self._logits(h), state

    def step(self, tokens: jax.Array, state: dict[str, Any]) -> tuple[jax.Array, dict[str, Any]]:
        """tokens: [batch] int -> (logits [batch, vocab_size], new state)."""
        h = self.embed(tokens)
        if self.positions is not None:
            h = h + self.positions(state["pos"])
        new_state = dict(state)
        if self.ngram is not None:
            h, new_state["ngram"] = self.ngram.step(h, tokens, state["ngram"], state["pos"])
        h, new_state["layers"] = step_blocks(self.blocks, h, state["layers"])
        if self.landmark is not None:  # a block is complete: its landmark goes in
            landmark = jnp.broadcast_to(self.landmark[...].astype(h.dtype), h.shape)
            new_state["layers"] = jax.lax.cond(
                (state["pos"] + 1) % self.landmark_block == 0,
                lambda layers: step_blocks(self.blocks, landmark, layers)[1],
                lambda layers: layers, new_state["layers"])
        new_state["pos"] = state["pos"] + 1
        return self._logits(h), new_state


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
