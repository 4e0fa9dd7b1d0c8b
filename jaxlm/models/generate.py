"""Autoregressive sampling: the prompt is read by ``prefill`` (each mixer's parallel form where
it has one), new tokens come from the recurrent ``step`` path (O(1) state per token for
recurrent mixers, a KV cache for attention)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.models.lm import DecoderLM


def generate(model: DecoderLM, prompt: jax.Array, *, max_new_tokens: int,
             key: jax.Array | None = None, temperature: float = 0.0) -> jax.Array:
    """Continues ``prompt`` by ``max_new_tokens`` tokens.

    prompt: [batch, prompt_length] int. ``temperature=0`` is greedy (argmax); otherwise tokens are
    sampled from softmax(logits / temperature) with ``key``. Returns
    [batch, prompt_length + max_new_tokens] (the prompt, then the new tokens). Jit-compatible.
    """
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"generate: prompt must have shape [batch, prompt_length >= 1], "
                         f"got {tuple(prompt.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
    if temperature > 0 and key is None:
        raise ValueError("generate: a key is required when temperature > 0")
    key = jax.random.key(0) if key is None else key
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
                  temperature: float = 0.0) -> str:
    """Continues a text prompt with any byte-level model (vocab = ``jaxlm.data.BYTE_VOCAB``)
    and returns the prompt and its continuation as text (invalid UTF-8 becomes U+FFFD).

    Token models (``DecoderLM``, ``LexinvariantLM``) generate byte by byte with ``generate``;
    word-level models (``WordLM``) word by word with ``generate_words``, stopping after the
    word that reaches ``max_new_bytes``. The prompt is read after a BOS, as in training."""
    from jaxlm.data.text import BOS, decode, encode
    from jaxlm.models.words import WordLM, generate_words

    if max_new_bytes < 1:
        raise ValueError(f"generate_text: max_new_bytes must be >= 1, got {max_new_bytes}")

    tokens = jnp.concatenate([jnp.asarray([BOS], jnp.int32), jnp.asarray(encode(prompt))])
    if isinstance(model, WordLM):
        out = generate_words(model, tokens, max_new_words=max_new_bytes,
                             max_new_bytes=max_new_bytes, key=key, temperature=temperature)
        return decode(out[:len(tokens) + max_new_bytes])
    out = generate(model, tokens[None], max_new_tokens=max_new_bytes, key=key,
                   temperature=temperature)
    return decode(out[0])
