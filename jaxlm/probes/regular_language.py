"""In-context language learning probe ("In-Context Language Learning: Architectures and
Algorithms"): greedy validity on held-out random regular languages, beside in-context n-gram
models."""

from __future__ import annotations

from collections import Counter

import numpy as np
from flax import nnx

from jaxlm.data import DataConfig
from jaxlm.data.regular_language import FIRST_LETTER
from jaxlm.probes.common import probe_batches

NGRAM_ORDERS = (1, 2, 3)


def ngram_predictions(tokens: np.ndarray, n: int) -> np.ndarray:
    """In-context n-gram model with back-off: tokens [length] -> the predicted next token at
    every position [length].

    At position t it looks up the n-1 tokens ending at t among the earlier positions of the
    same prompt and predicts the token that most often followed them (ties: the smallest id);
    an unseen context backs off to the n-2 most recent tokens, down to the unigram counts of
    the prompt so far (-1 before anything was seen)."""
    followers = [dict() for _ in range(n)]  # followers[m][context of m tokens] = Counter
    predictions = np.full(len(tokens), -1, np.int64)
    for t in range(len(tokens)):
        for m in range(n):  # the transition that ends at t becomes visible
            if t - m >= 0:
                context = tuple(tokens[t - m:t])
                followers[m].setdefault(context, Counter())[int(tokens[t])] += 1
        for m in range(n - 1, -1, -1):  # back off from the longest context
            if t + 1 - m < 0:
                continue
            counts = followers[m].get(tuple(tokens[t + 1 - m:t + 1]))
            if counts:
                best = max(counts.values())
                predictions[t] = min(tok for tok, c in counts.items() if c == best)
                break
    return predictions


def validity(predictions: np.ndarray, valid: np.ndarray, counted: np.ndarray) -> tuple[int, int]:
    """(positions whose prediction the DFA allows, positions counted); predictions [...],
    valid [..., vocab] bool, counted [...] bool."""
    allowed = np.take_along_axis(valid, np.maximum(predictions, 0)[..., None], -1)[..., 0]
    return int((allowed & (predictions >= 0) & counted).sum()), int(counted.sum())


def letter_tv_distance(logits: np.ndarray, valid: np.ndarray, counted: np.ndarray) -> float:
    """Summed total-variation distance, over the ``counted`` positions, between the model's
    next-letter distribution and the DFA's: logits [..., vocab] float, valid [..., vocab] bool
    (the letters the DFA allows), counted [...] bool.

    The paper's TVD(p, q) = 1/2 sum_letters |p - q|, with q uniform over the allowed letters (the
    probabilistic automaton takes each outgoing letter with equal probability) and p the
    model's softmax restricted to the letters and renormalised (the separator's probability
    depends on the string-length distribution, not on the DFA). In [0, 1] per position."""
    letters = logits[..., FIRST_LETTER:].astype(np.float64)
    p = np.exp(letters - letters.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    allowed = valid[..., FIRST_LETTER:]
    q = allowed / np.maximum(allowed.sum(-1, keepdims=True), 1)
    return float((0.5 * np.abs(p - q).sum(-1) * counted).sum())


def evaluate_regular_language(model: nnx.Module, data: DataConfig, *, num_examples: int = 500,
                              batch_size: int = 250, seed: int = 1234) -> dict[str, float]:
    """{"accuracy": fraction of the positions followed by a letter where the model's greedy
    prediction is a letter the prompt's DFA allows, "ngram_1/2/3": the same for the in-context
    n-gram models, "baseline": the best of them, "tv_distance": the mean total-variation
    distance between the model's next-letter distribution and the DFA's at those positions
    (:func:`letter_tv_distance`; 0 is the DFA's own distribution)}. Languages are held out
    from training."""
    totals = Counter()
    for batch, logits in probe_batches(model, data, num_examples=num_examples,
                                      batch_size=batch_size, seed=seed):
        counted = batch["targets"] >= FIRST_LETTER
        ok, n = validity(logits.argmax(-1), batch["valid"], counted)
        totals["accuracy"] += ok
        totals["positions"] += n
        totals["tv_distance"] += letter_tv_distance(logits, batch["valid"], counted)
        for order in NGRAM_ORDERS:
            preds = np.stack([ngram_predictions(row, order) for row in batch["inputs"]])
            totals[f"ngram_{order}"] += validity(preds, batch["valid"], counted)[0]
    metrics = {name: totals[name] / max(totals["positions"], 1)
               for name in ["accuracy", "tv_distance"] + [f"ngram_{n}" for n in NGRAM_ORDERS]}
    metrics["baseline"] = max(metrics[f"ngram_{n}"] for n in NGRAM_ORDERS)
    return metrics
