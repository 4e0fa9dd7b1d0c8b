"""Task sources: random-access batches of a named task, split into train / validation / test."""

from __future__ import annotations

import dataclasses

import jax

from jaxlm.data.mqar import MQARConfig, mqar_batch

SPLITS = ("train", "validation", "test")
TASKS = ("mqar",)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which task to train on; its options live in the field of the same name."""
    task: str = "mqar"
    seed: int = 0
    mqar: MQARConfig = MQARConfig()

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"data.task={self.task!r} is unknown; expected one of {list(TASKS)}")

    @property
    def task_config(self):
        return getattr(self, self.task)

    @property
    def seq_len(self) -> int:
        return self.task_config.seq_len

    @property
    def vocab_size(self) -> int:
        return self.task_config.vocab_size


@dataclasses.dataclass(frozen=True)
class TaskSource:
    """Batches of a synthetic task: batch ``index`` of a split is a pure function of
    (seed, split, index), so a run resumes from its step number alone. The splits draw
    from independent key streams."""
    config: DataConfig

    def batch(self, index: int, batch_size: int, split: str = "train") -> dict[str, jax.Array]:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is unknown; expected one of {list(SPLITS)}")
        key = jax.random.fold_in(jax.random.key(self.config.seed), SPLITS.index(split))
        return mqar_batch(key, index * batch_size, config=self.config.task_config,
                          batch_size=batch_size)


def make_source(config: DataConfig) -> TaskSource:
    return TaskSource(config)
