"""Autoregressive sampling: the prompt is read by ``prefill`` (each mixer's parallel form where
it has one), new tokens come from the recurrent ``step`` path (O(1) state per token for
recurrent mixers, a KV cache for attention).

Generation always runs the model in evaluation mode (no dropout, MrT5's hard deletion,
lexinvariant models' fixed tables), on a view of the model: a model in training mode stays in
training mode (see :func:`eval_view`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.models.lm import DecoderLM

if TYPE_CHECKING:
    from jaxlm.data.subword import Subwords


def eval_view(model: nnx.Module) -> nnx.Module:
    """``model`` in evaluation mode (``model.eval()``: dropout off, every ``deterministic``
    attribute True) as a new module over the same arrays; ``model`` itself keeps its mode.
    Works inside ``jax.jit`` (nnx.split / nnx.merge)."""
    graphdef, state = nnx.split(model)
    view = nnx.merge(graphdef, state)
    view.eval()
    return view


def generate(model: DecoderLM, prompt: jax.Array, *, max_new_tokens: int,
             key: jax.Array | None = None, temperature: float = 0.0) -> jax.Array:
    """Continues ``prompt`` by ``max_new_tokens`` tokens.

    prompt: [batch, prompt_length] int (any array-like). ``temperature=0`` is greedy (argmax);
    otherwise tokens are sampled from softmax(logits / temperature) with ``key``. Returns
    [batch, prompt_length + max_new_tokens] (the prompt, then the new tokens). Jit-compatible.
    The model runs in evaluation mode (:func:`eval_view`), also when it is in training mode;
    its mode is left as it was.
    """
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"generate: prompt must have shape [batch, prompt_length >= 1], "
                         f"got {tuple(prompt.shape)}")
    if not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"generate: prompt must hold integer token ids, got dtype "
                         f"{prompt.dtype}")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
    if temperature > 0 and key is None:
        raise ValueError("generate: a key is required when temperature > 0")
    key = jax.random.key(0) if key is None else key
    model = eval_view(model)
    prompt_length = prompt.shape[1]
    logits, state = model.prefill(prompt, max_length=prompt_length + max_new_tokens)

    def pick(logits, step_key):
        if temperature == 0:
            return jnp.argmax(logits, axis=-1).astype(prompt.dtype)
        return jax.random.categorical(step_key, logits / temperature).astype(prompt.dtype)

    keys = jax.random.split(key, max_new_tokens)
    first = pick(logits[:, -1], keys[0])

    def decode(carry, step_key):
        state, token = carry
        logits, state = model.step(token, state)
        new = pick(logits, step_key)
        return (state, new), new

    _, rest = jax.lax.scan(decode, (state, first), keys[1:])  # [max_new_tokens - 1, batch]
    return jnp.concatenate([prompt, first[:, None], rest.T], axis=1)


def generate_text(model, prompt: str, *, max_new_bytes: int, key: jax.Array | None = None,
                  temperature: float = 0.0, subwords: Subwords | None = None) -> str:
    """Continues a text prompt and returns the prompt and its continuation as text (invalid
    UTF-8 becomes U+FFFD).

    Byte-level models (vocab = ``jaxlm.data.BYTE_VOCAB``): token models (``DecoderLM``,
    ``LexinvariantLM``) generate byte by byte with ``generate``; word-level models (``WordLM``)
    word by word with ``generate_words``, stopping after the word that reaches
    ``max_new_bytes``. Subword models (a ``DecoderLM`` trained with ``data.text.subword_vocab``)
    take their tokenizer as ``subwords`` (a ``jaxlm.data.subword.Subwords``, e.g.
    ``jaxlm.data.text.subwords(path, max_bytes, vocab)``, which relearns the training run's
    merges deterministically); they generate up to ``max_new_bytes`` pieces and the continuation
    is cut at ``max_new_bytes`` bytes. The prompt is read after a BOS, as in training. The model
    runs in evaluation mode; its own mode is left as it was."""
    from jaxlm.data.text import BOS, decode, encode
    from jaxlm.models.words import WordLM, generate_words

    if max_new_bytes < 1:
        raise ValueError(f"generate_text: max_new_bytes must be >= 1, got {max_new_bytes}")
    bos = jnp.asarray([BOS], jnp.int32)
    if subwords is not None:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if isinstance(model, WordLM) or vocab != subwords.vocab_size:
            raise ValueError(f"generate_text: subwords has {subwords.vocab_size} ids but the model "
                             f"({type(model).__name__}) has vocab_size={vocab}; expected a "
                             f"token model trained on this tokenizer")
        tokens = jnp.concatenate([bos, jnp.asarray(subwords.encode(prompt.encode("utf-8")))])
        out = generate(model, tokens[None], max_new_tokens=max_new_bytes, key=key,
                       temperature=temperature)
        continuation = subwords.decode(out[0, len(tokens):])[:max_new_bytes]
        return prompt + continuation.decode("utf-8", errors="replace")
    tokens = jnp.concatenate([bos, jnp.asarray(encode(prompt))])
    if isinstance(model, WordLM):
        out = generate_words(model, tokens, max_new_words=max_new_bytes,
                             max_new_bytes=max_new_bytes, key=key, temperature=temperature)
        return decode(out[:len(tokens) + max_new_bytes])
    out = generate(model, tokens[None], max_new_tokens=max_new_bytes, key=key,
                   temperature=temperature)
    return decode(out[0])
