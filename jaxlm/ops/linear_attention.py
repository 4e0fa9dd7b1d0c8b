"""Linear attention and gated linear attention, recurrent and chunkwise-parallel.

"Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention" and "Gated
Linear Attention Transformers with Hardware-Efficient Training". With state S ``[d_k, d_v]``:

    S_t = diag(exp(log_g_t)) S_{t-1} + k_t v_tᵀ,     o_t = (scale · q_t)ᵀ S_t.

``log_g`` is per key channel ``[batch, length, heads, d_k]`` (GLA) or per head
``[batch, length, heads]`` (a scalar decay, as in RetNet / Mamba-2); without it this is plain
linear attention. Forms: ``reference`` (a sequential scan over tokens) and ``xla`` (chunkwise:
quadratic attention-like products inside a chunk, a scan over chunk states between chunks).
Decays are only ever formed as exp(b_t − b_s) for s ≤ t inside a chunk, so exp never sees a
positive argument. A gate whose decay exp(log_g) is exactly 0 (log_g = -inf, a full reset, or
below about -104 in float32) is a cut, like a document start (per channel), and only the gates
between cuts are summed: every log-gate in [-inf, 0] gives exact results, never inf - inf.

Contracts shared by every form: a document of a packed row is a maximal run of equal
``segment_ids`` (ids [0, 1, 0] are three documents; :func:`jaxlm.ops.segments.document_ids`);
the op is causal also under non-finite inputs (a NaN or Inf at position s makes the outputs
from s on in its document NaN, never an earlier one); integer inputs are promoted to float.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxlm.ops import chunking as ch
from jaxlm.ops.checks import (Impl, accepts_numpy, as_floats, auto_kernel, check_shape,
                              resolve_impl)
from jaxlm.ops.segments import document_ids, segment_starts

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
      log_g: log-gates in [-inf, 0] (-inf: a full reset), [batch, length, heads, d_k] (per
        channel) or [batch, length, heads] (per head), or None (no decay: linear attention).
      scale: multiplies q; default d_k ** -0.5.
      chunk_size: chunk length of the xla form; the result does not depend on it.
      initial_state: [batch, heads, d_k, d_v]; zeros when None.
      return_final_state: also return the state after the last token.
      segment_ids: [batch, length]; the state resets to zero where a new document (a maximal
        run of equal ids) starts (the initial state belongs to the row's first document).
      impl: "reference" (sequential scan), "xla" (chunkwise), "pallas" (the chunked kernel of
        :mod:`jaxlm.kernels.linear_attention`; "pallas_interpret" runs it interpreted) or
        "auto" (xla).

    Returns:
      o [batch, length, heads, d_v] in v's dtype (integer inputs: the default float); with
      ``return_final_state`` also the state [batch, heads, d_k, d_v] in the accumulation dtype
      (at least float32). A non-finite input at s sets NaN in the outputs from s on of its
      document (and head), never earlier ones. Length 0 or batch 0 gives the empty result.
    """
    op = "gated_linear_attention"
    q, k, v, log_g, initial_state = as_floats(q, k, v, log_g, initial_state)
    ch.check_recurrent_inputs(op, q, k, v, chunk_size=chunk_size, segment_ids=segment_ids,
                              initial_state=initial_state, state_dv=v.shape[-1])
    batch, length, heads, dk = q.shape
    if log_g is not None and log_g.ndim == 3:
        check_shape(op, "log_g", log_g, (batch, length, heads), "[batch, length, heads]")
        log_g = log_g[..., None]
    elif log_g is not None:
        check_shape(op, "log_g", log_g, (batch, length, heads, dk),
                    "[batch, length, heads, d_k] or [batch, length, heads]")
    # per-head and per-channel gates run different kernels, measured apart
    measured_as = op if log_g is None or log_g.shape[-1] == 1 else f"{op}/per_channel"
    chosen = auto_kernel(measured_as, resolve_impl(op, impl, ("reference", "xla", "pallas")),
                         q.dtype, length, dk)
    if batch == 0 or length == 0:
        out, state = ch.empty_result(q, v, initial_state)
        return (out, state) if return_final_state else out
    doc = document_ids(segment_ids)
    starts = segment_starts(doc, batch, length)
    out_dtype = v.dtype

    def run(q, k, v, gates, initial_state):
        q, k, v, state, acc = ch.prepare_qkv_state(q, k, v, scale, initial_state,
                                                    keep_dtype=chosen.is_pallas)
        g = (jnp.zeros((batch, heads, length, 1), acc) if gates[0] is None
             else ch.heads_first(gates[0]).astype(acc))
        if chosen is Impl.REFERENCE:
            out, state = _reference(q, k, v, g, starts, state)
        elif chosen.is_pallas:
            from jaxlm.kernels.linear_attention import gated_linear_attention as kernel

            out, state = kernel(q, k, v, g, starts, state, chunk=chunk_size,
                                interpret=chosen.interpret)
        else:
            out, state = _chunked(q, k, v, g, starts, state, max(1, min(chunk_size, length)))
        return ch.heads_last(out).astype(out_dtype), state

    out, state = ch.guard_nonfinite(run, q, k, v, ((log_g, True),), initial_state, doc)
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


def _reference(q, k, v, g, resets, state):
    """Token by token: the definition (q arrives scaled; resets: bool [batch, length])."""

    def step(s, inputs):
        q_t, k_t, v_t, g_t, reset = inputs
        s = jnp.where(reset[:, None, None, None], 0.0, s)
        out, s = gated_linear_attention_step(s, q_t, k_t, v_t, g_t, scale=1.0)
        return s, out

    xs = tuple(jnp.moveaxis(x, 2, 0) for x in (q, k, v, g)) + (resets.T,)
    state, out = jax.lax.scan(step, state, xs)
    return jnp.moveaxis(out, 0, 2), state


def _chunked(q, k, v, g, starts, state, chunk):
    batch, heads, length, dk = q.shape
    padded = -(-length // chunk) * chunk
    cuts, g = ch.chunk_cuts(starts, g)  # document starts and zero decays, per channel
    q, k, v, g, cuts = (ch.to_chunks(ch.pad_length(x, padded, 2), chunk)
                        for x in (q, k, v, g, cuts))
    causal = jnp.tril(jnp.ones((chunk, chunk), bool))[:, :, None]

    @jax.checkpoint
    def within_chunk(inputs):
        """Everything that does not depend on the incoming state, for one chunk."""
        q_c, k_c, v_c, g_c, cuts_c = inputs
        b = jnp.cumsum(g_c, axis=2)  # [batch, heads, chunk, dg], non-increasing, finite
        runs = jnp.cumsum(cuts_c, axis=2)  # cuts so far: equal counts, nothing cut between
        same = (runs[:, :, :, None] == runs[:, :, None, :]) & causal  # [b, h, t, s, dg]
        expo = b[:, :, :, None, :] - b[:, :, None, :, :]  # b_t - b_s: [b, h, t, s, dg]
        decay = jnp.exp(jnp.where(same, expo, -jnp.inf))
        # masked by where, not by products with 0: an overflowing q·k of a pair that no output
        # reads stays out
        if g_c.shape[-1] == 1:  # one decay per head: a [t, s] matrix
            scores = jnp.where(same[..., 0], jnp.einsum("bhtk,bhsk->bhts", q_c, k_c)
                               * decay[..., 0], 0.0)
        else:
            scores = jnp.where(same.any(-1), jnp.einsum("bhtk,bhsk,bhtsk->bhts", q_c, k_c,
                                                        decay), 0.0)
        out = jnp.einsum("bhts,bhsv->bhtv", scores, v_c)
        q_in = jnp.where(runs == 0, q_c * jnp.exp(b), 0.0)  # reads the incoming state
        to_end = runs == runs[:, :, -1:]
        k_out = jnp.where(to_end, k_c * jnp.exp(b[:, :, -1:] - b), 0.0)  # writes the outgoing
        chunk_state = jnp.einsum("bhsk,bhsv->bhkv", k_out, v_c)
        carry = jnp.where(runs[:, :, -1] == 0, jnp.exp(b[:, :, -1]), 0.0)[..., None]
        return out, q_in, chunk_state, carry  # carry: [b, h, dg, 1]

    per_channel = g.shape[-1] > 1
    inputs = (q, k, v, g, cuts)
    # Per-channel decays hold a [chunk, chunk, d_k] tensor: visit chunks one at a time.
    out, q_in, chunk_state, carry = (jax.lax.map(within_chunk, inputs) if per_channel
                                     else jax.vmap(within_chunk)(inputs))

    def across_chunks(s, inputs):
        chunk_state_c, carry_c = inputs
        return s * carry_c + chunk_state_c, s

    state, incoming = jax.lax.scan(across_chunks, state, (chunk_state, carry))
    out = out + jnp.einsum("nbhtk,nbhkv->nbhtv", q_in, incoming)
    return ch.from_chunks(out)[:, :, :length], state
