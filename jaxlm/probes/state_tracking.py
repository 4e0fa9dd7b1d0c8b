"""State-tracking probe: accuracy of the tracked group state against the length of the word read
("FlashRNN: Optimizing Traditional RNNs on Modern Hardware" motivates its nonlinear RNNs by it)."""

from __future__ import annotations

import numpy as np
from flax import nnx

from jaxlm.data import DataConfig
from jaxlm.probes.common import probe_batches


def report_lengths(seq_len: int) -> list[int]:
    """The lengths reported inside a row: powers of two below ``seq_len``, from 2."""
    lengths, n = [], 2
    while n < seq_len:
        lengths.append(n)
        n *= 2
    return lengths


def evaluate_state_tracking(model: nnx.Module, data: DataConfig, *, num_examples: int = 500,
                            batch_size: int = 250, seed: int = 1234) -> dict[str, float]:
    """{"accuracy": argmax == the state after the whole row (length ``seq_len``), "mean": the
    same averaged over every position, "accuracy@L": at position L-1, i.e. after a word of
    length L, for L = 2, 4, 8, ... < seq_len, "baseline": chance, 1/|G|} on held-out rows.

    ``jaxlm.probes.evaluate(..., lengths=...)`` adds ``accuracy@L`` beyond the training length,
    with the same meaning (the last position of rows of length L)."""
    seq_len = data.state_tracking.seq_len
    lengths = report_lengths(seq_len)
    hits = np.zeros(seq_len)
    rows = 0
    for batch, logits in probe_batches(model, data, num_examples=num_examples,
                                      batch_size=batch_size, seed=seed):
        hits += (logits.argmax(-1) == batch["targets"]).sum(0)
        rows += len(logits)
    per_position = hits / max(rows, 1)
    metrics = {"accuracy": per_position[-1], "mean": per_position.mean(),
               "baseline": 1.0 / data.state_tracking.vocab_size}
    metrics.update({f"accuracy@{n}": per_position[n - 1] for n in lengths})
    return metrics
