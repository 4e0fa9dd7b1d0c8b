"""Dense and normal-plus-low-rank linear time-invariant SSMs: LSSL and S4.

Each of ``channels`` SSMs is x_t = Ā x_{t-1} + B̄ u_t, y_t = Re(C x_t), discretized from
continuous (A, B, Δ) by the bilinear transform Ā = (I − ΔA/2)⁻¹(I + ΔA/2), B̄ = (I − ΔA/2)⁻¹ΔB.
As a convolution y = K * u with K_l = Re(C Ā^l B̄).

- LSSL ("Combining Recurrent, Convolutional, and Continuous-time Models with Linear State-Space
  Layers") materializes Ā and builds K from its Krylov powers: :func:`dense_ssm`.
- S4 ("Efficiently Modeling Long Sequences with Structured State Spaces") keeps A normal plus
  low rank, A = Λ − P P* in a unitary basis, and evaluates K's generating function at the roots
  of unity with Cauchy sums and the Woodbury identity, then an inverse FFT: :func:`s4_kernel`.
  Its parameters keep one of each conjugate pair (``[channels, N/2]``); the state is the full
  conjugate-completed one (``[batch, channels, N]``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import (Impl, accepts_numpy, as_float, as_floats, check_positive, check_rank,
                              check_shape, resolve_impl)
from jaxlm.ops.delta_rule import unit_lower_inverse
from jaxlm.ops.segments import segment_starts
from jaxlm.ops.ssm import fft_causal_conv


@accepts_numpy
def bilinear_lower(dt: jax.Array, A: jax.Array, B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Bilinear discretization of a lower-triangular A (HiPPO-LegS), by forward substitution
    (no LAPACK call: XLA:CPU's LAPACK custom calls can deadlock inside large fused programs).

    dt: [channels]; A: [N, N] lower triangular, shared; B: [N].
    Returns Ā = (I − ΔA/2)⁻¹(I + ΔA/2) [channels, N, N] and B̄ = (I − ΔA/2)⁻¹ΔB [channels, N].
    """
    half = dt[:, None, None] / 2 * A  # [channels, N, N]
    eye = jnp.eye(A.shape[-1], dtype=half.dtype)
    diag = 1 - jnp.diagonal(half, axis1=-2, axis2=-1)  # I − ΔA/2 = diag · (I + strict)
    strict = jnp.tril(-half, -1) / diag[..., :, None]
    inverse = unit_lower_inverse(strict) / diag[..., None, :]
    return inverse @ (eye + half), jnp.einsum("cnm,cm->cn", inverse, dt[:, None] * B)


@accepts_numpy
def bilinear_nplr(dt: jax.Array, Lambda: jax.Array, P: jax.Array, B: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """Bilinear discretization of A = diag(Λ) − P P*, inverting I − ΔA/2 = D + (Δ/2) P P*
    (D = I − ΔΛ/2 diagonal) by the Sherman–Morrison formula.

    dt: [channels]; Lambda, P, B: [channels, N] complex (full, conjugate-completed).
    Returns Ā [channels, N, N], B̄ [channels, N].
    """
    half_dt = (dt / 2)[:, None]
    d_inv = 1 / (1 - half_dt * Lambda)  # [channels, N]
    u = d_inv * half_dt * P  # D⁻¹ (Δ/2) P
    denom = 1 + jnp.sum(jnp.conj(P) * u, axis=-1)  # 1 + P* D⁻¹ (Δ/2) P

    def solve(x):  # (D + (Δ/2) P P*)⁻¹ x for x [channels, N, k]
        dx = d_inv[..., None] * x
        return dx - u[..., None] * (jnp.einsum("cn,cnk->ck", jnp.conj(P), dx)
                                    / denom[:, None])[:, None, :]

    A = jax.vmap(jnp.diag)(Lambda) - P[:, :, None] * jnp.conj(P)[:, None, :]
    eye = jnp.eye(Lambda.shape[-1], dtype=A.dtype)
    rhs = jnp.concatenate([eye + half_dt[..., None] * A, (2 * half_dt * B)[..., None]], axis=-1)
    solved = solve(rhs)
    return solved[..., :-1], solved[..., -1]


@accepts_numpy
def krylov_kernel(a_bar: jax.Array, b_bar: jax.Array, C: jax.Array, length: int) -> jax.Array:
    """K [length, channels], K_l = Re(C Ā^l B̄), by doubling: [B̄, ĀB̄] then
    [.., Ā²(..)], so log₂(length) matrix products. a_bar: [channels, N, N]; b_bar, C:
    [channels, N]."""
    check_rank("krylov_kernel", "a_bar", a_bar, "[channels, d_state, d_state]")
    _check_system("krylov_kernel", a_bar.shape[0], a_bar, b_bar, C)
    check_positive("krylov_kernel", "length", length, allow_none=False)
    return jnp.real(jnp.einsum("cn,cnl->lc", C, krylov_columns(a_bar, b_bar, length)))


def krylov_columns(a_bar: jax.Array, b_bar: jax.Array, length: int) -> jax.Array:
    """The Krylov matrix [..., N, length] of columns Ā^l B̄, l < length, by doubling (log₂ length
    matrix products): the impulse response of the state. a_bar: [..., N, N]; b_bar: [..., N]."""
    columns, power = b_bar[..., None], a_bar
    while columns.shape[-1] < length:
        columns = jnp.concatenate([columns, power @ columns], axis=-1)
        if columns.shape[-1] < length:
            power = power @ power
    return columns[..., :length]


def conj_complete(x: jax.Array) -> jax.Array:
    """[..., N/2] -> [..., N]: appends the complex conjugates."""
    return jnp.concatenate([x, jnp.conj(x)], axis=-1)


def _check_nplr(op, channels, dt, Lambda, P, B, C):
    check_shape(op, "dt", dt, (channels,), "[channels]")
    check_rank(op, "Lambda", Lambda, "[channels, d_state / 2]")
    for name, x in (("Lambda", Lambda), ("P", P), ("B", B), ("C", C)):
        check_shape(op, name, x, (channels, Lambda.shape[1]), "[channels, d_state / 2]")


@accepts_numpy
def s4_kernel(dt: jax.Array, Lambda: jax.Array, P: jax.Array, B: jax.Array, C: jax.Array,
              length: int) -> jax.Array:
    """The S4 convolution kernel K [length, channels] by the Cauchy-kernel method.

    With C̃ = C (I − Ā^length) (so that the truncated generating function is a resolvent at
    the roots of unity z), and d_n(z) = (2/Δ)(1 − z) − Λ_n(1 + z),
        K̂(z) = 2 [s(C̃B) − (1 + z) s(C̃P) s(P*B) / (1 + (1 + z) s(P*P))],
        s(v)(z) = Σ_n v_n / d_n(z)  (Cauchy sums over both halves of each conjugate pair).
    This is S4's formula multiplied through by (1 + z), so z = −1 needs no special case.
    dt: [channels]; Lambda, P, B, C: [channels, N/2] complex. Ā^length costs log₂(length)
    products of [N, N] matrices; the sums cost channels·(length/2 + 1)·N.

    Precision: as Δ|Λ| grows, Ā's eigenvalues approach −1 and C̃ = C(I − Ā^length) cancels
    (relative error about eps·Δ|Λ| near z = −1): at Δ|Λ| ~ 1e3 the float32 kernel is off by
    ~1e-3 relative. Values stay finite; :func:`dense_ssm` (the reference form) has no such loss.
    """
    check_rank("s4_kernel", "dt", dt, "[channels]")
    _check_nplr("s4_kernel", dt.shape[0], dt, Lambda, P, B, C)
    check_positive("s4_kernel", "length", length, allow_none=False)
    a_bar, _ = bilinear_nplr(dt, conj_complete(Lambda), conj_complete(P), conj_complete(B))
    c_full = conj_complete(C)
    half = Lambda.shape[-1]
    c_tilde = (c_full - jnp.einsum("cn,cnm->cm", c_full,
                                   jnp.linalg.matrix_power(a_bar, length)))[:, :half]
    z = jnp.exp(-2j * math.pi * jnp.arange(length // 2 + 1) / length).astype(Lambda.dtype)
    scale = (2 / dt)[:, None, None] * (1 - z)[None, :, None]  # [channels, freq, 1]
    r = 1 / (scale - Lambda[:, None, :] * (1 + z)[None, :, None])  # 1 / d_n(z)
    r_conj = 1 / (scale - jnp.conj(Lambda)[:, None, :] * (1 + z)[None, :, None])

    p_star = jnp.conj(P)
    v = jnp.stack([c_tilde * B, c_tilde * P, p_star * B, p_star * P])  # [4, channels, N/2]
    # Cauchy sums over both halves of each conjugate pair: [4, channels, freq]
    s00, s01, s10, s11 = (jnp.einsum("cfn,kcn->kcf", r, v)
                          + jnp.einsum("cfn,kcn->kcf", r_conj, jnp.conj(v)))
    khat = 2 * (s00 - (1 + z) * s01 * s10 / (1 + (1 + z) * s11))
    return jnp.fft.irfft(khat, n=length, axis=-1).T


def _check_system(op, channels, a_bar, b_bar, C):
    """a_bar [channels, N, N]; b_bar, C [channels, N]."""
    check_rank(op, "a_bar", a_bar, "[channels, d_state, d_state]")
    d_state = a_bar.shape[-1]
    check_shape(op, "a_bar", a_bar, (channels, d_state, d_state), "[channels, d_state, d_state]")
    for name, x in (("b_bar", b_bar), ("C", C)):
        check_shape(op, name, x, (channels, d_state), "[channels, d_state]")


def _check_dense(op, u, a_bar, b_bar, C, initial_state, segment_ids):
    check_rank(op, "u", u, "[batch, length, channels]")
    batch, length, channels = u.shape
    _check_system(op, channels, a_bar, b_bar, C)
    d_state = a_bar.shape[-1]
    if initial_state is not None:
        check_shape(op, "initial_state", initial_state, (batch, channels, d_state),
                    "[batch, channels, d_state]")
    if segment_ids is not None:
        check_shape(op, "segment_ids", segment_ids, (batch, length), "[batch, length]")


@accepts_numpy
def dense_ssm(u: jax.Array, a_bar: jax.Array, b_bar: jax.Array, C: jax.Array, *,
              initial_state: jax.Array | None = None, return_final_state: bool = False,
              segment_ids: jax.Array | None = None, impl: str | Impl = "auto"):
    """Runs ``channels`` discrete SSMs with dense Ā (LSSL's materialized form).

    Args:
      u: [batch, length, channels] real.
      a_bar: [channels, N, N]; b_bar, C: [channels, N] (real, or complex for S4's basis).
      initial_state: [batch, channels, N] (a_bar's dtype); zeros when None.
      segment_ids: [batch, length]; the state resets where a packed document (a maximal run
        of equal ids: [0, 1, 0] are three documents) starts.
      impl: "reference" (sequential scan of x_t = Ā x_{t-1} + B̄ u_t), "xla" (FFT convolution
        with the Krylov kernel; the scan when a state goes in or out or rows are packed, since a
        convolution cannot reset), "auto" (= "xla").

    Returns:
      y [batch, length, channels] in u's dtype (integer u: the default float), and the final
      state when asked. The FFT convolution is causal for finite inputs only: a NaN or Inf in
      u makes every output of its row and channel NaN; the scan forms stay causal.
    """
    op = "dense_ssm"
    u = as_float(u)
    _check_dense(op, u, a_bar, b_bar, C, initial_state, segment_ids)
    batch, length, channels = u.shape
    chosen = resolve_impl(op, impl, ("reference", "xla"))
    stateful = initial_state is not None or return_final_state or segment_ids is not None
    real = jnp.promote_types(u.dtype, jnp.float32)
    if chosen is not Impl.REFERENCE and not stateful and length:
        kernel = krylov_kernel(a_bar, b_bar, C, length)
        return fft_causal_conv(u.astype(real), kernel.astype(real)).astype(u.dtype)
    state = (jnp.zeros((batch, *b_bar.shape), a_bar.dtype) if initial_state is None
             else initial_state.astype(a_bar.dtype))
    keep = ~segment_starts(segment_ids, batch, length)  # [batch, length]

    def step(x, inputs):
        u_t, keep_t = inputs
        y_t, x = dense_ssm_step(jnp.where(keep_t[:, None, None], x, 0), u_t, a_bar, b_bar, C)
        return x, y_t

    state, ys = jax.lax.scan(step, state, (jnp.swapaxes(u, 0, 1).astype(real), keep.T))
    y = jnp.swapaxes(ys, 0, 1).astype(u.dtype)
    return (y, state) if return_final_state else y


@accepts_numpy
def dense_ssm_step(state: jax.Array, u_t: jax.Array, a_bar: jax.Array, b_bar: jax.Array,
                   C: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One token: state [batch, channels, N], u_t [batch, channels] ->
    (y_t [batch, channels], new state)."""
    state = jnp.einsum("cnm,bcm->bcn", a_bar, state) + u_t[..., None].astype(state.dtype) * b_bar
    return jnp.real(jnp.einsum("cn,bcn->bc", C, state)).astype(u_t.dtype), state


def s4_discrete(dt: jax.Array, Lambda: jax.Array, P: jax.Array, B: jax.Array, C: jax.Array):
    """(Ā [channels, N, N], B̄, Ĉ [channels, N]) of the full conjugate-completed S4 system
    (A = diag(Λ̂) − P̂ P̂*), for :func:`dense_ssm`; the arguments are [channels, N/2] halves."""
    lam, p, b, c = (conj_complete(x) for x in (Lambda, P, B, C))
    return (*bilinear_nplr(dt.astype(lam.real.dtype), lam, p, b), c)


@accepts_numpy
def s4_ssm(u: jax.Array, dt: jax.Array, Lambda: jax.Array, P: jax.Array, B: jax.Array,
           C: jax.Array, *, initial_state: jax.Array | None = None,
           return_final_state: bool = False, segment_ids: jax.Array | None = None,
           impl: str | Impl = "auto"):
    """Runs ``channels`` S4 SSMs (NPLR, bilinear) over u.

    Args:
      u: [batch, length, channels] real.
      dt: [channels] positive; Lambda, P, B, C: [channels, N/2] complex, one of each conjugate
        pair (Re Λ < 0 for stability), A = Λ − P P* in that basis.
      initial_state: [batch, channels, N] complex (the conjugate-completed state).
      segment_ids: [batch, length]; the state resets where a packed document (a maximal run
        of equal ids: [0, 1, 0] are three documents) starts.
      impl: "reference" (sequential scan of the discretized full system), "xla" (FFT
        convolution with the Cauchy kernel of :func:`s4_kernel`; the scan when a state goes in
        or out or rows are packed), "auto" (= "xla").

    Returns:
      y [batch, length, channels] in u's dtype (integer u: the default float), and the final
      state when asked. The FFT convolution is causal for finite inputs only: a NaN or Inf in
      u makes every output of its row and channel NaN; the scan forms stay causal.
    """
    op = "s4_ssm"
    u, dt = as_floats(u, dt)
    check_rank(op, "u", u, "[batch, length, channels]")
    batch, length, channels = u.shape
    _check_nplr(op, channels, dt, Lambda, P, B, C)
    chosen = resolve_impl(op, impl, ("reference", "xla"))
    stateful = initial_state is not None or return_final_state or segment_ids is not None
    real = jnp.promote_types(u.dtype, jnp.float32)
    cplx = jnp.promote_types(real, jnp.complex64)
    dt = dt.astype(real)
    Lambda, P, B, C = (x.astype(cplx) for x in (Lambda, P, B, C))
    if chosen is not Impl.REFERENCE and not stateful and length:
        kernel = s4_kernel(dt, Lambda, P, B, C, length)
        return fft_causal_conv(u.astype(real), kernel).astype(u.dtype)
    return dense_ssm(u, *s4_discrete(dt, Lambda, P, B, C), initial_state=initial_state,
                     return_final_state=return_final_state, segment_ids=segment_ids,
                     impl="reference")
