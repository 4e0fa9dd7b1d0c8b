"""Linear regression in context ("What Can Transformers Learn In-Context? A Case Study of Simple
Function Classes"): the model's squared error against the number of in-context examples, beside
least squares, ridge, averaging and nearest neighbours fitted to the same prefixes."""

from __future__ import annotations

import numpy as np
from flax import nnx

from jaxlm.data import DataConfig, deinterleave
from jaxlm.probes.common import probe_batches

BASELINES = ("least_squares", "ridge", "averaging", "nearest_3", "zero")


def baseline_predictions(xs: np.ndarray, ys: np.ndarray, *, ridge: float
                         ) -> dict[str, np.ndarray]:
    """Each baseline's prediction of y_i from the i-1 earlier points, for every i.

    xs: [batch, k, d], ys: [batch, k] -> {name: [batch, k]}, computed in float64 with NumPy on
    the host (classical baselines, not the model). Least squares is the minimum-norm solution
    (pseudo-inverse) while i-1 < d; ridge solves (X^T X + ridge I) w = X^T y (the posterior mean
    for w ~ N(0, I) when ridge is the noise variance); averaging is w = mean_j y_j x_j;
    nearest_3 averages the y of the 3 nearest earlier x.
    """
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    k, d = xs.shape[-2:]
    prefix = (np.arange(k)[None, :] < np.arange(k)[:, None]).astype(np.float64)  # [query, ctx]
    xm = prefix[None, :, :, None] * xs[:, None]  # [batch, query, ctx, d]
    ym = prefix[None] * ys[:, None]  # [batch, query, ctx]
    xty = np.einsum("bqkd,bqk->bqd", xm, ym)
    w_ls = np.einsum("bqdk,bqk->bqd", np.linalg.pinv(xm), ym)
    gram = np.einsum("bqkd,bqke->bqde", xm, xm) + ridge * np.eye(d)
    w_ridge = np.linalg.solve(gram, xty[..., None])[..., 0]
    w_avg = xty / np.maximum(prefix.sum(1), 1)[None, :, None]
    dist = np.square(xs[:, :, None] - xs[:, None]).sum(-1)  # [batch, query, ctx]
    dist = np.where(prefix[None] > 0, dist, np.inf)
    neighbours = np.argsort(dist, axis=-1)[..., :3]
    chosen = np.take_along_axis(np.broadcast_to(prefix, dist.shape), neighbours, -1)
    near_y = np.take_along_axis(np.broadcast_to(ys[:, None], dist.shape), neighbours, -1)
    near = (near_y * chosen).sum(-1) / np.maximum(chosen.sum(-1), 1)
    predict = lambda w: np.einsum("bqd,bqd->bq", w, xs)
    return {"least_squares": predict(w_ls), "ridge": predict(w_ridge),
            "averaging": predict(w_avg), "nearest_3": near, "zero": np.zeros_like(ys)}


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
    for batch, predictions in probe_batches(model, data, num_examples=num_examples,
                                           batch_size=batch_size, seed=seed):
        xs, ys = deinterleave(batch["inputs"])
        outputs = {"model": predictions[:, 0::2],
                   **baseline_predictions(xs, ys, ridge=max(config.noise_std ** 2, 1e-3))}
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
