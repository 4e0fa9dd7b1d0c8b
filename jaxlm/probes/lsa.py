"""The linear-self-attention probe of "Trained Transformers Learn Linear Models In-Context"
(Zhang, Frei, Bartlett): train the single LSA layer by gradient descent on fresh prompts from
the paper's initialisation, and compare its test loss with the closed-form global minimum."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxlm.data import LinearRegressionConfig, regression_prompt
from jaxlm.models.lsa import LinearSelfAttention, lsa_optimum, lsa_predict, lsa_risk


@dataclasses.dataclass(frozen=True)
class LSAConfig:
    n_dims: int = 5
    n_train: int = 20  # N: in-context examples per training prompt
    n_test: int = 20  # M: in-context examples per test prompt
    covariance: str = "isotropic"  # of x in training and test (see LinearRegressionConfig)
    test_covariance: str = ""  # "" = as in training; otherwise a covariate shift
    task_shift: float = 0.0  # test prompts draw w ~ N(task_shift, I): a task shift
    query_scale: float = 1.0  # test queries are scaled by this: a query shift
    steps: int = 2000
    batch_size: int = 1000
    learning_rate: float = 0.003  # 0.05 diverges at d=5, N=20 (the loss is quartic)
    init_scale: float = 0.1
    test_prompts: int = 50_000
    seed: int = 0


def _prompts(key, n, config: LinearRegressionConfig):
    return jax.vmap(lambda k: regression_prompt(k, config))(jax.random.split(key, n))[:2]


def train_lsa(config: LSAConfig) -> dict[str, float]:
    """Trains an LSA layer by plain gradient descent (fresh prompts every step) and returns
    {"trained_loss", "optimum_loss" (the closed-form minimum on the same test prompts),
    "theory_loss" (its expectation, ``lsa_risk``; in-distribution only), "ratio"
    (trained / optimum)}; losses are mean squared errors of the query prediction."""
    train_data = LinearRegressionConfig(n_dims=config.n_dims, num_points=config.n_train + 1,
                                        covariance=config.covariance)
    test_data = dataclasses.replace(
        train_data, num_points=config.n_test + 1,
        covariance=config.test_covariance or config.covariance, task_shift=config.task_shift,
        query_scale=config.query_scale)
    init_key, train_key, test_key = jax.random.split(jax.random.key(config.seed), 3)
    model = LinearSelfAttention(config.n_dims, init_scale=config.init_scale,
                                rngs=nnx.Rngs(params=init_key))
    graphdef, params = nnx.split(model)
    tx = optax.sgd(config.learning_rate)

    def loss_fn(params, xs, ys):
        return jnp.mean(jnp.square(nnx.merge(graphdef, params)(xs, ys) - ys[:, -1]))

    @jax.jit
    def step(params, opt_state, index):
        xs, ys = _prompts(jax.random.fold_in(train_key, index), config.batch_size, train_data)
        grads = jax.grad(loss_fn)(params, xs, ys)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for index in range(config.steps):
        params, opt_state = step(params, opt_state, index)
    xs, ys = _prompts(test_key, config.test_prompts, test_data)
    trained = float(loss_fn(params, xs, ys))
    w_pv, w_kq = lsa_optimum(train_data.eigenvalues(), config.n_train)
    optimum = float(jnp.mean(jnp.square(lsa_predict(w_pv, w_kq, xs, ys) - ys[:, -1])))
    shifted = (config.test_covariance not in ("", config.covariance) or config.task_shift
               or config.query_scale != 1.0)
    theory = float("nan") if shifted else float(
        lsa_risk(train_data.eigenvalues(), config.n_train, config.n_test))
    return {"trained_loss": trained, "optimum_loss": optimum, "theory_loss": theory,
            "ratio": trained / optimum}
