"""HiPPO-LegS and its normal-plus-low-rank (NPLR) form; the LMU's LegT.

"HiPPO: Recurrent Memory with Optimal Polynomial Projections" gives the LegS matrices; "Efficiently
Modeling Long Sequences with Structured State Spaces" (S4) writes them as A = V Λ V* − P Pᵀ with
unitary V, so that in the basis V the state matrix is diagonal plus rank one. "Combining
Recurrent, Convolutional, and Continuous-time Models with Linear State-Space Layers" (LSSL) uses
the LegS A as it is. "Legendre Memory Units: Continuous-Time Representation in Recurrent Neural
Networks" (LMU) uses the translated Legendre measure (LegT) over a sliding window. These are fixed initialisations, computed once in float64 NumPy.
"""

from __future__ import annotations

import numpy as np


def hippo_legs(d_state: int) -> tuple[np.ndarray, np.ndarray]:
    """The HiPPO-LegS (A [N, N], B [N]): A_nk = −√(2n+1)√(2k+1) for n > k, −(n+1) for n = k,
    0 above the diagonal; B_n = √(2n+1)."""
    if not isinstance(d_state, int) or d_state < 1:
        raise ValueError(f"hippo_legs: d_state must be a positive integer, got {d_state!r}")
    n = np.arange(d_state)
    r = np.sqrt(2.0 * n + 1.0)
    return -np.tril(np.outer(r, r), -1) - np.diag(n + 1.0), r.copy()


def nplr_legs(d_state: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The NPLR form of HiPPO-LegS, keeping one eigenvalue of each conjugate pair.

    With P_n = √(n + 1/2), A + P Pᵀ = −I/2 + (skew-symmetric), a normal matrix with eigenvalues
    Λ = −1/2 + iω. Returns (Λ [N/2], P̃ = V*P [N/2], B̃ = V*B [N/2], V [N, N/2]) complex128, for
    the eigenvalues with ω > 0; the other half is their complex conjugate, so that
    A = V̂ diag(Λ̂) V̂* − P Pᵀ with V̂ = [V, V̄] and Λ̂ = [Λ, Λ̄].
    """
    if not isinstance(d_state, int) or d_state < 2 or d_state % 2:
        raise ValueError(f"nplr_legs: d_state must be an even integer >= 2 (eigenvalues come in "
                         f"conjugate pairs), got {d_state!r}")
    A, B = hippo_legs(d_state)
    P = np.sqrt(np.arange(d_state) + 0.5)
    normal = A + np.outer(P, P)
    skew = (normal - normal.T) / 2
    omega, V = np.linalg.eigh(-1j * skew)  # skew v = iω v; ascending ω, so ω > 0 is the top half
    V = V[:, d_state // 2:]
    Lambda = np.diag(normal).mean() + 1j * omega[d_state // 2:]
    return Lambda, V.conj().T @ P, V.conj().T @ B, V


def hippo_legt(order: int, theta: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The LMU's LegT system θ ṁ = A m + B u, as (A / θ [N, N], B / θ [N]):
    A_ij = (2i+1)·(−1 if i < j else (−1)^(i−j+1)), B_i = (2i+1)(−1)^i.

    m(t) holds the coefficients of the input's window [t − θ, t] in the shifted Legendre
    polynomials: u(t − rθ) ≈ Σ_i m_i(t) P̃_i(r) for r in [0, 1]."""
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"hippo_legt: order must be a positive integer, got {order!r}")
    if not theta > 0:
        raise ValueError(f"hippo_legt: theta must be > 0 (the window length), got {theta!r}")
    i, j = np.arange(order)[:, None], np.arange(order)[None, :]
    A = (2 * i + 1) * np.where(i < j, -1.0, (-1.0) ** (i - j + 1))
    B = (2 * np.arange(order) + 1.0) * (-1.0) ** np.arange(order)
    return A / theta, B / theta
