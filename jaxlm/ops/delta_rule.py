"""The delta rule (DeltaNet) and the gated delta rule, recurrent and chunkwise-parallel.

"Parallelizing Linear Transformers with the Delta Rule over Sequence Length" and "Gated Delta
Networks: Improving Mamba2 with Delta Rule". With state S ``[d_k, d_v]``:

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,     o_t = (scale · q_t)ᵀ S_t,

with α_t = exp(log_alpha_t) (α = 1 for the plain delta rule). The ``xla`` form is the chunkwise
WY / UT-transform algorithm: inside a chunk with incoming state S₀ and cumulative decays
γ_t = Π_{r≤t} α_r, the updates u_t = β_t (v_t − α_t S_{t-1}ᵀ k_t) solve the unit-lower-triangular
system (I + diag(β) tril(Γ ⊙ K Kᵀ, −1)) U = diag(β)(V − diag(γ) K S₀), Γ_ts = γ_t / γ_s, so
U = Ũ − W S₀ with Ũ and W computed for every chunk in parallel (no per-token state is ever
formed; the triangular system is inverted by forward substitution, see
:func:`unit_lower_inverse`). Then O = diag(γ) Q S₀ + (tril(Q Kᵀ) ⊙ Γ) U and
S_end = γ_C S₀ + Kᵀ diag(Γ_C·) U.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxlm.ops import chunking as ch
from jaxlm.ops.checks import (Impl, accepts_numpy, as_floats, auto_kernel, check_shape,
                              resolve_impl)
from jaxlm.ops.segments import document_ids, segment_starts

DEFAULT_CHUNK = 64


@accepts_numpy
def delta_rule(q: jax.Array, k: jax.Array, v: jax.Array, beta: jax.Array, *,
               scale: float | None = None, chunk_size: int = DEFAULT_CHUNK,
               initial_state: jax.Array | None = None, return_final_state: bool = False,
               segment_ids: jax.Array | None = None, impl: str | Impl = "auto"):
    """DeltaNet: S_t = (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ. Arguments as in
    :func:`gated_delta_rule` without ``log_alpha``."""
    return gated_delta_rule(q, k, v, beta, None, scale=scale, chunk_size=chunk_size,
                            initial_state=initial_state, return_final_state=return_final_state,
                            segment_ids=segment_ids, impl=impl)


@accepts_numpy
def gated_delta_rule(q: jax.Array, k: jax.Array, v: jax.Array, beta: jax.Array,
                     log_alpha: jax.Array | None, *, scale: float | None = None,
                     chunk_size: int = DEFAULT_CHUNK, initial_state: jax.Array | None = None,
                     return_final_state: bool = False, segment_ids: jax.Array | None = None,
                     impl: str | Impl = "auto"):
    """Gated delta rule: S_t = exp(log_alpha_t) (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ.

    Args:
      q, k: [batch, length, heads, d_k] (DeltaNet L2-normalises k; the op does not).
      v: [batch, length, heads, d_v].
      beta: [batch, length, heads] write strengths (in [0, 1] for a contraction).
      log_alpha: [batch, length, heads] log-decays in [-inf, 0] (-inf: a full reset), or None
        (no decay). A decay exp(log_alpha) of exactly 0 is a cut, like a document start, and
        only the log-decays between cuts are summed, so every value in [-inf, 0] is exact.
      scale: multiplies q; default d_k ** -0.5.
      chunk_size: chunk length of the xla form; the result does not depend on it.
      initial_state: [batch, heads, d_k, d_v]; zeros when None.
      return_final_state: also return the state after the last token.
      segment_ids: [batch, length]; the state resets to zero where a new document (a maximal
        run of equal ids: [0, 1, 0] are three documents) starts.
      impl: "reference" (sequential scan), "xla" (chunkwise WY/UT), "pallas" (the chunked
        kernel of :mod:`jaxlm.kernels.delta_rule`; "pallas_interpret" runs it interpreted) or
        "auto" (xla).

    Returns:
      o [batch, length, heads, d_v] in v's dtype (integer inputs are promoted to the default
      float); with ``return_final_state`` also the state [batch, heads, d_k, d_v] in the
      accumulation dtype (at least float32). Causal also under non-finite inputs: a NaN or Inf
      at s sets NaN in the outputs from s on of its document and head, never earlier ones.
      Length 0 or batch 0 gives the empty result.
    """
    op = "gated_delta_rule"
    q, k, v, beta, log_alpha, initial_state = as_floats(q, k, v, beta, log_alpha, initial_state)
    ch.check_recurrent_inputs(op, q, k, v, chunk_size=chunk_size, segment_ids=segment_ids,
                              initial_state=initial_state, state_dv=v.shape[-1])
    batch, length, heads, dk = q.shape
    check_shape(op, "beta", beta, (batch, length, heads), "[batch, length, heads]")
    if log_alpha is not None:
        check_shape(op, "log_alpha", log_alpha, (batch, length, heads), "[batch, length, heads]")
    chosen = auto_kernel(op, resolve_impl(op, impl, ("reference", "xla", "pallas")), q.dtype,
                         length, dk)
    if batch == 0 or length == 0:
        out, state = ch.empty_result(q, v, initial_state)
        return (out, state) if return_final_state else out
    doc = document_ids(segment_ids)
    starts = segment_starts(doc, batch, length)
    out_dtype = v.dtype

    def run(q, k, v, gates, initial_state):
        beta, log_alpha = gates
        q, k, v, state, acc = ch.prepare_qkv_state(q, k, v, scale, initial_state,
                                                    keep_dtype=chosen.is_pallas)
        beta = jnp.moveaxis(beta, 2, 1).astype(acc)
        a = (jnp.zeros_like(beta) if log_alpha is None
             else jnp.moveaxis(log_alpha, 2, 1).astype(acc))
        if chosen is Impl.REFERENCE:
            out, state = _reference(q, k, v, beta, a, starts, state)
        elif chosen.is_pallas:
            from jaxlm.kernels.delta_rule import gated_delta_rule as kernel

            out, state = kernel(q, k, v, beta, a, starts, state, chunk=chunk_size,
                                interpret=chosen.interpret)
        else:
            out, state = _chunked(q, k, v, beta, a, starts, state,
                                  max(1, min(chunk_size, length)))
        return ch.heads_last(out).astype(out_dtype), state

    out, state = ch.guard_nonfinite(run, q, k, v, ((beta, False), (log_alpha, True)),
                                    initial_state, doc)
    return (out, state) if return_final_state else out


@accepts_numpy
def gated_delta_rule_step(state: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array,
                          beta: jax.Array, log_alpha: jax.Array | None = None, *,
                          scale: float | None = None) -> tuple[jax.Array, jax.Array]:
    """One token of the recurrence: the ``step`` form.

    state: [batch, heads, d_k, d_v]; q, k: [batch, heads, d_k]; v: [batch, heads, d_v];
    beta, log_alpha: [batch, heads]. Returns (o [batch, heads, d_v], new state).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if log_alpha is not None:
        state = state * jnp.exp(log_alpha)[..., None, None]
    read = jnp.einsum("bhk,bhkv->bhv", k, state)
    state = state + beta[..., None, None] * k[..., :, None] * (v - read)[..., None, :]
    return jnp.einsum("bhk,bhkv->bhv", q * scale, state).astype(state.dtype), state


def _reference(q, k, v, beta, a, resets, state):
    """Token by token: the definition (q arrives scaled; resets: bool [batch, length])."""

    def step(s, inputs):
        q_t, k_t, v_t, beta_t, a_t, reset = inputs
        s = jnp.where(reset[:, None, None, None], 0.0, s)
        out, s = gated_delta_rule_step(s, q_t, k_t, v_t, beta_t, a_t, scale=1.0)
        return s, out

    xs = (*(jnp.moveaxis(x, 2, 0) for x in (q, k, v, beta, a)), resets.T)
    state, out = jax.lax.scan(step, state, xs)
    return jnp.moveaxis(out, 0, 2), state


def forward_substitution(n: jax.Array) -> jax.Array:
    """(I + N)⁻¹ for strictly lower-triangular N [..., C, C], by forward substitution.

    Row i of T = (I + N)⁻¹ is e_i − N[i, :] T, and only rows j < i of T enter it, so C
    row updates give T exactly (plain matrix-vector products: no LAPACK call). The kernels
    solve it in blocks instead (:func:`jaxlm.kernels.blocks.unit_lower_inverse`).
    """
    size = n.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(size, dtype=n.dtype), n.shape)

    def row(i, t):
        new = eye[..., i, :] - jnp.einsum("...j,...jc->...c", n[..., i, :], t)
        return t.at[..., i, :].set(new)

    return jax.lax.fori_loop(jnp.int32(1), jnp.int32(size), row, eye)


def with_closed_form_vjp(solve: Callable[[jax.Array], jax.Array]) -> Callable:
    """``solve`` (N -> (I + N)⁻¹ for strictly lower-triangular N [..., C, C]) differentiated in
    closed form rather than through its steps: d(A⁻¹) = −A⁻¹ dA A⁻¹ with dA = dN strictly
    lower, so N̄ = −Tᵀ T̄ Tᵀ on the strict lower triangle."""
    inverse = jax.custom_vjp(solve)

    def fwd(n):
        t = solve(n)
        return t, t

    def bwd(t, g):
        tt = jnp.swapaxes(t, -1, -2)
        return (jnp.tril(-(tt @ g @ tt), -1),)

    inverse.defvjp(fwd, bwd)
    return inverse


unit_lower_inverse = with_closed_form_vjp(forward_substitution)
unit_lower_inverse.__doc__ = """(I + N)⁻¹ for strictly lower-triangular N [..., C, C]
(:func:`forward_substitution`), differentiated in closed form (:func:`with_closed_form_vjp`)."""


def _chunked(q, k, v, beta, a, starts, state, chunk):
    batch, heads, length, dk = q.shape
    padded = -(-length // chunk) * chunk
    cuts, a = ch.chunk_cuts(starts, a)  # document starts and zero decays
    q, k, v, beta, a, cuts = (ch.to_chunks(ch.pad_length(x, padded, 2), chunk)
                              for x in (q, k, v, beta, a, cuts))
    causal = jnp.tril(jnp.ones((chunk, chunk), bool))
    strict = jnp.tril(jnp.ones((chunk, chunk), bool), -1)

    def within_chunk(q_c, k_c, v_c, beta_c, a_c, cuts_c):
        """The state-independent WY factors of one chunk."""
        b = jnp.cumsum(a_c, axis=-1)  # [batch, heads, chunk], non-increasing, finite
        runs = jnp.cumsum(cuts_c, axis=-1)  # cuts so far: equal counts, nothing cut between
        same = (runs[..., :, None] == runs[..., None, :]) & causal  # [b, h, t, s]
        gamma_ts = jnp.exp(jnp.where(same, b[..., :, None] - b[..., None, :], -jnp.inf))
        gamma = jnp.where(runs == 0, jnp.exp(b), 0.0)  # decay since the chunk start
        kk = jnp.einsum("bhtk,bhsk->bhts", k_c, k_c)
        # masks by where, not by products with 0: an overflowing k·k or q·k of a pair that no
        # output reads stays out
        t = unit_lower_inverse(jnp.where(strict & same, beta_c[..., None] * gamma_ts * kk, 0.0))
        rhs = beta_c[..., None] * jnp.concatenate([v_c, gamma[..., None] * k_c], axis=-1)
        solved = jnp.einsum("bhts,bhsd->bhtd", t, rhs)
        u_tilde, w = solved[..., :v_c.shape[-1]], solved[..., v_c.shape[-1]:]
        attn = jnp.where(same, jnp.einsum("bhtk,bhsk->bhts", q_c, k_c) * gamma_ts, 0.0)
        q_in = gamma[..., None] * q_c
        k_out = gamma_ts[:, :, -1, :, None] * k_c  # Γ_{C,s} k_s
        keep = gamma[:, :, -1, None, None]  # γ_C: [batch, heads, 1, 1]
        return u_tilde, w, attn, q_in, k_out, keep

    factors = jax.vmap(jax.checkpoint(within_chunk))(q, k, v, beta, a, cuts)

    def across_chunks(s, chunk_factors):
        u_tilde, w, attn, q_in, k_out, keep = chunk_factors
        u = u_tilde - jnp.einsum("bhtk,bhkv->bhtv", w, s)
        out = jnp.einsum("bhtk,bhkv->bhtv", q_in, s) + jnp.einsum("bhts,bhsv->bhtv", attn, u)
        return keep * s + jnp.einsum("bhsk,bhsv->bhkv", k_out, u), out

    state, out = jax.lax.scan(across_chunks, state, factors)
    return ch.from_chunks(out)[:, :, :length], state
