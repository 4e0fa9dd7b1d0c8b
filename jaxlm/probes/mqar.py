"""MQAR probe: recall accuracy on the queried positions only (Zoology's metric)."""

from __future__ import annotations

import dataclasses

import numpy as np
from flax import nnx

from jaxlm.data import DataConfig, make_source
from jaxlm.train import evaluate_params, make_eval_step


def evaluate_mqar(model: nnx.Module, data: DataConfig, *, num_examples: int = 1000,
                  batch_size: int = 250, seed: int = 1234) -> dict[str, float]:
    """Accuracy of ``model`` on fresh MQAR test examples.

    Returns {"accuracy": argmax == value on the queried positions, "loss": their cross-entropy,
    "baseline": the chance of guessing among the example's K in-context values, 1/K}.
    Examples come from the ``test`` split of a stream seeded by ``seed``, never seen in training
    (training draws the ``train`` split).
    """
    if data.task != "mqar":
        raise ValueError(f"evaluate_mqar: data.task must be 'mqar', got {data.task!r}")
    source = make_source(dataclasses.replace(data, seed=seed))
    graphdef, model_state = nnx.split(model)
    batches = -(-num_examples // batch_size)
    metrics = evaluate_params(make_eval_step(graphdef), (model_state,), source, split="test",
                              num_batches=batches, batch_size=batch_size)
    return {**metrics, "baseline": 1.0 / data.mqar.num_kv_pairs,
            "examples": float(batches * batch_size)}


PROBES = {"mqar": evaluate_mqar}


def evaluate(model: nnx.Module, data: DataConfig, **kwargs) -> dict[str, float]:
    """Runs the probe of ``data.task`` on ``model``."""
    if data.task not in PROBES:
        raise ValueError(f"no probe for task {data.task!r}; probes: {sorted(PROBES)}")
    return {k: float(np.asarray(v)) for k, v in PROBES[data.task](model, data, **kwargs).items()}
