"""Diagonal linear time-invariant state spaces (S4D) and FFT causal convolution.

"On the Parameterization and Initialization of Diagonal State Space Models" (S4D). Each of
``channels`` independent SSMs has a complex diagonal A [N], input B [N], output C [N] and step
Δ; zero-order hold gives Ā = exp(ΔA), B̄ = (Ā − 1)/A · B, and

    x_t = Ā x_{t-1} + B̄ u_t,    y_t = 2 Re(C · x_t)

(the factor 2 and Re stand for the conjugate half of the spectrum); the bilinear transform
Ā = (1 + ΔA/2)/(1 − ΔA/2), B̄ = ΔB/(1 − ΔA/2) is the alternative. As a convolution,
y = K * u with K_l = 2 Re(Σ_n C_n B̄_n Ā_n^l), a Vandermonde product.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxlm.ops import chunking as ch
from jaxlm.ops.checks import Impl, accepts_numpy, as_floats, check_rank, check_shape, resolve_impl
from jaxlm.ops.segments import document_ids, segment_starts


def s4d_init(kind: str, channels: int, d_state: int) -> tuple[jax.Array, jax.Array]:
    """(log(-Re A), Im A), each [channels, d_state], for S4D-Lin (A_n = -1/2 + iπn), S4D-Inv
    (A_n = -1/2 + i N/π (N/(2n+1) - 1)) or S4D-Real (A_n = -(n+1))."""
    n = jnp.arange(d_state, dtype=jnp.float32)
    if kind == "lin":
        re, im = jnp.full_like(n, 0.5), math.pi * n
    elif kind == "inv":
        re, im = jnp.full_like(n, 0.5), d_state / math.pi * (d_state / (2 * n + 1) - 1)
    elif kind == "real":
        re, im = n + 1, jnp.zeros_like(n)
    else:
        raise ValueError(f"s4d_init: kind={kind!r} is unknown; expected 'lin', 'inv' or 'real'")
    return (jnp.broadcast_to(jnp.log(re), (channels, d_state)),
            jnp.broadcast_to(im, (channels, d_state)))


@accepts_numpy
def zoh(dt: jax.Array, A: jax.Array, B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Zero-order hold: (Ā, B̄) = (exp(ΔA), (exp(ΔA) − 1)/A · B). dt: [channels];
    A, B: [channels, N] complex.

    Exact for any ΔA with Re ΔA ≤ 0: (exp(ΔA) − 1)/A is computed as expm1(ΔA)/A (no
    cancellation when ΔA is small), and as its series Δ(1 + ΔA/2 + (ΔA)²/6 + (ΔA)³/24) where
    |ΔA| < eps^(1/4), so A = 0 gives B̄ = ΔB (the limit) and finite gradients; a large ΔA
    gives Ā = 0 and B̄ = −B/A, never an overflow."""
    dA = dt[:, None] * A
    small = jnp.abs(dA) < jnp.finfo(dA.dtype).eps ** 0.25
    z = jnp.where(small, dA, 0)  # the unused branch stays finite, so do its gradients
    series = dt[:, None] * (1 + z / 2 * (1 + z / 3 * (1 + z / 4)))
    factor = jnp.where(small, series, jnp.expm1(dA) / jnp.where(small, 1, A))
    return jnp.exp(dA), factor * B


@accepts_numpy
def bilinear(dt: jax.Array, A: jax.Array, B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Bilinear (Tustin) discretization of a diagonal A: Ā = (1 + ΔA/2) / (1 − ΔA/2),
    B̄ = Δ B / (1 − ΔA/2). dt: [channels]; A, B: [channels, N] complex.

    With Re ΔA ≤ 0, |1 − ΔA/2| ≥ 1, so nothing overflows; ΔA = −2 is the transform's zero,
    Ā = 0 (the state keeps only the latest input), which every form of :func:`diagonal_ssm`
    computes exactly. The pole ΔA = +2 needs Re A > 0 (an unstable system, outside the
    contract): there Ā and B̄ are inf / nan."""
    half = dt[:, None] / 2 * A
    return (1 + half) / (1 - half), dt[:, None] * B / (1 - half)


DISCRETIZATIONS = {"zoh": zoh, "bilinear": bilinear}


def discretize(op: str, discretization: str, dt: jax.Array, A: jax.Array, B: jax.Array):
    """(Ā, B̄) of a diagonal SSM by ``discretization``: "zoh" or "bilinear"."""
    if discretization not in DISCRETIZATIONS:
        raise ValueError(f"{op}: discretization={discretization!r} is unknown; expected one of "
                         f"{sorted(DISCRETIZATIONS)}")
    return DISCRETIZATIONS[discretization](dt, A, B)


def ssm_kernel(a_bar: jax.Array, b_bar: jax.Array, C: jax.Array, length: int) -> jax.Array:
    """K [length, channels] with K_l = 2 Re(Σ_n C_n B̄_n Ā_n^l) (Vandermonde).

    The powers are exp(l log Ā) for l ≥ 2, Ā itself for l = 1 and 1 for l = 0, with Ā = 0
    (an underflowed exp(ΔA), or the bilinear zero) giving exactly 0 for l ≥ 1: never
    0 · log 0, so values and gradients stay finite for any |Ā| ≤ 1."""
    zero = a_bar == 0
    log_a = jnp.log(jnp.where(zero, 1, a_bar))
    l = jnp.arange(length)[:, None, None]
    powers = jnp.where(zero, 0, jnp.exp(l * log_a[None]))  # [L, c, N]
    powers = jnp.where(l == 0, 1, jnp.where(l == 1, a_bar[None], powers)).astype(a_bar.dtype)
    return 2 * jnp.real(jnp.einsum("cn,lcn->lc", C * b_bar, powers))


@accepts_numpy
def fft_causal_conv(u: jax.Array, kernel: jax.Array) -> jax.Array:
    """y_t = Σ_{s≤t} kernel[t - s] u_s by FFT, zero-padded to 2·length (no circular wrap).

    u: [batch, length, channels]; kernel: [length, channels]. Returns u's shape. Causal for
    finite inputs only: one non-finite input makes every output of its row and channel NaN."""
    length = u.shape[1]
    n = 2 * length
    acc = jnp.promote_types(u.dtype, jnp.float32)
    spectrum = jnp.fft.rfft(u.astype(acc), n=n, axis=1) * jnp.fft.rfft(kernel.astype(acc), n=n,
                                                                         axis=0)
    return jnp.fft.irfft(spectrum, n=n, axis=1)[:, :length].astype(u.dtype)


@accepts_numpy
def diagonal_ssm(u: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, *,
                 initial_state: jax.Array | None = None, return_final_state: bool = False,
                 segment_ids: jax.Array | None = None, discretization: str = "zoh",
                 impl: str | Impl = "auto"):
    """Runs ``channels`` diagonal SSMs over u.

    Args:
      u: [batch, length, channels] real.
      dt: [channels] positive steps; A, B, C: [channels, N] complex (Re A ≤ 0 for stability).
        Every form is exact and has finite gradients for any such ΔA, however large (Ā
        underflowing to 0, the bilinear zero ΔA = −2; see :func:`zoh`, :func:`bilinear`).
      initial_state: [batch, channels, N] complex; zeros when None.
      segment_ids: [batch, length]; the state resets where a packed document (a maximal run
        of equal ids: [0, 1, 0] are three documents) starts.
      discretization: "zoh" (S4D's default) or "bilinear".
      impl: "reference" (sequential scan), "xla" (FFT convolution with the Vandermonde
        kernel; an associative scan when a state goes in or out or rows are packed), "auto".

    Returns:
      y [batch, length, channels] in u's dtype (integer u: the default float), and the final
      state when asked. The FFT convolution is causal for finite inputs only: a NaN or Inf in
      u at any position makes every output of its row NaN (each output frequency sums every
      input). The scan forms stay causal; use them (impl="reference", or a segment_ids or
      state argument) where later inputs may be non-finite.
    """
    op = "diagonal_ssm"
    u, dt, initial_state = as_floats(u, dt, initial_state)
    check_rank(op, "u", u, "[batch, length, channels]")
    batch, length, channels = u.shape
    check_shape(op, "dt", dt, (channels,), "[channels]")
    check_rank(op, "A", A, "[channels, d_state]")
    d_state = A.shape[1]
    for name, x in (("A", A), ("B", B), ("C", C)):
        check_shape(op, name, x, (channels, d_state), "[channels, d_state]")
    if segment_ids is not None:
        check_shape(op, "segment_ids", segment_ids, (batch, length), "[batch, length]")
    if initial_state is not None:
        check_shape(op, "initial_state", initial_state, (batch, channels, d_state),
                    "[batch, channels, d_state]")
    chosen = resolve_impl(op, impl, ("reference", "xla"))
    chosen = Impl.XLA if chosen is Impl.AUTO else chosen
    real = jnp.promote_types(jnp.result_type(u, dt), jnp.float32)
    cplx = jnp.promote_types(real, jnp.complex64)
    a_bar, b_bar = discretize(op, discretization, dt.astype(real), A.astype(cplx), B.astype(cplx))
    C = C.astype(cplx)
    stateful = initial_state is not None or return_final_state or segment_ids is not None
    if chosen is Impl.XLA and not stateful and length:
        return fft_causal_conv(u.astype(real), ssm_kernel(a_bar, b_bar, C, length)).astype(
            u.dtype)
    state = (jnp.zeros((batch, channels, d_state), cplx) if initial_state is None
             else initial_state.astype(cplx))
    if batch == 0 or length == 0:
        y = jnp.zeros(u.shape, u.dtype)
        return (y, state) if return_final_state else y
    starts = segment_starts(document_ids(segment_ids), batch, length)
    decay = jnp.where(starts[..., None, None], 0, a_bar)  # [batch, length, c, N]
    decay = jnp.broadcast_to(decay, (batch, length, channels, d_state))
    inputs = u.astype(real)[..., None] * b_bar
    if chosen is Impl.REFERENCE:
        def step(x, t):
            x = t[0] * x + t[1]
            return x, x
        state, states = jax.lax.scan(step, state, (jnp.moveaxis(decay, 1, 0),
                                                   jnp.moveaxis(inputs, 1, 0)))
        states = jnp.moveaxis(states, 0, 1)
    else:
        states = ch.linear_recurrence(decay, inputs, state)
        state = states[:, -1]
    y = 2 * jnp.real(jnp.einsum("blcn,cn->blc", states, C)).astype(u.dtype)
    return (y, state) if return_final_state else y


@accepts_numpy
def diagonal_ssm_step(state: jax.Array, u_t: jax.Array, dt: jax.Array, A: jax.Array,
                      B: jax.Array, C: jax.Array, *, discretization: str = "zoh"
                      ) -> tuple[jax.Array, jax.Array]:
    """One token: state [batch, channels, N] complex, u_t [batch, channels].
    Returns (y_t [batch, channels], new state)."""
    a_bar, b_bar = discretize("diagonal_ssm_step", discretization, dt, A.astype(state.dtype),
                              B.astype(state.dtype))
    state = a_bar * state + u_t[..., None] * b_bar
    return 2 * jnp.real(jnp.einsum("bcn,cn->bc", state, C.astype(state.dtype))), state
