"""What every probe shares: the model's outputs on fresh test batches, and length sweeps."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import numpy as np
from flax import nnx

from jaxlm.data import IGNORE, DataConfig, make_source


def probe_batches(model: nnx.Module, data: DataConfig, *, num_examples: int, batch_size: int,
                 seed: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """(batch, outputs) pairs over ``ceil(num_examples / batch_size)`` batches of the ``test``
    split of a stream seeded by ``seed`` (training draws the ``train`` split, so none was
    seen in training). outputs: logits [batch, length, vocab] for token tasks, predictions
    [batch, length] for continuous ones; all as NumPy arrays."""
    source = make_source(dataclasses.replace(data, seed=seed))
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, inputs: nnx.merge(graphdef, state)(inputs))
    for index in range(-(-num_examples // batch_size)):
        batch = source.batch(index, batch_size, "test")
        outputs = forward(state, batch["inputs"])
        yield jax.device_get(batch), np.asarray(outputs)


def target_hits(batch: dict[str, np.ndarray], logits: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (number of target positions predicted right by argmax, number of targets)."""
    counted = batch["targets"] != IGNORE
    hits = (logits.argmax(-1) == batch["targets"]) & counted
    return hits.sum(-1), counted.sum(-1)


def with_seq_len(data: DataConfig, seq_len: int) -> DataConfig:
    """``data`` with its task's ``seq_len`` changed (for length-extrapolation probes)."""
    task = data.task_config
    if "seq_len" not in {f.name for f in dataclasses.fields(task)}:
        raise ValueError(f"task {data.task!r} has no seq_len setting to sweep; its length "
                         f"follows from its other settings")
    return dataclasses.replace(data, **{data.task: dataclasses.replace(task, seq_len=seq_len)})
