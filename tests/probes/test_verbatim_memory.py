"""The verbatim short-term memory probe on toy "models" whose surprisal we control, over a toy
word-level tokenizer: an oracle that knows every word seen before gives ~0% repeat surprisal on
repeated and permuted lists and 100% on novel ones; an oracle that copies continuations
(order-sensitive) separates repeated from permuted lists. And it runs on a jaxlm LM."""

import re

import numpy as np
import pytest
from flax import nnx

from jaxlm.data.text import encode as byte_encode
from jaxlm.models import DecoderLM, ModelConfig
from jaxlm.probes.verbatim_memory import (lists, model_surprisal, repeat_surprisal, vignette,
                                          verbatim_memory)

SEEN, NEW = 0.1, 10.0


class WordTokenizer:
    """Each word and each punctuation mark is one id (assigned on first sight)."""

    def __init__(self):
        self.ids = {}

    def __call__(self, text):
        return [self.ids.setdefault(w, len(self.ids)) for w in re.findall(r"\w+|[^\w\s]", text)]


def seen_before(ids):
    """Surprisal SEEN for a token that occurred earlier in the row, NEW otherwise."""
    return np.array([np.nan] + [SEEN if ids[t] in ids[:t] else NEW
                                for t in range(1, len(ids))])


def copies_continuations(ids):
    """Surprisal SEEN where the two previous tokens occurred earlier followed by this token
    (after "noun ," it expects the noun that followed before)."""
    seen = set()
    out = [np.nan, np.nan]
    for t in range(2, len(ids)):
        out.append(SEEN if tuple(ids[t - 2:t + 1]) in seen else NEW)
        seen.add(tuple(ids[t - 2:t + 1]))
    return np.array(out)


def test_vignette_spans_are_the_nouns():
    tokenizer = WordTokenizer()
    first, second = lists(np.random.default_rng(0), 4, "permute")
    assert sorted(first) == sorted(second) and first != second
    ids, spans1, spans2 = vignette(tokenizer, first, second, distance=20)
    words = {i: w for w, i in tokenizer.ids.items()}
    assert [words[int(ids[a])] for a, b in spans1] == first
    assert [words[int(ids[a])] for a, b in spans2] == second
    ids, spans1, _ = vignette(byte_encode, first, second, distance=5)
    assert bytes(ids[spans1[0][0]:spans1[0][1]].tolist()).decode() == " " + first[0]


@pytest.mark.parametrize("score, condition, expected", [
    (seen_before, "repeat", 1.0), (seen_before, "permute", 1.0), (seen_before, "control", 100.0),
    (copies_continuations, "repeat", 1.0), (copies_continuations, "permute", 100.0),
])
def test_oracles(score, condition, expected):
    """100 * SEEN / NEW = 1%. The copying oracle misses the first noun of a repeated list (its
    context "again :" is new) and every noun of a permuted one whose predecessor differs (in
    these seeded vignettes, at least three of the five: the median noun is missed)."""
    row = repeat_surprisal(score, WordTokenizer(), list_length=5, condition=condition,
                           distance=30, trials=4)
    assert row["repeat_surprisal"] == pytest.approx(expected)


def test_grid_rows_and_bad_input():
    rows = verbatim_memory(seen_before, WordTokenizer(), list_lengths=(2, 3), distances=(5,),
                           conditions=("repeat",), trials=2)
    assert [(r["list_length"], r["distance"]) for r in rows] == [(2, 5), (3, 5)]
    with pytest.raises(ValueError, match="condition"):
        repeat_surprisal(seen_before, WordTokenizer(), condition="shuffled")
    with pytest.raises(ValueError, match="distance"):
        repeat_surprisal(seen_before, WordTokenizer(), distance=0)


def test_runs_on_a_jaxlm_model():
    model = DecoderLM(ModelConfig(vocab_size=260, d_model=16, n_layers=1), rngs=nnx.Rngs(0))
    row = repeat_surprisal(model_surprisal(model, bucket=256), byte_encode, list_length=3,
                           distance=5, trials=2)
    assert np.isfinite(row["repeat_surprisal"]) and row["first_bits"] > 0
