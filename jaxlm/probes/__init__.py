"""In-context-learning probes: for each task a metric on fresh test examples and the classical
baselines beside it (``evaluate``), the published numbers to compare with (``published``), and
the single-layer linear-self-attention study (``train_lsa``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flax import nnx

from jaxlm.data import DataConfig
from jaxlm.probes.common import target_hits, probe_batches, with_seq_len
from jaxlm.probes.decipher import decipher_probe
from jaxlm.probes.lsa import LSAConfig, train_lsa
from jaxlm.probes.match3 import evaluate_match3
from jaxlm.probes.mqar import evaluate_mqar
from jaxlm.probes.needle_threading import evaluate_needle_threading
from jaxlm.probes.published import PUBLISHED, published, published_notes
from jaxlm.probes.regression import BASELINES, baseline_predictions, evaluate_regression
from jaxlm.probes.regular_language import evaluate_regular_language, ngram_predictions
from jaxlm.probes.state_tracking import evaluate_state_tracking
from jaxlm.probes.text import evaluate_text, score_text
from jaxlm.probes.tokens import evaluate_answers, evaluate_set_disjointness
from jaxlm.probes.verbatim_memory import (model_surprisal, repeat_surprisal, verbatim_memory,
                                          verbatim_memory_summary)

PROBES = {
    "mqar": evaluate_mqar,
    "induction_head": evaluate_answers,
    "selective_copy": evaluate_answers,
    "passkey": evaluate_answers,
    "set_disjointness": evaluate_set_disjointness,
    "regular_language": evaluate_regular_language,
    "linear_regression": evaluate_regression,
    "text": evaluate_text,
    "state_tracking": evaluate_state_tracking,
    "needle_threading": evaluate_needle_threading,
    "match3": evaluate_match3,
}

# The metric columns of each probe's results table (after the run's description).
PROBE_COLUMNS = {
    "mqar": ("accuracy", "baseline"),
    "induction_head": ("accuracy", "baseline"),
    "selective_copy": ("accuracy", "exact", "baseline"),
    "passkey": ("accuracy", "exact", "baseline"),
    "set_disjointness": ("accuracy_a_first", "accuracy_b_first", "baseline"),
    "regular_language": ("accuracy", "ngram_1", "ngram_2", "ngram_3", "tv_distance"),
    "linear_regression": (),  # error@n and baseline@n columns, named by the prompt length
    "text": ("bits_per_byte", "bits_per_byte_cipher", "unigram", "in_context_unigram",
             "in_context_ppm", "decipher", "frequency", "bytes_per_second", "reduction"),
    "state_tracking": ("accuracy", "mean", "baseline"),  # and accuracy@L by length
    "needle_threading": ("accuracy", *(f"hops_{h}" for h in range(1, 9)), "one_hop",
                         "baseline"),  # and accuracy@L by length
    "match3": ("accuracy", "balanced", "baseline", "pairwise", "triple", "triple_baseline"),
}


def evaluate(model: nnx.Module, data: DataConfig, *, lengths: Sequence[int] = (),
             **kwargs) -> dict:
    """Runs the probe of ``data.task`` on ``model`` (``kwargs``: num_examples, batch_size,
    seed). With ``lengths`` the probe also runs at each of those sequence lengths (length
    extrapolation) and adds ``accuracy@<length>``."""
    if data.task not in PROBES:
        raise ValueError(f"no probe for task {data.task!r}; probes: {sorted(PROBES)}")
    metrics = _floats(PROBES[data.task](model, data, **kwargs))
    for length in lengths:
        longer = _floats(PROBES[data.task](model, with_seq_len(data, length), **kwargs))
        metrics[f"accuracy@{length}"] = longer["accuracy"]
    return metrics


def _floats(metrics: dict) -> dict:
    return {k: v if isinstance(v, dict) else float(np.asarray(v)) for k, v in metrics.items()}


__all__ = ["BASELINES", "LSAConfig", "PROBES", "PROBE_COLUMNS", "PUBLISHED",
           "baseline_predictions", "decipher_probe", "evaluate", "evaluate_answers",
           "evaluate_mqar", "evaluate_match3",
           "evaluate_regression", "evaluate_regular_language", "evaluate_set_disjointness",
           "evaluate_state_tracking", "evaluate_needle_threading", "evaluate_text", "ngram_predictions", "published", "published_notes", "target_hits",
           "probe_batches", "score_text",
           "train_lsa", "with_seq_len", "model_surprisal", "repeat_surprisal",
           "verbatim_memory", "verbatim_memory_summary"]
