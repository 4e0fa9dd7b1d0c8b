"""Dataset decomposition: training rows of one document each, bucketed by length, with a
variable-length curriculum ("Dataset Decomposition: Faster LLM Pretraining with Variable
Sequence Length Curriculum").

Instead of concatenating documents and chunking the stream (packing: rows that cross document
boundaries), every document of n tokens (``BOS doc EOS``) is decomposed into pieces whose
lengths are powers of two: first ⌊n / L_max⌋ pieces of L_max = ``seq_len``, then one piece of
2^i for every set bit i of the remainder r = n mod L_max with 2^i >= ``min_bucket``, longest
first (the binary representation of r); the last r mod ``min_bucket`` tokens are dropped.
Bucket D_i holds every piece of length 2^i. A piece is a run of consecutive tokens of one
document, so no row attends across documents and no row needs padding.

A training batch comes from one bucket, chosen per step, with batch_size x seq_len tokens in
all: batch_size x seq_len / 2^i rows of 2^i tokens (variable sequence length and batch size,
constant tokens per step). The bucket is drawn with probability

    P(i | step) ∝ T_i · c^{(1 − f)(k − 1 − i)/(k − 1)},   f = min(step / curriculum_steps, 1)

where T_i is the number of tokens in D_i, k the number of buckets (i = 0 the shortest) and c =
``curriculum_ratio``: at the start the shortest bucket is favoured c times over the longest
relative to its tokens, and by ``curriculum_steps`` every token is equally likely (the paper's
finding is that short-to-long curricula train faster; this is one such curriculum, not the
paper's tuned sampling odds). ``curriculum_steps = 0`` or c = 1 samples ∝ T_i throughout.
Rows within the bucket are drawn uniformly (with replacement) from a generator seeded by
(seed, step): random access, so a run resumes from its step.

The targets of a piece are the next tokens of its document (the last one included when the
document continues past the piece; IGNORE after EOS). Validation and test rows stay packed,
so the probes score the same rows with and without decomposition.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxlm.data.mqar import IGNORE


@dataclasses.dataclass(frozen=True)
class Buckets:
    """The decomposition of one token stream: ``lengths`` [k] (increasing powers of two) and,
    per bucket, the stream offsets of its pieces; ``tokens`` [k] their token counts."""
    lengths: tuple[int, ...]
    offsets: tuple[np.ndarray, ...]

    @property
    def tokens(self) -> np.ndarray:
        return np.array([n * len(o) for n, o in zip(self.lengths, self.offsets)], np.float64)


def decompose(documents: np.ndarray, max_len: int, min_len: int) -> Buckets:
    """Buckets of the stream whose token t belongs to document ``documents[t]`` (documents
    contiguous, as :func:`jaxlm.data.text.pack` lays them out). max_len, min_len: powers of two,
    min_len <= max_len."""
    for name, value in (("max_len", max_len), ("min_len", min_len)):
        if value < 1 or value & (value - 1):
            raise ValueError(f"decompose: {name} must be a power of two, got {value}")
    if min_len > max_len:
        raise ValueError(f"decompose: min_len={min_len} exceeds max_len={max_len}")
    lengths = [1 << i for i in range(min_len.bit_length() - 1, max_len.bit_length())]
    offsets: dict[int, list[int]] = {n: [] for n in lengths}
    starts = np.flatnonzero(np.diff(documents, prepend=-1))
    ends = np.append(starts[1:], len(documents))
    for start, end in zip(starts.tolist(), ends.tolist()):
        at, n = start, end - start
        for _ in range(n // max_len):
            offsets[max_len].append(at)
            at += max_len
        for length in reversed(lengths[:-1]):
            if (n % max_len) & length:
                offsets[length].append(at)
                at += length
    return Buckets(tuple(lengths), tuple(np.array(offsets[n], np.int64) for n in lengths))


def bucket_probabilities(buckets: Buckets, step: int, *, curriculum_steps: int,
                         ratio: float) -> np.ndarray:
    """[k] P(bucket | step) of the module docstring (0 for empty buckets)."""
    k = len(buckets.lengths)
    progress = min(step / curriculum_steps, 1.0) if curriculum_steps else 1.0
    tilt = (k - 1 - np.arange(k)) / max(k - 1, 1)
    weights = buckets.tokens * float(ratio) ** ((1.0 - progress) * tilt)
    return weights / weights.sum()


def decomposed_batch(packed, buckets: Buckets, seed: int, step: int, batch_size: int, *,
                     seq_len: int, curriculum_steps: int, curriculum_ratio: float
                     ) -> dict[str, np.ndarray]:
    """Training batch ``step`` of a packed split (:class:`jaxlm.data.text.PackedSplit`) and its
    :func:`decompose` buckets: rows of one bucket, batch_size x seq_len tokens in all. Returns
    inputs, targets, segment_ids [rows, length] int32 (segment_ids all 0: one document a row)."""
    probs = bucket_probabilities(buckets, step, curriculum_steps=curriculum_steps,
                                 ratio=curriculum_ratio)
    rng = np.random.default_rng([seed, step, 17])
    choice = int(rng.choice(len(probs), p=probs))
    length, offsets = buckets.lengths[choice], buckets.offsets[choice]
    rows = batch_size * seq_len // length
    starts = offsets[rng.integers(0, len(offsets), rows)]
    window = starts[:, None] + np.arange(length + 1)
    inside = window < len(packed.tokens)
    window = np.minimum(window, len(packed.tokens) - 1)
    tokens, owners = packed.tokens[window], packed.documents[window]
    same = (owners[:, 1:] == owners[:, :1]) & inside[:, 1:]
    return {"inputs": tokens[:, :-1], "targets": np.where(same, tokens[:, 1:], IGNORE),
            "segment_ids": np.zeros((rows, length), np.int32)}
