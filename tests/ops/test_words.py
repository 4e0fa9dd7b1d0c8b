"""The word split of the word-level byte models against a plain Python loop."""

import numpy as np
import pytest

from jaxlm.data import BOS, EOS, PAD
from jaxlm.ops.words import WHITESPACE, word_layout


def reference_words(tokens, segments, max_word_len):
    """[(bytes, segment)] by the rule in jaxlm.ops.words, one byte at a time."""
    words = []
    for t, (x, s) in enumerate(zip(tokens, segments)):
        start = (t == 0 or s != segments[t - 1] or x >= 256 or tokens[t - 1] >= 256
                 or (tokens[t - 1] in WHITESPACE and x not in WHITESPACE)
                 or len(words[-1][0]) >= max_word_len)
        if start:
            words.append(([], s))
        words[-1][0].append(int(x))
    return words


def random_rows(rng, batch, length):
    alphabet = np.array([ord(c) for c in "ab, \n"] + [0xC3, 0xA9, BOS, EOS])
    p = np.array([.3, .3, .05, .2, .05, .03, .03, .02, .02])
    tokens = rng.choice(alphabet, size=(batch, length), p=p / p.sum())
    tokens[0, 5:25] = ord("x")  # a word longer than max_word_len
    tokens[1, :12] = ord(" ")  # a long run of whitespace
    segments = np.cumsum(rng.random((batch, length)) < 0.05, axis=1)
    return tokens, segments


@pytest.mark.parametrize("length,max_word_len", [(37, 6), (64, 4), (1, 3)])
def test_word_layout_matches_a_python_loop(length, max_word_len):
    rng = np.random.default_rng(length)
    tokens, segments = random_rows(rng, 3, max(length, 26))
    tokens, segments = tokens[:, :length], segments[:, :length]
    max_words = length  # room for every word
    layout = word_layout(tokens, segments, max_word_len=max_word_len, max_words=max_words,
                         pad=PAD)
    for b in range(len(tokens)):
        expected = reference_words(tokens[b], segments[b], max_word_len)
        count = len(expected)
        assert int(layout.word[b, -1]) + 1 == count
        for i, (word, segment) in enumerate(expected):
            n = int(layout.lengths[b, i])
            assert n == len(word)
            assert list(np.asarray(layout.words[b, i, :n])) == word
            assert (np.asarray(layout.words[b, i, n:]) == PAD).all()
            assert int(layout.segment_ids[b, i]) == segment
        assert (np.asarray(layout.lengths[b, count:]) == 0).all()
        # every byte's (word, offset) points at itself
        rows = np.asarray(layout.words[b])[np.asarray(layout.word[b]), np.asarray(layout.offset[b])]
        assert (rows == tokens[b]).all()


def test_words_beyond_max_words_are_dropped_not_wrapped():
    tokens = np.array([[ord(c) for c in "a b c d e f "]])
    layout = word_layout(tokens, None, max_word_len=8, max_words=3, pad=PAD)
    assert list(np.asarray(layout.lengths[0])) == [2, 2, 2]
    assert int(layout.word[0, -1]) == 5  # six words; three fit
    assert bytes(np.asarray(layout.words[0, 2, :2]).tolist()) == b"c "
