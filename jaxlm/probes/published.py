"""The papers' numbers, printed beside ours. Each carries where it comes from and how firm it
is: [paper] a table in the paper, [figure] read off a figure (about +-0.03), [derived] a closed
form, [qualitative] a finding without a number. The papers trained larger models for longer
(MQAR: vocabulary 8192, 64 epochs over 100k examples, best of 4 learning rates), so at CPU scale
the ordering of the models is the thing to compare, not the last digit."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Published:
    task: str
    model: str  # the jaxlm layer pattern that matches the paper's model
    value: float
    source: str
    where: tuple[tuple[str, Any], ...] = ()  # row fields that must match, e.g. (("d_model", 64),)


def _zoology(model: str, seq_len: int, values: tuple[float, ...]) -> list[Published]:
    return [Published("mqar", model, v, "Zoology Fig. 2 [figure]",
                      (("seq_len", seq_len), ("d_model", d)))
            for d, v in zip((64, 128, 256, 512), values)]


PUBLISHED: list[Published] = [
    *_zoology("attention", 64, (0.98, 0.98, 0.98, 0.98)),
    *_zoology("h3", 64, (0.91, 0.98, 0.97, 0.96)),
    *_zoology("attention", 128, (0.98, 0.98, 0.98, 0.98)),
    *_zoology("h3", 128, (0.25, 0.72, 0.89, 0.75)),
    *_zoology("attention", 256, (0.98, 0.98, 0.98, 0.98)),
    *_zoology("h3", 256, (0.10, 0.63, 0.61, 0.66)),
    Published("induction_head", "attention", 1.0, "H3 Table 1 [paper]"),
    Published("induction_head", "h3", 1.0, "H3 Table 1 [paper]"),
    Published("induction_head", "s4d", 0.356, "H3 Table 1 [paper]"),
    Published("selective_copy", "s4", 0.183, "Mamba Table 1, S4 without gate [paper]"),
    Published("selective_copy", "s4d", 0.183, "Mamba Table 1, S4 without gate [paper]"),
    Published("selective_copy", "h3", 0.570, "Mamba Table 1, H3 with S4 [paper]"),
    Published("selective_copy", "mamba", 0.998, "Mamba Table 1, Mamba with S6 [paper]"),
]

NOTES: dict[str, list[str]] = {
    "mqar": [
        "Zoology Fig. 2 [figure]: attention 0.98 at every width; H3 0.91 / 0.25 / 0.10 at "
        "d_model 64 for lengths 64 / 128 / 256; gated convolutions fall off with length at "
        "small width.",
        "Zoology recall vs state size [figure]: DeltaNet 0.79-1.0, GLA 0.53-0.95, Mamba-2 "
        "0.52-0.85, Mamba 0.69-0.85, H3 0.13-0.28 over their state sizes: attention >= "
        "DeltaNet > GLA, Mamba > H3.",
    ],
    "induction_head": [
        "H3 Table 1 [paper]: attention 1.00, H3 1.00, S4D 0.356, chance 0.05 (vocab 20, "
        "length 30).",
        "Mamba Table 11 [paper]: trained at 256; at 2x / 4x / 8x length MHA-RoPE 0.836 / "
        "0.313 / 0.184, H3 0.809 / 0.395 / 0.238, Mamba 1.00 up to 4096x.",
    ],
    "selective_copy": [
        "Mamba Table 1 [paper] (length 4096, 16 tokens): S4 without gate 0.183, H3 0.570, "
        "Mamba 0.998; input-dependent selection is what solves it.",
    ],
    "passkey": [
        "Stuffed Mamba [qualitative]: at fixed state size recurrent models' passkey accuracy "
        "falls with context length; the longest length they retrieve at grows with state "
        "size.",
    ],
    "set_disjointness": [
        "Just read twice Fig. 2 [qualitative]: causal recurrent models are more accurate when "
        "the shorter set comes first; repeating the context (JRT prompt) closes the gap; "
        "attention is order-insensitive.",
    ],
    "regular_language": [
        "In-Context Language Learning [qualitative]: Transformers beat every recurrent and "
        "convolutional model and come close to or above the best in-context n-gram model "
        "(n = 3); Mamba, then GLA / RetNet come next; H3, S4D, LSTM are far behind.",
    ],
    "linear_regression": [
        "Garg et al. Fig. 2 [qualitative]: a trained Transformer's error tracks least squares, "
        "near 0 once the number of examples reaches d.",
        "[derived] least squares 1 - n/d for n < d and 0 from n = d; averaging (d+1)/n; the "
        "zero predictor 1.",
    ],
    "text": [
        "Lexinvariant Language Models [qualitative]: without fixed embeddings the perplexity "
        "gap to a standard LM is large at short context and closes with context length; on "
        "substitution-ciphered text a linear probe on its states reads the plaintext "
        "(about 99.6%, secondary summary) and a standard LM cannot.",
        "Hierarchical Autoregressive Transformers [qualitative]: byte -> word -> byte matches "
        "subword models of the same compute, with the backbone running over words.",
        "Learn Your Tokens [paper abstract]: word-pooled models beat subword and byte models "
        "by over 300% on next-word prediction.",
        "MrT5 [paper abstract]: deletion shortens byte sequences by up to 80% at little cost.",
    ],
    "state_tracking": [
        "FlashRNN [paper abstract]: Transformers and other sequence-parallelizable models lack "
        "state tracking; LSTM, GRU and sLSTM have it, at the cost of sequential processing.",
        "xLSTM formal languages [qualitative]: sLSTM and LSTM solve parity and modular "
        "arithmetic at lengths beyond training; Transformers, Mamba and linear attention do not.",
    ],
    "match3": [
        "Representational Strengths and Limitations of Transformers [theorem]: one layer of "
        "softmax attention computes Match3 only with width polynomial in the length.",
        "How to Capture Higher-order Correlations? [paper abstract]: tensor attention (over "
        "pairs of keys) solves the triple-wise problems shown impossible for transformers.",
    ],
    "needle_threading": [
        "Needle Threading [paper abstract]: for many of the 17 LLMs the effective context is "
        "well short of the supported one, accuracy falling as the haystack grows; many are "
        "thread-safe (several threads at once cost little).",
    ],
}


def published(task: str, row: dict[str, Any]) -> str:
    """The published number matching a results row (its task, model and settings), as
    ``"0.98 (Zoology Fig. 2 [figure])"``, or "" when the papers report none."""
    for entry in PUBLISHED:
        if entry.task == task and entry.model == row.get("model") and all(
                row.get(k) == v for k, v in entry.where):
            return f"{entry.value:.3f} ({entry.source})"
    return ""


def published_notes(task: str) -> list[str]:
    """The papers' findings for ``task``, one line each."""
    return NOTES.get(task, [])
