"""Linear attention and gated linear attention, recurrent and chunkwise-parallel.

"Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention" and "Gated
Linear Attention Transformers with Hardware-Efficient Training". With state S ``[d_k, d_v]``:

    S_t = diag(exp(log_g_t)) S_{t-1} + k_t v_tᵀ,     o_t = (scale · q_t)ᵀ S_t.

``log_g`` is per key channel ``[batch, length, heads, d_k]`` (GLA) or per head
``[batch, length, heads]`` (a scalar decay, as in RetNet / Mamba-2); without it this is plain
linear attention. Forms: ``reference`` (a sequential scan over tokens) and ``xla`` (chunkwise:
quadratic attention-like products inside a chunk, a scan over chunk states between chunks).
Decays are only ever formed as exp(b_t − b_s) for s ≤ t inside a chunk, so exp never sees a
positive argument, whatever the log-gates.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxlm.ops import chunking as ch
from jaxlm.ops.checks import Impl, accepts_numpy, check_shape, resolve_impl
from jaxlm.ops.segments import segment_starts

DEFAULT_CHUNK = 64


@accepts_numpy
def linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, normalize: bool = False,
                     scale: float | None = None, chunk_size: int = DEFAULT_CHUNK,
                     initial_state: jax.Array | None = None, return_final_state: bool = False,
                     segment_ids: jax.Array | None = None, impl: str | Impl = "auto"):
    """Causal linear attention: o_t = Σ_{s≤t} (scale·q_t·k_s) v_s.

    Args:
      q, k: [batch, length, heads, d_k] (feature maps are applied by the caller).
      v: [batch, length, heads, d_v].
      normalize: divide by Σ_{s≤t} scale·q_t·k_s (needs positive features). The state then has
        d_v + 1 columns, the last one holding Σ k_s.
      scale: multiplies q; default d_k ** -0.5.
      chunk_size, initial_state [batch, heads, d_k, d_v(+1)], return_final_state, segment_ids
        [batch, length] (the state resets where a packed document starts), impl: as in
        :func:`gated_linear_attention`.

    Returns:
      o [batch, length, heads, d_v], and the final state when ``return_final_state``.
    """
    return linear_attention_through(gated_linear_attention, q, k, v, normalize=normalize,
                                    scale=scale, chunk_size=chunk_size,
                                    initial_state=initial_state,
                                    return_final_state=return_final_state,
                                    segment_ids=segment_ids, impl=impl)


def linear_attention_through(gla: Callable, q: jax.Array, k: jax.Array, v: jax.Array, *,
                             normalize: bool, return_final_state: bool = False, **kwargs):
    """:func:`linear_attention` computed by ``gla``, any function with the arguments and
    results of :func:`gated_linear_attention` (e.g. its sequence-parallel form). Normalised,
    it is gated linear attention over [v, 1], whose last output column is the normaliser.
    ``kwargs`` go to ``gla``."""
    if not normalize:
        return gla(q, k, v, None, return_final_state=return_final_state, **kwargs)
    ones = jnp.ones(v.shape[:-1] + (1,), v.dtype)
    out, state = gla(q, k, jnp.concatenate([v, ones], -1), None, return_final_state=True,
                     **kwargs)
    out = out[..., :-1] / out[..., -1:]
    return (out, state) if return_final_state else out


@accepts_numpy
def gated_linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, log_g: jax.Array | None,
                           *, scale: float | None = None, chunk_size: int = DEFAULT_CHUNK,
                           initial_state: jax.Array | None = None,
                           return_final_state: bool = False,
                           segment_ids: jax.Array | None = None, impl: str | Impl = "auto"):
    """Gated linear attention: S_t = diag(exp(log_g_t)) S_{t-1} + k_t v_tᵀ, o_t = scale·q_tᵀ S_t.

    Args:
      q, k: [batch, length, heads, d_k]; v: [batch, length, heads, d_v].
      log_g: log-gates <= 0, [batch, length, heads, d_k] (per channel) or [batch, length, heads]
        (per head), or None (no decay: linear attention).
      scale: multiplies q; default d_k ** -0.5.
      chunk_size: chunk length of the xla form; the result does not depend on it.
      initial_state: [batch, heads, d_k, d_v]; zeros when None.
      return_final_state: also return the state after the last token.
      segment_ids: [batch, length]; the state resets to zero where a new document starts (the
        initial state belongs to the row's first document).
      impl: "reference" (sequential scan), "xla" (chunkwise), "pallas" (the chunked kernel of
        :mod:`jaxlm.kernels.linear_attention`; "pallas_interpret" runs it interpreted) or
        "auto" (xla).

    Returns:
      o [batch, length, heads, d_v] in v's dtype; with ``return_final_state`` also the state
      [batch, heads, d_k, d_v] in the accumulation dtype (at least float32).
    """
    op = "gated_linear_attention"
    ch.check_recurrent_inputs(op, q, k, v, chunk_size=chunk_size, segment_ids=segment_ids,
                              initial_state=initial_state, state_dv=v.shape[-1])
    batch, length, heads, dk = q.shape
    if log_g is not None and log_g.ndim == 3:
        check_shape(op, "log_g", log_g, (batch, length, heads), "[batch, length, heads]")
        log_g = log_g[..., None]
    elif log_g is not None:
        check_shape(op, "log_g", log_g, (batch, length, heads, dk),
                    "[batch, length, heads, d_k] or [batch, length, heads]")
    chosen = resolve_impl(op, impl, ("reference", "xla", "pallas"))
    out_dtype = v.dtype
    q, k, v, state, acc = ch.prepare_qkv_state(q, k, v, scale, initial_state)
    g = (jnp.zeros((batch, heads, length, 1), acc) if log_g is None
         else ch.heads_first(log_g).astype(acc))
    if chosen is Impl.REFERENCE:
        out, state = _reference(q, k, v, g, segment_ids, state)
    elif chosen.is_pallas:
        from jaxlm.kernels.linear_attention import gated_linear_attention as kernel

        out, state = kernel(q, k, v, g, segment_starts(segment_ids, batch, length), state,
                            chunk=chunk_size, interpret=chosen.interpret)
    else:
        out, state = _chunked(q, k, v, g, segment_ids, state, min(chunk_size, length))
    out = ch.heads_last(out).astype(out_dtype)
    return (out, state) if return_final_state else out


@accepts_numpy
def gated_linear_attention_step(state: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array,
                                log_g: jax.Array | None = None, *, scale: float | None = None
                                ) -> tuple[jax.Array, jax.Array]:
    """One token of the recurrence: the ``step`` form.

    state: [batch, heads, d_k, d_v]; q, k: [batch, heads, d_k]; v: [batch, heads, d_v];
    log_g: [batch, heads, d_k] or [batch, heads] or None. Returns (o [batch, heads, d_v],
    new state), computed in the state's dtype.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if log_g is not None:
        decay = jnp.exp(log_g if log_g.ndim == state.ndim - 1 else log_g[..., None])
        state = state * decay[..., None]
    state = state + k[..., :, None] * v[..., None, :]
    return jnp.einsum("bhk,bhkv->bhv", q * scale, state).astype(state.dtype), state


def _reference(q, k, v, g, segment_ids, state):
    """Token by token: the definition (q arrives scaled)."""
    batch, _, length, _ = q.shape
    resets = segment_starts(segment_ids, batch, length)

    def step(s, inputs):
        q_t, k_t, v_t, g_t, reset = inputs
        s = jnp.where(reset[:, None, None, None], 0.0, s)
        out, s = gated_linear_attention_step(s, q_t, k_t, v_t, g_t, scale=1.0)
        return s, out

    xs = tuple(jnp.moveaxis(x, 2, 0) for x in (q, k, v, g)) + (resets.T,)
    state, out = jax.lax.scan(step, state, xs)
    return jnp.moveaxis(out, 0, 2), state


def _chunked(q, k, v, g, segment_ids, state, chunk):
    batch, heads, length, dk = q.shape
    padded = -(-length // chunk) * chunk
    q, k, v, g = (ch.to_chunks(ch.pad_length(x, padded, 2), chunk) for x in (q, k, v, g))
    seg, seg_prev = ch.prepare_segments(segment_ids, batch, padded, chunk)
    causal = jnp.tril(jnp.ones((chunk, chunk), bool))

    @jax.checkpoint
    def within_chunk(inputs):
        """Everything that does not depend on the incoming state, for one chunk."""
        q_c, k_c, v_c, g_c, seg_c, prev_c = inputs
        b = jnp.cumsum(g_c, axis=2)  # [batch, heads, chunk, dg], non-increasing
        same = (seg_c[:, :, None] == seg_c[:, None, :]) & causal  # [batch, t, s]
        expo = b[:, :, :, None, :] - b[:, :, None, :, :]  # b_t - b_s: [b, h, t, s, dg]
        decay = jnp.exp(jnp.where(same[:, None, :, :, None], expo, -jnp.inf))
        if g_c.shape[-1] == 1:  # one decay per head: a [t, s] matrix
            scores = jnp.einsum("bhtk,bhsk->bhts", q_c, k_c) * decay[..., 0]
        else:
            scores = jnp.einsum("bhtk,bhsk,bhtsk->bhts", q_c, k_c, decay)
        out = jnp.einsum("bhts,bhsv->bhtv", scores, v_c)
        from_prev = (seg_c == prev_c[:, None])[:, None, :, None]  # [batch, 1, chunk, 1]
        q_in = jnp.where(from_prev, q_c * jnp.exp(b), 0.0)  # reads the incoming state
        to_end = (seg_c == seg_c[:, -1:])[:, None, :, None]
        k_out = jnp.where(to_end, k_c * jnp.exp(b[:, :, -1:] - b), 0.0)  # writes the outgoing
        chunk_state = jnp.einsum("bhsk,bhsv->bhkv", k_out, v_c)
        keep = (seg_c[:, -1] == prev_c)[:, None, None, None]
        carry = jnp.where(keep, jnp.exp(b[:, :, -1])[..., None], 0.0)  # [b, h, dg, 1]
        return out, q_in, chunk_state, carry

    per_channel = g.shape[-1] > 1
    inputs = (q, k, v, g, seg, seg_prev)
    # Per-channel decays hold a [chunk, chunk, d_k] tensor: visit chunks one at a time.
    out, q_in, chunk_state, carry = (jax.lax.map(within_chunk, inputs) if per_channel
                                     else jax.vmap(within_chunk)(inputs))

    def across_chunks(s, inputs):
        chunk_state_c, carry_c = inputs
        return s * carry_c + chunk_state_c, s

    state, incoming = jax.lax.scan(across_chunks, state, (chunk_state, carry))
    out = out + jnp.einsum("nbhtk,nbhkv->nbhtv", q_in, incoming)
    return ch.from_chunks(out)[:, :, :length], state
