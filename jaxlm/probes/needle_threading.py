"""Needle-threading probe: accuracy of the thread's end against the number of hops and the
haystack length ("Needle Threading: Can LLMs Follow Threads through Near-Million-Scale
Haystacks?")."""

from __future__ import annotations

import numpy as np
from flax import nnx

from jaxlm.data import DataConfig
from jaxlm.probes.common import probe_batches


def evaluate_needle_threading(model: nnx.Module, data: DataConfig, *, num_examples: int = 500,
                              batch_size: int = 250, seed: int = 1234) -> dict[str, float]:
    """On held-out rows: {"accuracy": argmax at the last position == the thread's end,
    "hops_h": the same over the rows whose thread has h hops (h = 1..max_hops, those that
    occur), "one_hop": the accuracy of answering the value of the queried key itself (a
    single lookup: right exactly when h = 1), "baseline": chance among the haystack's values,
    1/P}. ``jaxlm.probes.evaluate(..., lengths=...)`` adds ``accuracy@L`` at other haystack
    lengths."""
    config = data.needle_threading
    hits = np.zeros(config.max_hops + 1)
    rows = np.zeros(config.max_hops + 1)
    for batch, logits in probe_batches(model, data, num_examples=num_examples,
                                      batch_size=batch_size, seed=seed):
        right = logits[:, -1].argmax(-1) == batch["targets"][:, -1]
        np.add.at(hits, batch["hops"], right)
        np.add.at(rows, batch["hops"], 1)
    metrics = {"accuracy": hits.sum() / max(rows.sum(), 1),
               "one_hop": rows[1] / max(rows.sum(), 1),
               "baseline": 1.0 / config.num_pairs}
    metrics.update({f"hops_{h}": hits[h] / rows[h] for h in range(1, config.max_hops + 1)
                    if rows[h]})
    return metrics
