"""A decoder-only byte LM with MrT5's delete gate ("MrT5: Dynamic Token Merging for Efficient
Byte-level Language Models", Kallini et al.).

After ``deletion.gate_layer`` blocks a gate scores every token, G = -30 sigmoid(w . norm(h) + b)
in (-30, 0). The blocks after it are attention blocks whose scores get G of each key added
(soft deletion, in training: a deleted token still passes gradients to the gate) or lose the
keys with G < -15 (hard deletion, in evaluation and generation). A token always reads its own
key, so every position still predicts its next byte; what deletion shortens is the sequence the
later layers attend over, and in generation their KV cache, which stores only kept tokens.

MrT5 deletes inside a T5 encoder; this is the decoder-only variant. The regulariser is
``alpha * mean(G)`` (minimising it deletes more); like the paper, a proportional controller
sets ``alpha = gain * (target_rate - measured rate)`` from each batch's deletion rate, so
``alpha`` turns negative (favouring keeping) when too much is deleted.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models.config import ModelConfig
from jaxlm.models.lm import Block, step_blocks
from jaxlm.ops import attention_mask, masked_attention

GATE_SCALE = -30.0  # G in (GATE_SCALE, 0)
HARD_THRESHOLD = GATE_SCALE / 2  # hard deletion: G below this
DELETED = -1e9  # the score bias of a hard-deleted key


class DeleteGate(nnx.Module):
    """h [batch, length, d_model] -> G [batch, length] in (-30, 0); starts near 0 (keep)."""

    def __init__(self, d_model: int, *, eps: float, rngs: nnx.Rngs):
        self.norm = nnx.RMSNorm(d_model, epsilon=eps, rngs=rngs)
        self.proj = nnx.Linear(d_model, 1, rngs=rngs,
                               bias_init=nnx.initializers.constant(-4.0))

    def __call__(self, h: jax.Array) -> jax.Array:
        return GATE_SCALE * jax.nn.sigmoid(self.proj(self.norm(h))[..., 0].astype(jnp.float32))


def key_bias(gate: jax.Array, *, hard: bool) -> jax.Array:
    """gate [batch, length] -> score bias [batch, length (queries), length (keys)]: the key's
    G (soft) or DELETED for keys below the threshold (hard); 0 on the diagonal (a token always
    reads itself)."""
    bias = jnp.where(gate < HARD_THRESHOLD, DELETED, 0.0) if hard else gate
    length = gate.shape[1]
    return jnp.where(jnp.eye(length, dtype=bool), 0.0, bias[:, None, :])


class MrT5LM(nnx.Module):
    """Token embedding -> blocks -> delete gate -> attention blocks biased by the gate -> logits.

    ``__call__``: tokens [batch, length] -> {"logits" [batch, length, vocab], "aux_loss",
    "metrics": deletion_rate, reduction (length / kept tokens), deletion_weight}.
    ``prefill`` / ``step``: generation with hard deletion; the later layers' caches hold only
    the kept tokens (``state["kept"]`` counts them per row).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.options = config.deletion
        names = config.layer_mixers()
        cut = self.options.gate_layer
        self.embed = nnx.Embed(config.vocab_size, config.d_model, rngs=rngs)
        self.early = nnx.List([Block(config, n, rngs=rngs) for n in names[:cut]])
        self.gate = DeleteGate(config.d_model, eps=config.norm_eps, rngs=rngs)
        self.late = nnx.List([Block(config, n, rngs=rngs) for n in names[cut:]])
        self.final_norm = nnx.RMSNorm(config.d_model, epsilon=config.norm_eps, rngs=rngs)
        self.deterministic = True  # False after model.train(): soft deletion

    def _logits(self, h: jax.Array) -> jax.Array:
        return self.embed.attend(self.final_norm(h)).astype(jnp.float32)

    def __call__(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None) -> dict:
        if tokens.ndim != 2:
            raise ValueError(f"MrT5LM: tokens must have shape [batch, length], "
                             f"got {tuple(tokens.shape)}")
        h = self.embed(tokens)
        for block in self.early:
            h = block(h, segment_ids=segment_ids)
        gate = self.gate(h)
        bias = key_bias(gate, hard=self.deterministic)
        for block in self.late:
            h = block(h, segment_ids=segment_ids, bias=bias)
        rate = jnp.mean(gate < HARD_THRESHOLD)
        alpha = jax.lax.stop_gradient(self.options.gain * (self.options.target_rate - rate))
        metrics = {"deletion_rate": rate, "reduction": 1.0 / jnp.maximum(1.0 - rate, 1e-6),
                   "deletion_weight": alpha}
        return {"logits": self._logits(h), "aux_loss": alpha * jnp.mean(gate),
                "metrics": metrics}

    def init_state(self, batch_size: int, *, max_length: int,
                   dtype: Any = jnp.float32) -> dict[str, Any]:
        early = [block.mixer.init_state(batch_size, dtype, max_length=max_length)
                 for block in self.early]
        late = []
        for block in self.late:
            attn = block.mixer
            shape = (batch_size, max_length, attn.n_kv_heads, attn.head_dim)
            late.append({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)})
        return {"pos": jnp.zeros((), jnp.int32), "kept": jnp.zeros((batch_size,), jnp.int32),
                "early": early, "late": late}

    def _attend_kept(self, block: Block, h: jax.Array, cache: dict, kept: jax.Array,
                     keep: jax.Array, pos: jax.Array) -> tuple[jax.Array, dict]:
        """One late block for one token: reads the cached kept tokens and itself, then caches
        itself if kept."""
        attn = block.mixer
        batch = h.shape[0]
        q, k, v = attn._qkv(block.mixer_norm(h)[:, None], jnp.broadcast_to(pos, (batch, 1)))
        slots = cache["k"].shape[1]
        keys = jnp.concatenate([cache["k"], k.astype(cache["k"].dtype)], axis=1)
        values = jnp.concatenate([cache["v"], v.astype(cache["v"].dtype)], axis=1)
        mask = jnp.arange(slots + 1)[None, :] < kept[:, None]
        mask = mask.at[:, slots].set(True)[:, None, :]
        out = masked_attention(q, keys, values, mask, attn.head_dim ** -0.5)
        write = (jnp.arange(slots)[None, :] == kept[:, None]) & keep[:, None]
        write = write[..., None, None]
        cache = {"k": jnp.where(write, k.astype(cache["k"].dtype), cache["k"]),
                 "v": jnp.where(write, v.astype(cache["v"].dtype), cache["v"])}
        return block._mlp(h + attn.o_proj(out.reshape(batch, -1))), cache

    def step(self, tokens: jax.Array, state: dict[str, Any]) -> tuple[jax.Array, dict[str, Any]]:
        """tokens: [batch] -> (logits [batch, vocab], new state); hard deletion."""
        h, early = step_blocks(self.early, self.embed(tokens), state["early"])
        keep = self.gate(h) >= HARD_THRESHOLD
        late = []
        for block, cache in zip(self.late, state["late"]):
            h, cache = self._attend_kept(block, h, cache, state["kept"], keep, state["pos"])
            late.append(cache)
        return self._logits(h), {"pos": state["pos"] + 1, "kept": state["kept"] + keep,
                                 "early": early, "late": late}

    def prefill(self, tokens: jax.Array, *, max_length: int) -> tuple[jax.Array, dict[str, Any]]:
        """Reads a prompt [batch, length] token by token (a scan of ``step``)."""
        state = self.init_state(tokens.shape[0], max_length=max_length)

        def body(state, token):
            logits, state = self.step(token, state)
            return state, logits

        state, logits = jax.lax.scan(body, state, tokens.T)
        return jnp.swapaxes(logits, 0, 1), state
