"""Match3 probe: does the model detect triples x_i + x_j + x_k ≡ 0 (mod M)?
(The task of "Representational Strengths and Limitations of Transformers", solved by the
tensor attention of "How to Capture Higher-order Correlations? Generalizing Matrix Softmax
Attention to Kronecker Computation"; :mod:`jaxlm.data.match3`.)"""

from __future__ import annotations

import numpy as np
from flax import nnx

from jaxlm.data import DataConfig
from jaxlm.data.match3 import match3_labels
from jaxlm.probes.common import probe_batches


def _majority(labels: np.ndarray, where: np.ndarray) -> float:
    """Accuracy of guessing each position's majority label (among ``where``) on ``where``."""
    counts = where.sum(0)
    positives = (labels * where).sum(0)
    return np.maximum(positives, counts - positives).sum() / max(counts.sum(), 1)


def evaluate_match3(model: nnx.Module, data: DataConfig, *, num_examples: int = 1000,
                    batch_size: int = 250, seed: int = 1234) -> dict[str, float]:
    """On held-out rows, the prediction at each position is whichever of the ids 0 and 1 gets
    the larger logit. Returns

    - "accuracy" over every position, "balanced": the mean of the accuracy on positives and on
      negatives, "baseline": each position's majority label (the best guess from the position
      alone), "pairwise": the rule "1 if a degenerate triple (j = k, j = i or k = i) matches,
      else the position's majority" (what a pairwise test can reach);
    - "triple": accuracy on the positions without a degenerate match, where only a triple of
      three distinct positions decides the label, and "triple_baseline": the position's
      majority label there.
    """
    guesses, labels, pairwise = [], [], []
    for batch, logits in probe_batches(model, data, num_examples=num_examples,
                                      batch_size=batch_size, seed=seed):
        guesses.append((logits[..., 1] > logits[..., 0]).astype(np.int32))
        labels.append(batch["targets"])
        pairwise.append(np.asarray(match3_labels(batch["inputs"], data.match3.modulus,
                                                 degenerate=True)))
    guess, label, degenerate = (np.concatenate(x) for x in (guesses, labels, pairwise))
    right = guess == label
    everywhere = np.ones_like(label, bool)
    majority = (label.mean(0) > 0.5).astype(np.int32)
    rest = degenerate == 0
    return {"accuracy": right.mean(),
            "balanced": 0.5 * (right[label == 1].mean() + right[label == 0].mean()),
            "baseline": _majority(label, everywhere),
            "pairwise": (np.where(degenerate == 1, 1, majority[None]) == label).mean(),
            "triple": right[rest].mean(),
            "triple_baseline": _majority(label, rest)}
