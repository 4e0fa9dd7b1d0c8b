"""Word-level language models over bytes: a byte encoder pools each word into one vector, a
backbone of any mixer pattern runs over words, a byte decoder spells the next word.

- ``kind="hierarchical"`` ("Hierarchical Autoregressive Transformers: Combining Byte- and
  Word-Level Processing for Robust, Adaptable Language Models", Neitemeier et al.): the word
  vector is the causal byte encoder's output at the word's last byte.
- ``kind="word_pooled"`` ("Learn Your Tokens: Word-Pooled Tokenization for Language Modeling",
  Thawani et al.): ``words.pooled_tokens`` learned CLS tokens follow each word's bytes in the
  encoder; their outputs, concatenated, are the word vector.

In both the decoder is autoregressive inside a word and runs on all words in parallel: the
backbone's output for the words so far, then the word's bytes, predicting each next byte and
finally ``EOW``.

Words follow ``jaxlm.ops.words`` (a run of non-whitespace bytes and its trailing whitespace, at
most ``max_word_len`` bytes). The model reads rows of bytes, [batch, length], like a byte LM,
and returns ``{"logits": [batch, words, max_word_len + 1, vocab], "targets": same without
vocab}``: for every word its bytes then ``EOW``. The loss of a row is thus the code length of
its text, word by word, and bits per byte compare with any byte LM. Targets that would read
across a boundary are ``IGNORE``: the first word of a row (no context), the first word of a
document (its context is another document), and the ``EOW`` of a row's last word (the word may
go on in the next row).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.data.mqar import IGNORE
from jaxlm.data.text import EOW, PAD
from jaxlm.models.config import ModelConfig
from jaxlm.models.generate import eval_view
from jaxlm.models.lm import Block
from jaxlm.ops.words import WordLayout, word_layout


def max_words_for(config: ModelConfig, length: int) -> int:
    """Word slots per row: ``words.max_words``, or ``length // 4 + 2`` when that is 0."""
    return config.words.max_words or length // 4 + 2


def word_targets(layout: WordLayout) -> jax.Array:
    """[batch, words, max_word_len + 1]: each word's bytes, then EOW, then IGNORE; IGNORE for
    whole words without context (see the module docstring)."""
    batch, num_words, width = layout.words.shape
    position = jnp.arange(width + 1)
    lengths = layout.lengths[..., None]
    padded = jnp.pad(layout.words, [(0, 0), (0, 0), (0, 1)], constant_values=PAD)
    targets = jnp.where(position < lengths, padded, jnp.where(position == lengths, EOW, IGNORE))
    index = jnp.arange(num_words)
    same_document = jnp.pad(layout.segment_ids[:, 1:] == layout.segment_ids[:, :-1],
                            [(0, 0), (1, 0)])  # word 0: False
    has_context = same_document & (layout.lengths > 0)
    targets = jnp.where(has_context[..., None], targets, IGNORE)
    last = layout.word[:, -1:]  # the row's last word may continue in the next row
    open_end = (index == last)[..., None] & (position == lengths)
    return jnp.where(open_end, IGNORE, targets)


class WordLM(nnx.Module):
    """Byte encoder -> word backbone -> byte decoder (see the module docstring).

    ``__call__``: tokens [batch, length] byte ids -> {"logits", "targets", "metrics"}, where
    metrics holds ``reduction`` (bytes per word: the backbone's sequence-length reduction)
    and ``dropped_bytes`` (bytes in words beyond ``max_words``: not modelled).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        w = config.words
        self.cls = (nnx.Param(0.02 * jax.random.normal(rngs.params(),
                                                      (w.pooled_tokens, w.d_local)))
                    if config.kind == "word_pooled" else None)
        self.byte_embed = nnx.Embed(config.vocab_size, w.d_local, rngs=rngs)
        self.byte_positions = nnx.Embed(w.max_word_len + 1, w.d_local, rngs=rngs)
        encoder = config.local_config(w.encoder_layers)
        self.encoder = nnx.List([Block(encoder, n, rngs=rngs) for n in encoder.layer_mixers()])
        self.encoder_norm = nnx.RMSNorm(w.d_local, epsilon=config.norm_eps, rngs=rngs)
        pooled = w.d_local * (w.pooled_tokens if self.cls is not None else 1)
        self.to_backbone = nnx.Linear(pooled, config.d_model, rngs=rngs)
        self.blocks = nnx.List([Block(config, n, rngs=rngs) for n in config.layer_mixers()])
        self.backbone_norm = nnx.RMSNorm(config.d_model, epsilon=config.norm_eps, rngs=rngs)
        self.from_backbone = nnx.Linear(config.d_model, w.d_local, rngs=rngs)
        self.start = nnx.Param(jnp.zeros((w.d_local,)))  # the context of a row's first word
        decoder = config.local_config(w.decoder_layers)
        self.decoder = nnx.List([Block(decoder, n, rngs=rngs) for n in decoder.layer_mixers()])
        self.final_norm = nnx.RMSNorm(w.d_local, epsilon=config.norm_eps, rngs=rngs)
        self.head = nnx.Linear(w.d_local, config.vocab_size, use_bias=False, rngs=rngs)

    def layout(self, tokens: jax.Array, segment_ids: jax.Array | None) -> WordLayout:
        return word_layout(tokens, segment_ids, max_word_len=self.config.words.max_word_len,
                           max_words=max_words_for(self.config, tokens.shape[1]), pad=PAD)

    def encode_words(self, words: jax.Array, lengths: jax.Array) -> jax.Array:
        """words [batch, n, max_word_len], lengths [batch, n] -> word vectors [batch, n,
        d_model]: the causal byte encoder's output at each word's last byte (hierarchical) or
        at the CLS tokens after its bytes (word-pooled); 0 for empty word slots."""
        batch, n, width = words.shape
        x = self.byte_embed(words) + self.byte_positions(jnp.arange(width))
        if self.cls is not None:
            cls = jnp.broadcast_to(self.cls[...], (batch, n) + self.cls.shape)
            x = jnp.concatenate([x, cls.astype(x.dtype)], axis=2)
        x = x.reshape(batch * n, x.shape[2], -1)
        for block in self.encoder:
            x = block(x)
        x = self.encoder_norm(x).reshape(batch, n, x.shape[1], -1)
        if self.cls is not None:
            pooled = x[:, :, width:].reshape(batch, n, -1)
        else:
            last = jnp.clip(lengths - 1, 0, width - 1)[..., None, None]
            pooled = jnp.take_along_axis(x, last, axis=2)[:, :, 0]
        return self.to_backbone(jnp.where(lengths[..., None] > 0, pooled, 0.0))

    def backbone(self, vectors: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        """Word vectors [batch, n, d_model] -> the context of each next word [batch, n,
        d_local] (causal over words)."""
        h = vectors
        for block in self.blocks:
            h = block(h, segment_ids=segment_ids)
        return self.from_backbone(self.backbone_norm(h))

    def contexts(self, words: jax.Array, lengths: jax.Array,
                 segment_ids: jax.Array | None) -> jax.Array:
        """words [batch, n, max_word_len], lengths [batch, n] -> what the decoder of each word
        reads, [batch, n, d_local]: the backbone's output after the words before it (the
        learned ``start`` for the first)."""
        context = self.backbone(self.encode_words(words, lengths), segment_ids)
        start = jnp.broadcast_to(self.start[...], context[:, :1].shape)
        return jnp.concatenate([start, context[:, :-1]], axis=1)

    def decode(self, context: jax.Array, words: jax.Array) -> jax.Array:
        """context [batch, n, d_local] (for each word, the backbone output of the words before
        it), words [batch, n, max_word_len] -> logits [batch, n, max_word_len + 1, vocab]."""
        batch, n, width = words.shape
        x = jnp.concatenate([context[:, :, None], self.byte_embed(words)], axis=2)
        x = (x + self.byte_positions(jnp.arange(width + 1))).reshape(batch * n, width + 1, -1)
        for block in self.decoder:
            x = block(x)
        x = x.reshape(batch, n, width + 1, -1)
        return self.head(self.final_norm(x)).astype(jnp.float32)

    def __call__(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None) -> dict:
        if tokens.ndim != 2:
            raise ValueError(f"WordLM: tokens must have shape [batch, length], "
                             f"got {tuple(tokens.shape)}")
        layout = self.layout(tokens, segment_ids)
        context = self.contexts(layout.words, layout.lengths, layout.segment_ids)
        used = layout.lengths > 0
        metrics = {"reduction": layout.lengths.sum() / jnp.maximum(used.sum(), 1),
                   "dropped_bytes": (layout.word >= layout.words.shape[1]).sum()}
        return {"logits": self.decode(context, layout.words), "targets": word_targets(layout),
                "metrics": metrics}


def generate_words(model: WordLM, prompt: jax.Array, *, max_new_words: int,
                   max_new_bytes: int | None = None, key: jax.Array | None = None,
                   temperature: float = 0.0) -> jax.Array:
    """Continues one prompt word by word: prompt [length] byte ids -> the prompt's bytes and
    then the new words' bytes, [length + new bytes] int32.

    The backbone reads the words so far (once per word); the decoder spells the next word byte
    by byte, until ``EOW`` or ``max_word_len`` bytes. The prompt's last word is continued first
    (it may not be finished). It stops after ``max_new_words`` words, after the word that
    reaches ``max_new_bytes`` new bytes, or at an empty word. ``temperature=0`` is greedy.
    The model runs in evaluation mode (``jaxlm.models.generate.eval_view``); its own mode is
    left as it was.
    """
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt.ndim != 1 or prompt.shape[0] < 1:
        raise ValueError(f"generate_words: prompt must have shape [length >= 1], "
                         f"got {tuple(prompt.shape)}")
    if max_new_words < 1:
        raise ValueError(f"generate_words: max_new_words must be >= 1, got {max_new_words}")
    key = jax.random.key(0) if key is None else key
    width = model.config.words.max_word_len
    layout = jax.device_get(word_layout(prompt[None], None, max_word_len=width,
                                        max_words=prompt.shape[0], pad=PAD))
    count = int(layout.word[0, -1]) + 1
    capacity = count + max_new_words
    table = np.full((1, capacity, width), PAD, np.int32)  # the words so far
    lengths = np.zeros((1, capacity), np.int32)
    table[0, :count], lengths[0, :count] = layout.words[0, :count], layout.lengths[0, :count]
    index = count - 1  # the word being spelled: first the prompt's last one
    word = [int(b) for b in table[0, index, :lengths[0, index]]]
    graphdef, state = nnx.split(eval_view(model))

    @jax.jit
    def context_of(state, table, lengths, index):  # the decoder input of word ``index``
        return nnx.merge(graphdef, state).contexts(table, lengths, None)[:, index]

    @jax.jit
    def spell(state, context, prefix):  # [width + 1, vocab]: the next byte at each position
        return nnx.merge(graphdef, state).decode(context[:, None], prefix[None, None])[0, 0]

    def pick(logits, step_key):
        if temperature == 0:
            return jnp.argmax(logits, axis=-1)
        return jax.random.categorical(step_key, logits / temperature)

    new_bytes: list[int] = []
    for _ in range(max_new_words):
        table[0, index], lengths[0, index] = PAD, 0  # the decoder reads only earlier words
        context = context_of(state, table, lengths, index)
        key, word_key = jax.random.split(key)
        while len(word) < width:
            prefix = np.full((width,), PAD, np.int32)
            prefix[:len(word)] = word
            logits = spell(state, context, prefix)
            token = int(pick(logits[len(word)], jax.random.fold_in(word_key, len(word))))
            if token == EOW or token >= 256:
                break
            word.append(token)
            new_bytes.append(token)
        if not word:
            break
        table[0, index, :len(word)], lengths[0, index] = word, len(word)
        index, word = index + 1, []
        if max_new_bytes is not None and len(new_bytes) >= max_new_bytes:
            break
    return jnp.concatenate([prompt, jnp.asarray(new_bytes, jnp.int32)])
