"""Causal attention over vector-quantised keys ("LongVQ: Long Sequence Modeling with Vector
Quantization on Structured Memory"; the quantiser and its linear-time causal form follow
"Transformer-VQ: Linear-Time Transformers via Vector Quantization", on which LongVQ builds).

Keys are quantised to the nearest of S codewords c_s of a codebook C [S, d_k]:

    z_j = argmin_s ||k_j − c_s||²,   k̂_j = k_j + sg(c_{z_j} − k_j)    (straight-through)

trained by the commitment loss mean_j ||k_j − sg(c_{z_j})||²; the codebook gets no gradient
and follows the keys by exponential moving averages (the VQ-VAE update, decay γ, Laplace
smoothing ε):

    N_s ← γ N_s + (1 − γ) n_s,   m_s ← γ m_s + (1 − γ) Σ_{z_j = s} k_j,   c_s = m_s / N_s.

Query t reads its document's tokens j <= t in two parts: the last ``window`` = w tokens
(t − j < w) through their quantised keys plus a learned bias b_{t−j} (LongVQ's local window
with a relative-position bias, which tells near tokens from far ones), and every earlier token
through the codebook:

    o_t = [Σ_{t−w<j≤t} e^{q_t·k̂_j + b_{t−j}} v_j + Σ_s e^{q_t·c_s} U_s(t−w)]
          / [Σ_{t−w<j≤t} e^{q_t·k̂_j + b_{t−j}} + Σ_s e^{q_t·c_s} N_s(t−w)],

    U_s(τ) = Σ_{j≤τ, z_j=s} v_j,   N_s(τ) = #{j ≤ τ : z_j = s},

the per-code cumulative sums of the values: O(L (w + S)) work for L tokens instead of O(L²),
and a decoding state of S summed values, S counts and the window (:func:`vq_attention_step`).
The far part reads the codebook as a constant (as in Transformer-VQ, keys learn through the
window and the commitment loss). ``impl="reference"`` is the dense [L, L] softmax with the
same scores (k̂_j inside the window, sg(c_{z_j}) beyond it), ``"xla"`` the cumulative form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import Impl, accepts_numpy, check_rank, check_shape, resolve_impl
from jaxlm.ops.conv import _shifted
from jaxlm.ops.segments import document_ids, segment_starts


@accepts_numpy
def nearest_code(k: jax.Array, codebook: jax.Array) -> jax.Array:
    """z = argmin_s ||k − c_s||²: k [..., d_k], codebook [S, d_k] -> int32 [...]."""
    k, codebook = jax.lax.stop_gradient(k), jax.lax.stop_gradient(codebook)
    distance = (jnp.sum(codebook ** 2, -1) - 2 * jnp.einsum("...d,sd->...s", k, codebook))
    return jnp.argmin(distance, axis=-1).astype(jnp.int32)


@accepts_numpy
def quantize(k: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(k̂ = k + sg(c_z − k) [..., d_k], z [...]): the straight-through quantised keys."""
    codes = nearest_code(k, codebook)
    return k + jax.lax.stop_gradient(codebook[codes].astype(k.dtype) - k), codes


@accepts_numpy
def commitment_loss(k: jax.Array, codebook: jax.Array) -> jax.Array:
    """mean over tokens of ||k − sg(c_z)||² (k [..., d_k]): the keys' pull toward their codes."""
    codes = nearest_code(k, codebook)
    target = jax.lax.stop_gradient(codebook[codes].astype(k.dtype))
    return jnp.mean(jnp.sum((k - target) ** 2, axis=-1))


@accepts_numpy
def codebook_ema_update(counts: jax.Array, sums: jax.Array, k: jax.Array, *, decay: float,
                        eps: float = 1e-5) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One moving-average step of the codebook toward the keys assigned to it.

    counts: [S] N_s; sums: [S, d_k] m_s; k: [..., d_k] this batch's keys (no gradient).
    Returns the new (counts, sums, codebook = m_s / N_s), N_s Laplace-smoothed by ``eps``
    (so an unused code decays toward nothing but never divides by zero)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"codebook_ema_update: decay must be in [0, 1), got {decay}")
    size = counts.shape[0]
    k = jax.lax.stop_gradient(k).reshape(-1, k.shape[-1]).astype(sums.dtype)
    codebook = sums / counts[:, None]
    onehot = jax.nn.one_hot(nearest_code(k, codebook), size, dtype=sums.dtype)
    counts = decay * counts + (1 - decay) * onehot.sum(0)
    sums = decay * sums + (1 - decay) * onehot.T @ k
    total = counts.sum()
    smoothed = (counts + eps) / (total + size * eps) * total
    return counts, sums, sums / smoothed[:, None]


def _check(op, q, k, v, codebook, bias, segment_ids):
    check_rank(op, "q", q, "[batch, length, d_k]")
    check_shape(op, "k", k, q.shape, "[batch, length, d_k] as q")
    check_rank(op, "v", v, "[batch, length, d_v]")
    check_shape(op, "v", v, (*q.shape[:2], None), "[batch, length, d_v]")
    check_shape(op, "codebook", codebook, (None, q.shape[-1]), "[codebook_size, d_k]")
    check_rank(op, "bias", bias, "[window]")
    if segment_ids is not None:
        check_shape(op, "segment_ids", segment_ids, q.shape[:2], "[batch, length]")


@accepts_numpy
def vq_attention(q: jax.Array, k: jax.Array, v: jax.Array, codebook: jax.Array,
                 bias: jax.Array, *, segment_ids: jax.Array | None = None,
                 impl: str | Impl = "auto") -> jax.Array:
    """Causal attention of q over the quantised keys k (see the module docstring).

    Args:
      q, k: [batch, length, d_k] (q already scaled); v: [batch, length, d_v].
      codebook: [S, d_k] (no gradient reaches it); bias: [window] the local window's bias
        b_0 .. b_{w−1} (w = 0: every key is read through the codebook).
      segment_ids: [batch, length]; no token reads an earlier document of a packed row.
      impl: "reference" (dense softmax), "xla" (per-code cumulative sums), "auto" (= "xla").

    Returns: [batch, length, d_v].
    """
    op = "vq_attention"
    _check(op, q, k, v, codebook, bias, segment_ids)
    chosen = resolve_impl(op, impl, ("reference", "xla"))
    fn = _dense if chosen is Impl.REFERENCE else _cumulative
    return fn(q, k, v, codebook, bias, segment_ids)


def _dense(q, k, v, codebook, bias, segment_ids):
    batch, length, _ = q.shape
    window = bias.shape[0]
    k_hat, codes = quantize(k, codebook)
    far_keys = jax.lax.stop_gradient(codebook)[codes].astype(q.dtype)
    t, j = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
    local = (t - j < window)
    near = jnp.einsum("btd,bjd->btj", q, k_hat)
    far = jnp.einsum("btd,bjd->btj", q, far_keys)
    offsets = jnp.clip(t - j, 0, max(window - 1, 0))
    scores = jnp.where(local, near + (bias[offsets] if window else 0.0), far)
    doc = document_ids(segment_ids)
    allowed = (j <= t)[None]
    if doc is not None:
        allowed = allowed & (doc[:, :, None] == doc[:, None, :])
    scores = jnp.where(allowed, scores, -jnp.inf)
    return jnp.einsum("btj,bjd->btd", jax.nn.softmax(scores, axis=-1), v)


def _cumulative(q, k, v, codebook, bias, segment_ids):
    batch, length, _ = q.shape
    window, size = bias.shape[0], codebook.shape[0]
    k_hat, codes = quantize(k, codebook)
    doc = document_ids(segment_ids)
    ones = jnp.ones((batch, length, 1), q.dtype)
    # the window: offsets i = t - j = 0 .. w-1, zero (and masked) before the document
    near_logits, near_values = [], []
    for i in range(window):
        present = _shifted(ones, i, doc)[..., 0] > 0
        logit = jnp.einsum("btd,btd->bt", q, _shifted(k_hat, i, doc)) + bias[i]
        near_logits.append(jnp.where(present, logit, -jnp.inf))
        near_values.append(_shifted(v, i, doc))
    # the codebook part: tokens j in [document start, t - w]
    onehot = jax.nn.one_hot(codes, size, dtype=v.dtype)  # [b, L, S]
    zero = jnp.zeros((batch, 1, size), v.dtype)
    counts = jnp.concatenate([zero, jnp.cumsum(onehot, axis=1)], axis=1)  # [b, L + 1, S]
    sums = jnp.concatenate([zero[..., None] * v[:, :1, None], jnp.cumsum(
        onehot[..., None] * v[:, :, None, :], axis=1)], axis=1)  # [b, L + 1, S, d_v]
    position = jnp.arange(length)
    starts = segment_starts(segment_ids, batch, length)
    start = jax.lax.cummax(jnp.where(starts, position, 0), axis=1)  # [b, L]
    end = jnp.maximum(position - window + 1, start)  # exclusive end of the far range

    def between(cumulative):
        take = lambda idx: jnp.take_along_axis(
            cumulative, idx.reshape(batch, length, *([1] * (cumulative.ndim - 2))), axis=1)
        return take(end) - take(start)

    far_counts, far_sums = between(counts), between(sums)
    code_logits = jnp.einsum("btd,sd->bts", q, jax.lax.stop_gradient(codebook).astype(q.dtype))
    far_logits = jnp.where(far_counts > 0, code_logits + jnp.log(jnp.maximum(far_counts, 1)),
                           -jnp.inf)
    far_values = far_sums / jnp.maximum(far_counts, 1)[..., None]
    logits = jnp.concatenate([jnp.stack(near_logits, -1) if window else
                              jnp.zeros((batch, length, 0), q.dtype), far_logits], axis=-1)
    values = jnp.concatenate([jnp.stack(near_values, 2) if window else
                              jnp.zeros((batch, length, 0, v.shape[-1]), v.dtype), far_values],
                             axis=2)
    return jnp.einsum("bts,btsd->btd", jax.nn.softmax(logits, axis=-1), values)


def vq_attention_init_state(batch: int, window: int, codebook_size: int, d_k: int, d_v: int,
                            dtype=jnp.float32) -> dict[str, jax.Array]:
    """The decoding state of :func:`vq_attention_step`: per-code summed values ``sums`` [batch,
    S, d_v] and ``counts`` [batch, S] of the tokens that left the window, and the window's
    quantised ``keys`` [batch, w, d_k], ``values`` [batch, w, d_v], ``codes`` [batch, w] and
    ``filled`` [batch, w] (oldest first)."""
    return {"sums": jnp.zeros((batch, codebook_size, d_v), dtype),
            "counts": jnp.zeros((batch, codebook_size), dtype),
            "keys": jnp.zeros((batch, window, d_k), dtype),
            "values": jnp.zeros((batch, window, d_v), dtype),
            "codes": jnp.zeros((batch, window), jnp.int32),
            "filled": jnp.zeros((batch, window), bool)}


@accepts_numpy
def vq_attention_step(state: dict[str, jax.Array], q_t: jax.Array, k_t: jax.Array,
                      v_t: jax.Array, codebook: jax.Array, bias: jax.Array
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One token of :func:`vq_attention`: q_t, k_t [batch, d_k], v_t [batch, d_v]. The token
    leaving the window (t − w) joins its code's sums; the query reads the window and the
    codebook. Returns (o_t [batch, d_v], new state)."""
    window, size = bias.shape[0], codebook.shape[0]
    k_hat, code = quantize(k_t, codebook)
    dtype = state["sums"].dtype
    if window:
        leaving = (jax.nn.one_hot(state["codes"][:, 0], size, dtype=dtype)
                   * state["filled"][:, :1].astype(dtype))
        leaving_value = state["values"][:, 0]
        push = lambda buffer, new: jnp.concatenate([buffer[:, 1:], new[:, None]], axis=1)
        new_state = {"keys": push(state["keys"], k_hat.astype(dtype)),
                     "values": push(state["values"], v_t.astype(dtype)),
                     "codes": push(state["codes"], code),
                     "filled": push(state["filled"], jnp.ones(code.shape, bool))}
    else:
        leaving, leaving_value = jax.nn.one_hot(code, size, dtype=dtype), v_t.astype(dtype)
        new_state = {name: state[name] for name in ("keys", "values", "codes", "filled")}
    new_state["sums"] = state["sums"] + leaving[..., None] * leaving_value[:, None]
    new_state["counts"] = state["counts"] + leaving
    near = (jnp.einsum("bd,bwd->bw", q_t, new_state["keys"].astype(q_t.dtype))
            + bias[::-1].astype(q_t.dtype))  # slot w-1 is the current token (offset 0)
    near = jnp.where(new_state["filled"], near, -jnp.inf)
    counts = new_state["counts"]
    far = jnp.where(counts > 0, jnp.einsum("bd,sd->bs", q_t, jax.lax.stop_gradient(
        codebook).astype(q_t.dtype)) + jnp.log(jnp.maximum(counts, 1)), -jnp.inf)
    values = jnp.concatenate([new_state["values"], new_state["sums"]
                              / jnp.maximum(counts, 1)[..., None]], axis=1)
    weights = jax.nn.softmax(jnp.concatenate([near, far], axis=-1), axis=-1)
    return jnp.einsum("bs,bsd->bd", weights, values.astype(q_t.dtype)), new_state
