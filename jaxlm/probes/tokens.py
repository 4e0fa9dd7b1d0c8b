"""Probes of the token tasks whose metric is accuracy on the answer positions: induction heads,
selective copying, passkey retrieval, set disjointness."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jaxlm.data import DataConfig
from jaxlm.probes.common import target_hits, probe_batches


def evaluate_answers(model: nnx.Module, data: DataConfig, *, num_examples: int = 1000,
                     batch_size: int = 250, seed: int = 1234) -> dict[str, float]:
    """{"accuracy": argmax == target over the answer positions, "exact": fraction of rows
    whose every answer is right (for passkey: greedy decoding recovers the whole key),
    "baseline": chance}. For set disjointness, also "accuracy_a_first" / "accuracy_b_first":
    the accuracy when the set A (``len_a`` elements) or B comes first."""
    hits, counts, exact, extra = 0, 0, 0, {}
    rows = 0
    split_by_order = data.task == "set_disjointness"
    for batch, logits in probe_batches(model, data, num_examples=num_examples,
                                      batch_size=batch_size, seed=seed):
        row_hits, row_counts = target_hits(batch, logits)
        hits, counts = hits + row_hits.sum(), counts + row_counts.sum()
        exact += (row_hits == row_counts).sum()
        rows += len(row_hits)
        if split_by_order:
            for name, chosen in (("a_first", batch["a_first"]), ("b_first", ~batch["a_first"])):
                h, c = extra.get(name, (0, 0))
                extra[name] = (h + row_hits[chosen].sum(), c + row_counts[chosen].sum())
    metrics = {"accuracy": hits / max(counts, 1), "exact": exact / max(rows, 1),
               "baseline": chance(data)}
    metrics.update({f"accuracy_{name}": h / c for name, (h, c) in extra.items() if c})
    return metrics


def chance(data: DataConfig) -> float:
    """Accuracy of guessing uniformly among the tokens that can be the answer."""
    task = data.task_config
    if data.task in ("induction_head", "selective_copy"):
        return 1.0 / (task.vocab_size - 2)
    if data.task == "passkey":
        return 0.1
    if data.task == "set_disjointness":
        return 1.0 / task.len_a  # the answer is one of A's elements
    raise ValueError(f"no chance level defined for task {data.task!r}")


def evaluate_set_disjointness(model: nnx.Module, data: DataConfig, **kwargs) -> dict[str, float]:
    """Set disjointness evaluated with A first and with B first, whatever the training order."""
    return evaluate_answers(model, dataclasses.replace(
        data, set_disjointness=dataclasses.replace(data.set_disjointness, order="mixed")),
        **kwargs)
