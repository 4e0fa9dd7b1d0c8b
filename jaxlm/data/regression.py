"""Linear regression in context, from "What Can Transformers Learn In-Context? A Case Study of
Simple Function Classes" (Garg et al.) and "Trained Transformers Learn Linear Models In-Context"
(Zhang, Frei, Bartlett).

Each prompt draws its own task w ~ N(task_shift, I_d) and points x_i ~ N(0, x_scale^2 Lambda)
(Lambda = I, or "skewed": eigenvalues proportional to 1/(i+1), rescaled to trace d), with
y_i = w.x_i + noise_std * eps_i. The model reads x_1, y_1, x_2, y_2, ..., x_k, y_k as 2k vectors
of width d+1 (x_i as (x_i, 0), y_i as (0, y_i)) and predicts y_i at the position of x_i, so
every prefix is an example with i-1 points in context.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import check_positive_fields

COVARIANCES = ("isotropic", "skewed")


@dataclasses.dataclass(frozen=True)
class LinearRegressionConfig:
    n_dims: int = 5
    num_points: int = 11  # k: the prompt holds x_1, y_1, ..., x_k, y_k
    noise_std: float = 0.0
    covariance: str = "isotropic"
    x_scale: float = 1.0
    task_shift: float = 0.0  # mean of every coordinate of w
    query_scale: float = 1.0  # the last point x_k is scaled by this (a query shift)

    def __post_init__(self):
        check_positive_fields("linear_regression", self, ("n_dims", "num_points"))
        if self.covariance not in COVARIANCES:
            raise ValueError(f"linear_regression.covariance={self.covariance!r}; expected one "
                             f"of {list(COVARIANCES)}")
        for name in ("noise_std", "x_scale", "query_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"linear_regression.{name} must be >= 0, "
                                 f"got {getattr(self, name)}")

    @property
    def seq_len(self) -> int:
        return 2 * self.num_points

    @property
    def input_dim(self) -> int:
        return self.n_dims + 1

    @property
    def vocab_size(self) -> int:
        return 0  # continuous inputs: no vocabulary

    def eigenvalues(self) -> jax.Array:
        """The diagonal of Lambda, the covariance of x (before ``x_scale``): [n_dims]."""
        d = self.n_dims
        if self.covariance == "isotropic":
            return jnp.ones(d)
        eig = 1.0 / jnp.arange(1, d + 1)
        return eig * d / eig.sum()


def regression_prompt(key: jax.Array, config: LinearRegressionConfig
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One prompt: xs [k, d], ys [k] and the task w [d] (float32)."""
    d, k = config.n_dims, config.num_points
    k_w, k_x, k_noise = jax.random.split(key, 3)
    w = jax.random.normal(k_w, (d,)) + config.task_shift
    scale = config.x_scale * jnp.sqrt(config.eigenvalues())
    xs = jax.random.normal(k_x, (k, d)) * scale
    xs = xs.at[-1].multiply(config.query_scale)
    ys = xs @ w + config.noise_std * jax.random.normal(k_noise, (k,))
    return xs, ys, w


def interleave(xs: jax.Array, ys: jax.Array) -> jax.Array:
    """xs [..., k, d], ys [..., k] -> the model's input rows [..., 2k, d+1]."""
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    zeros_x = jnp.zeros(ys.shape + (1,), xs.dtype)
    x_rows = jnp.concatenate([xs, zeros_x], axis=-1)
    y_rows = jnp.concatenate([jnp.zeros_like(xs), ys[..., None]], axis=-1)
    rows = jnp.stack([x_rows, y_rows], axis=-2)  # [..., k, 2, d+1]
    return rows.reshape(*xs.shape[:-2], 2 * xs.shape[-2], xs.shape[-1] + 1)


def deinterleave(inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The inverse of :func:`interleave`: rows [..., 2k, d+1] -> (xs [..., k, d], ys [..., k])."""
    inputs = jnp.asarray(inputs)
    return inputs[..., 0::2, :-1], inputs[..., 1::2, -1]


def linear_regression_example(key: jax.Array, config: LinearRegressionConfig
                              ) -> dict[str, jax.Array]:
    """inputs [2k, d+1] float32; targets [2k] float32 (y_i at x_i's position); mask [2k] bool
    (True at the x positions, where the loss is taken)."""
    xs, ys, _ = regression_prompt(key, config)
    targets = jnp.repeat(ys, 2).at[1::2].set(0.0)
    mask = jnp.arange(config.seq_len) % 2 == 0
    return {"inputs": interleave(xs, ys), "targets": targets, "mask": mask}
