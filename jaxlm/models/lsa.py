"""Single-layer linear self-attention for in-context linear regression, as analysed in
"Trained Transformers Learn Linear Models In-Context" (Zhang, Frei, Bartlett).

A prompt of N examples and a query is the matrix E = [[x_1 .. x_N, x_q], [y_1 .. y_N, 0]] of
shape [d+1, N+1]; the model is f(E) = E + W_PV E (E^T W_KQ E) / N and its prediction the bottom
right entry of f(E). From the paper's initialisation (W_PV = s [[0, 0], [0, 1]],
W_KQ = s [[Theta Theta^T, 0], [0, 0]]) gradient flow on the population loss reaches the global
minimum, where the prediction is

    y_hat = x_q^T Gamma^{-1} (1/N) sum_i y_i x_i,   Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I,

for x ~ N(0, Lambda), w ~ N(0, I). Why: with S = (1/N) sum_i x_i x_i^T the predictor
x_q^T W S w has expected squared error tr(Lambda) - 2 tr(Lambda W Lambda) + tr(W^T Lambda W E[S^2]),
and for Gaussian x, E[S^2] = Lambda^2 + (Lambda^2 + tr(Lambda) Lambda) / N = Lambda Gamma, so the
minimiser is W = Gamma^{-1}. The tests check the risk formula against Monte Carlo and the
trained model against the minimum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.ops.checks import accepts_numpy


class LinearSelfAttention(nnx.Module):
    """f(E) = E + W_PV E (E^T W_KQ E) / N; ``__call__(xs [batch, N+1, d], ys [batch, N+1])``
    (the last point is the query; its y is not read) -> predictions [batch]."""

    def __init__(self, n_dims: int, *, init_scale: float = 0.1, rngs: nnx.Rngs):
        d1 = n_dims + 1
        theta = jax.random.normal(rngs.params(), (n_dims, n_dims))
        theta_theta = theta @ theta.T
        theta_theta = theta_theta / jnp.linalg.norm(theta_theta)  # ||Theta Theta^T||_F = 1
        self.n_dims = n_dims
        self.w_kq = nnx.Param(init_scale * jnp.zeros((d1, d1)).at[:n_dims, :n_dims]
                              .set(theta_theta))
        self.w_pv = nnx.Param(init_scale * jnp.zeros((d1, d1)).at[n_dims, n_dims].set(1.0))

    def __call__(self, xs: jax.Array, ys: jax.Array) -> jax.Array:
        if xs.ndim != 3 or xs.shape[-1] != self.n_dims or ys.shape != xs.shape[:-1]:
            raise ValueError(f"LinearSelfAttention: xs must be [batch, N+1, {self.n_dims}] and "
                             f"ys [batch, N+1], got {tuple(xs.shape)} and {tuple(ys.shape)}")
        return lsa_predict(self.w_pv[...], self.w_kq[...], xs, ys)


@accepts_numpy
def lsa_predict(w_pv: jax.Array, w_kq: jax.Array, xs: jax.Array, ys: jax.Array) -> jax.Array:
    """The bottom-right entry of f(E): xs [batch, N+1, d], ys [batch, N+1] -> [batch]."""
    n = xs.shape[1] - 1
    e = jnp.concatenate([xs, ys.at[:, -1].set(0.0)[..., None]], axis=-1)  # [batch, N+1, d+1]
    scores = e @ (w_kq @ e[:, -1, :, None])  # E^T W_KQ e_q: [batch, N+1, 1]
    mixed = jnp.einsum("bnd,bn->bd", e, scores[..., 0]) / n  # E (E^T W_KQ e_q) / N
    return mixed @ w_pv[-1]


def lsa_gamma(eigenvalues: jax.Array, n_train: int) -> jax.Array:
    """The diagonal of Gamma = (1 + 1/N) Lambda + tr(Lambda)/N I for Lambda = diag(eigenvalues):
    [d]."""
    lam = jnp.asarray(eigenvalues)
    return (1 + 1 / n_train) * lam + lam.sum() / n_train


def lsa_optimum(eigenvalues: jax.Array, n_train: int) -> tuple[jax.Array, jax.Array]:
    """(W_PV, W_KQ) at the global minimum: W_PV = [[0, 0], [0, 1]], W_KQ = [[Gamma^-1, 0],
    [0, 0]] (only the product of the two blocks matters)."""
    gamma_inv = 1.0 / lsa_gamma(eigenvalues, n_train)
    d = gamma_inv.shape[0]
    w_kq = jnp.zeros((d + 1, d + 1), gamma_inv.dtype).at[:d, :d].set(jnp.diag(gamma_inv))
    w_pv = jnp.zeros((d + 1, d + 1), gamma_inv.dtype).at[d, d].set(1.0)
    return w_pv, w_kq


def lsa_risk(eigenvalues: jax.Array, n_train: int, n_test: int | None = None) -> jax.Array:
    """Expected squared error E(y_hat - y_q)^2 of the optimum for prompts of N = ``n_train``
    examples, evaluated on prompts of M = ``n_test`` examples (default M = N):

        tr(Lambda) - 2 tr(Lambda^2 Gamma_N^-1) + tr(Gamma_N^-2 Lambda^2 Gamma_M),

    which at M = N is tr(Lambda) - tr(Lambda^2 Gamma_N^-1); for Lambda = I it is
    d (d+1) / (N + d + 1)."""
    lam = jnp.asarray(eigenvalues)
    g_n, g_m = lsa_gamma(lam, n_train), lsa_gamma(lam, n_test or n_train)
    return lam.sum() - 2 * (lam ** 2 / g_n).sum() + (lam ** 2 * g_m / g_n ** 2).sum()
