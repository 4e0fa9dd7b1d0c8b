"""A language model without fixed token embeddings, from "Lexinvariant Language Models"
(Huang, Zelikman, Chen, Wu, Valiant, Liang).

Every row draws its own embedding table E [vocab, d_model] with entries N(0, 1/d_model): a
token id means the same vector everywhere in the row and an unrelated one in the next row. The
output head is the same table (logits = h E^T), so the model can only predict a token through
its earlier occurrences in the context, and its distribution is invariant to any permutation of
the vocabulary. ``random_prob < 1`` is the paper's semi-lexinvariant regulariser: a learned
table is kept, and in training each row uses a random table with probability ``random_prob``
(evaluation and generation then use the learned table).

With ``table_dim`` wider than ``d_model`` the tables are that wide, and learned linear maps take
a row's vectors into the model and its output back to table space (which keeps the model
lexinvariant: the maps do not depend on token ids). Random vectors in d dimensions hold about d
of them apart, so a wide table lets a small model tell many in-context tokens apart.

The random tables come from ``table_seed`` and a draw counter (an ``nnx.Variable``, not a
parameter) that each training-mode call advances, so training sees fresh tables every step and
evaluation is deterministic.

``head="pointer"`` adds a pointer-sentinel head ("Pointer Sentinel Mixture Models",
``jaxlm.layers.PointerSentinel``): the next token is a mixture of copies of earlier tokens of
the document and the tied output layer. Copying depends on token ids only through equality, so
the model stays lexinvariant; it states in-context counts as probabilities, which the tied head
over random vectors can state only linearly in its logits (with uniform pointer weights it is
the in-context unigram model). ``ngram_orders`` adds hard-wired n-gram match features to the
pointer's scores ("In-Context Language Learning: Architectures and Algorithms").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.pointer import PointerSentinel
from jaxlm.models.config import ModelConfig
from jaxlm.models.lm import Block, add_positions, prefill_blocks, step_blocks


class TableDraws(nnx.Variable):
    """How many times training has drawn random embedding tables (a counter, not trained)."""


def random_tables(key: jax.Array, batch_size: int, vocab_size: int, dim: int) -> jax.Array:
    """One random embedding table per row: [batch, vocab, dim], entries N(0, 1/dim)."""
    keys = jax.random.split(key, batch_size)
    draw = lambda k: jax.random.normal(k, (vocab_size, dim)) / jnp.sqrt(dim)
    return jax.vmap(draw)(keys)


class LexinvariantLM(nnx.Module):
    """Blocks of ``config.pattern`` over per-row random token embeddings.

    ``__call__``: tokens [batch, length] -> logits [batch, length, vocab] (float32); ``tables``
    [batch, vocab, table_dim] overrides the drawn tables (tests use it to check invariance).
    ``prefill`` / ``step`` keep the row's table in the state, so generation stays consistent.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.options = config.lexinvariant
        self.table_dim = self.options.table_dim or config.d_model
        wide = self.table_dim != config.d_model
        self.read_in = (nnx.Linear(self.table_dim, config.d_model, use_bias=False, rngs=rngs)
                        if wide else None)
        self.read_out = (nnx.Linear(config.d_model, self.table_dim, use_bias=False, rngs=rngs)
                         if wide else None)
        self.learned = (nnx.Embed(config.vocab_size, self.table_dim, rngs=rngs)
                        if self.options.random_prob < 1 else None)
        self.positions = (nnx.Embed(config.max_length, config.d_model, rngs=rngs)
                          if config.learned_positions else None)
        self.blocks = nnx.List([Block(config, name, rngs=rngs)
                                for name in config.layer_mixers()])
        self.final_norm = nnx.RMSNorm(config.d_model, epsilon=config.norm_eps, rngs=rngs)
        self.pointer = (PointerSentinel(config.d_model, ngram_orders=self.options.ngram_orders,
                                        rngs=rngs)
                        if self.options.head == "pointer" else None)
        self.draws = TableDraws(jnp.zeros((), jnp.uint32))
        self.deterministic = True  # False after model.train(): fresh tables on every call

    def tables(self, batch_size: int) -> jax.Array:
        """The embedding table of each row of the next call: [batch, vocab, table_dim]."""
        key = jax.random.fold_in(jax.random.key(self.options.table_seed), self.draws[...])
        table_key, choice_key = jax.random.split(key)
        random = random_tables(table_key, batch_size, self.config.vocab_size, self.table_dim)
        if self.learned is None:
            return random
        learned = jnp.broadcast_to(self.learned.embedding[...], random.shape)
        if self.deterministic:
            return learned
        use_random = jax.random.bernoulli(choice_key, self.options.random_prob,
                                          (batch_size, 1, 1))
        return jnp.where(use_random, random, learned)

    def _advance(self) -> None:
        if not self.deterministic:
            self.draws[...] = self.draws[...] + 1

    def __call__(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None,
                 tables: jax.Array | None = None) -> jax.Array:
        tables = self._row_tables(tokens, tables)
        h, logits = self._logits(self._blocks(tokens, tables, segment_ids), tables)
        if self.pointer is None:
            return logits
        return self.pointer(h, logits, tokens, segment_ids=segment_ids)

    def hidden(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None,
               tables: jax.Array | None = None) -> jax.Array:
        """tokens [batch, length] -> the normalised final hidden states [batch, length,
        d_model] that the heads read (what the deciphering probe reads)."""
        tables = self._row_tables(tokens, tables)
        return self.final_norm(self._blocks(tokens, tables, segment_ids))

    def _row_tables(self, tokens: jax.Array, tables: jax.Array | None) -> jax.Array:
        """The given tables after checking shapes, or the next draw."""
        if tokens.ndim != 2:
            raise ValueError(f"LexinvariantLM: tokens must have shape [batch, length], "
                             f"got {tuple(tokens.shape)}")
        if tables is None:
            tables = self.tables(tokens.shape[0])
            self._advance()
        expected = (tokens.shape[0], self.config.vocab_size, self.table_dim)
        if tables.shape != expected:
            raise ValueError(f"LexinvariantLM: tables must have shape [batch, vocab, table_dim]"
                             f" = {expected}, got {tuple(tables.shape)}")
        return tables

    def _blocks(self, tokens: jax.Array, tables: jax.Array,
                segment_ids: jax.Array | None) -> jax.Array:
        h = self._inputs(tokens, tables)
        for block in self.blocks:
            h = block(h, segment_ids=segment_ids)
        return h

    def _inputs(self, tokens: jax.Array, tables: jax.Array) -> jax.Array:
        """tokens [batch, length] -> embeddings plus learned positions (when configured)."""
        return add_positions(self._embed(tokens, tables), self.positions, "LexinvariantLM")

    def _embed(self, tokens: jax.Array, tables: jax.Array) -> jax.Array:
        """tokens [batch, ...] -> their rows of each batch row's table, in model width."""
        flat = tokens.reshape(tokens.shape[0], -1)
        x = jnp.take_along_axis(tables, flat[..., None], axis=1)
        x = x.reshape(tokens.shape + (tables.shape[-1],))
        return x if self.read_in is None else self.read_in(x)

    def _logits(self, h: jax.Array, tables: jax.Array) -> tuple[jax.Array, jax.Array]:
        """h [batch, ..., d_model] -> (normalised h, the tied head's logits [batch, ..., vocab])."""
        h = self.final_norm(h)
        out = h if self.read_out is None else self.read_out(h)
        return h, jnp.einsum("b...d,bvd->b...v", out, tables.astype(out.dtype)).astype(jnp.float32)

    def init_state(self, batch_size: int, *, max_length: int,
                   dtype: Any = jnp.float32) -> dict[str, Any]:
        layers = [block.mixer.init_state(batch_size, dtype, max_length=max_length)
                  for block in self.blocks]
        state = {"pos": jnp.zeros((), jnp.int32), "layers": layers,
                 "tables": self.tables(batch_size)}
        if self.pointer is not None:
            state["pointer"] = self.pointer.init_state(batch_size, max_length=max_length,
                                                       dtype=dtype)
        return state

    def prefill(self, tokens: jax.Array, *, max_length: int) -> tuple[jax.Array, dict[str, Any]]:
        tables = self.tables(tokens.shape[0])
        h, layers = prefill_blocks(self.blocks, self._inputs(tokens, tables),
                                   max_length=max_length)
        state = {"pos": jnp.asarray(tokens.shape[1], jnp.int32), "layers": layers,
                 "tables": tables}
        h, logits = self._logits(h, tables)
        if self.pointer is not None:
            logits, state["pointer"] = self.pointer.prefill(h, logits, tokens,
                                                            max_length=max_length)
        return logits, state

    def step(self, tokens: jax.Array, state: dict[str, Any]) -> tuple[jax.Array, dict[str, Any]]:
        """tokens: [batch] -> (logits [batch, vocab], new state)."""
        tables = state["tables"]
        h = self._embed(tokens, tables)
        if self.positions is not None:
            h = h + self.positions(state["pos"])
        h, layers = step_blocks(self.blocks, h, state["layers"])
        h, logits = self._logits(h, tables)
        new_state = {**state, "pos": state["pos"] + 1, "layers": layers}
        if self.pointer is not None:
            logits, new_state["pointer"] = self.pointer.step(h, logits, tokens,
                                                             state["pointer"], state["pos"])
        return logits, new_state
