"""Task sources: random-access batches of a named task, split into train / validation / test.

Every task is registered in ``TASKS`` with its config type and its example generator. Example
``i`` of a split is a pure function of (seed, split, i), so a run resumes from its step number
alone and the splits never share an example. With ``data.train_examples = n`` the training split
cycles through a fixed set of n examples (a finite training set, as in the papers); by default
every training batch is fresh.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.data.copying import (InductionHeadConfig, SelectiveCopyConfig, induction_head_example,
                                selective_copy_example)
from jaxlm.data.match3 import Match3Config, match3_example
from jaxlm.data.mqar import MQARConfig, mqar_example
from jaxlm.data.needle_threading import NeedleThreadingConfig, needle_threading_example
from jaxlm.data.passkey import PasskeyConfig, passkey_example
from jaxlm.data.regression import LinearRegressionConfig, linear_regression_example
from jaxlm.data.regular_language import RegularLanguageConfig, regular_language_batch
from jaxlm.data.set_disjointness import SetDisjointnessConfig, set_disjointness_example
from jaxlm.data.state_tracking import StateTrackingConfig, state_tracking_example
from jaxlm.data.text import TextConfig, decomposed_text_batch, text_batch

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Task:
    """A task: ``example(key, config) -> dict of arrays`` generated with jax.random (batched
    under jit), or ``host_batch(seed, split, indices, config)`` generated with NumPy.
    ``continuous`` tasks feed float vectors (``inputs [batch, length, input_dim]``) and are
    trained on squared error at ``mask``; the others feed token ids and are trained on
    cross-entropy at targets that are not IGNORE."""
    example: Callable[..., dict[str, jax.Array]] | None = None
    host_batch: Callable[..., dict[str, np.ndarray]] | None = None
    continuous: bool = False


TASKS: dict[str, Task] = {
    "mqar": Task(example=mqar_example),
    "induction_head": Task(example=induction_head_example),
    "selective_copy": Task(example=selective_copy_example),
    "passkey": Task(example=passkey_example),
    "set_disjointness": Task(example=set_disjointness_example),
    "regular_language": Task(host_batch=regular_language_batch),
    "linear_regression": Task(example=linear_regression_example, continuous=True),
    "text": Task(host_batch=text_batch),
    "state_tracking": Task(example=state_tracking_example),
    "needle_threading": Task(example=needle_threading_example),
    "match3": Task(example=match3_example),
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which task to train on; its options live in the field of the same name."""
    task: str = "mqar"
    seed: int = 0
    train_examples: int = 0  # > 0: the training split cycles through this many examples
    mqar: MQARConfig = MQARConfig()
    induction_head: InductionHeadConfig = InductionHeadConfig()
    selective_copy: SelectiveCopyConfig = SelectiveCopyConfig()
    passkey: PasskeyConfig = PasskeyConfig()
    set_disjointness: SetDisjointnessConfig = SetDisjointnessConfig()
    regular_language: RegularLanguageConfig = RegularLanguageConfig()
    linear_regression: LinearRegressionConfig = LinearRegressionConfig()
    text: TextConfig = TextConfig()
    state_tracking: StateTrackingConfig = StateTrackingConfig()
    needle_threading: NeedleThreadingConfig = NeedleThreadingConfig()
    match3: Match3Config = Match3Config()

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"data.task={self.task!r} is unknown; expected one of "
                             f"{sorted(TASKS)}")
        if self.train_examples < 0:
            raise ValueError(f"data.train_examples must be >= 0 (0: fresh examples every "
                             f"step), got {self.train_examples}")

    @property
    def task_config(self):
        return getattr(self, self.task)

    @property
    def seq_len(self) -> int:
        return self.task_config.seq_len

    @property
    def vocab_size(self) -> int:
        return self.task_config.vocab_size

    @property
    def continuous(self) -> bool:
        return TASKS[self.task].continuous


@functools.partial(jax.jit, static_argnames=("example", "config"))
def example_batch(key: jax.Array, indices: jax.Array, *, example: Callable,
                  config: Any) -> dict[str, jax.Array]:
    """``example(fold_in(key, i), config)`` for every i in ``indices``, stacked on axis 0."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
    return jax.vmap(lambda k: example(k, config))(keys)


@dataclasses.dataclass(frozen=True)
class TaskSource:
    """Batches of ``config.task``: batch ``index`` of a split holds its examples
    ``index * batch_size ..`` (cycled through ``train_examples`` in the training split)."""
    config: DataConfig

    def indices(self, index: int, batch_size: int, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is unknown; expected one of {list(SPLITS)}")
        indices = index * batch_size + np.arange(batch_size)
        if split == "train" and self.config.train_examples:
            indices %= self.config.train_examples
        return indices

    def batch(self, index: int, batch_size: int, split: str = "train",
              rows: np.ndarray | None = None) -> dict[str, jax.Array]:
        """Batch ``index`` of ``split``: every row, or only ``rows`` of it (the rows one
        process's devices hold)."""
        if self.config.task == "text" and self.config.text.decomposition and split == "train":
            if rows is not None or self.config.train_examples:
                raise ValueError("data.text.decomposition=True draws rows of varying length "
                                 "and number per step: it runs on one process and without "
                                 "data.train_examples")
            batch = decomposed_text_batch(self.config.seed, index, batch_size, self.config.text)
            return {name: jnp.asarray(value) for name, value in batch.items()}
        indices = self.indices(index, batch_size, split)
        if rows is not None:
            indices = indices[rows]
        task = TASKS[self.config.task]
        if task.host_batch is not None:
            batch = task.host_batch(self.config.seed, SPLITS.index(split), indices,
                                    self.config.task_config)
            return {name: jnp.asarray(value) for name, value in batch.items()}
        key = jax.random.fold_in(jax.random.key(self.config.seed), SPLITS.index(split))
        return example_batch(key, jnp.asarray(indices, jnp.int32), example=task.example,
                             config=self.config.task_config)


def make_source(config: DataConfig) -> TaskSource:
    """The random-access batch source of ``config.task``."""
    return TaskSource(config)
