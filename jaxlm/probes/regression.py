"""Linear regression in context ("What Can Transformers Learn In-Context? A Case Study of Simple
Function Classes"): the model's squared error against the number of in-context examples, beside
least squares, ridge, averaging and nearest neighbours fitted to the same prefixes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.data import DataConfig, deinterleave
from jaxlm.probes.common import test_batches

BASELINES = ("least_squares", "ridge", "averaging", "nearest_3", "zero")


def _prefix_mask(num_points: int) -> jax.Array:
    """[k, k] bool: row i marks the i points x_1..x_i in context when predicting y_{i+1}."""
    return jnp.arange(num_points)[None, :] < jnp.arange(num_points)[:, None]


@functools.partial(jax.jit, static_argnames=("ridge",))
def baseline_predictions(xs: jax.Array, ys: jax.Array, *, ridge: float
                         ) -> dict[str, jax.Array]:
    """Each baseline's prediction of y_i from the i-1 earlier points, for every i.

    xs: [batch, k, d], ys: [batch, k] -> {name: [batch, k]}. Least squares is the minimum-norm
    solution (pseudo-inverse) while i-1 < d; ridge solves (X^T X + ridge I) w = X^T y (the
    posterior mean for w ~ N(0, I) when ridge is the noise variance); averaging is
    w = mean_j y_j x_j; nearest_3 averages the y of the 3 nearest earlier x.
    """
    k, d = xs.shape[-2:]
    prefix = _prefix_mask(k).astype(xs.dtype)  # [k (query), k (context)]

    def one(x, y):
        xm = prefix[:, :, None] * x[None]  # [k, k, d]: the in-context points per query
        ym = prefix * y[None]  # [k, k]
        w_ls = jnp.einsum("qdk,qk->qd", jnp.linalg.pinv(xm), ym)
        gram = jnp.einsum("qkd,qke->qde", xm, xm) + ridge * jnp.eye(d)
        w_ridge = jnp.linalg.solve(gram, jnp.einsum("qkd,qk->qd", xm, ym)[..., None])[..., 0]
        count = jnp.maximum(prefix.sum(1, keepdims=True), 1)
        w_avg = jnp.einsum("qkd,qk->qd", xm, ym) / count
        dist = jnp.sum(jnp.square(x[:, None] - x[None]), -1)  # [k, k]
        dist = jnp.where(prefix > 0, dist, jnp.inf)
        neighbours = jnp.argsort(dist, axis=1)[:, :3]  # [k, 3]
        chosen = jnp.take_along_axis(prefix, neighbours, 1)  # only earlier points count
        near = (y[neighbours] * chosen).sum(1) / jnp.maximum(chosen.sum(1), 1)
        predict = lambda w: jnp.einsum("qd,qd->q", w, x)
        return {"least_squares": predict(w_ls), "ridge": predict(w_ridge),
                "averaging": predict(w_avg), "nearest_3": near, "zero": jnp.zeros_like(y)}

    return jax.vmap(one)(xs, ys)


def evaluate_regression(model: nnx.Module, data: DataConfig, *, num_examples: int = 1000,
                        batch_size: int = 250, seed: int = 1234) -> dict:
    """Squared error of y_i's prediction divided by d, averaged over prompts, for i-1 = 0..k-1
    points in context (Garg et al.'s normalised error: the zero predictor scores about 1).

    Returns {"error@n": the model's error with n points in context, for n = d/2, d, 2d where the
    prompt is long enough; "least_squares@n" and so on for the baselines; "curve": {name:
    [k] errors}} (the curve is a dict of lists, kept for plots)."""
    config = data.linear_regression
    d = config.n_dims
    sums: dict[str, np.ndarray] = {}
    rows = 0
    for batch, predictions in test_batches(model, data, num_examples=num_examples,
                                           batch_size=batch_size, seed=seed):
        xs, ys = deinterleave(batch["inputs"])
        outputs = {"model": predictions[:, 0::2],
                   **jax.device_get(baseline_predictions(
                       xs, ys, ridge=max(config.noise_std ** 2, 1e-3)))}
        for name, pred in outputs.items():
            error = np.square(np.asarray(pred, np.float64) - ys).sum(0) / d
            sums[name] = sums.get(name, 0.0) + error
        rows += len(ys)
    curve = {name: (total / rows).tolist() for name, total in sums.items()}
    metrics: dict = {"curve": curve}
    for n in sorted({max(d // 2, 1), d, 2 * d}):
        if n < config.num_points:
            metrics[f"error@{n}"] = curve["model"][n]
            for name in BASELINES:
                metrics[f"{name}@{n}"] = curve[name][n]
    return metrics
