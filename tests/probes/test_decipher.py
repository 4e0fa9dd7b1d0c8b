"""The deciphering probe: letters, frequency analysis by hand, the linear probe on separable
data, and a model that cannot decipher scoring near the commonest letter's share."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.data import BYTE_VOCAB, DataConfig, TextConfig, encode
from jaxlm.probes.decipher import (decipher_probe, fit_linear_probe, frequency_analysis,
                                   letter_index)


def test_letter_index_folds_case_and_marks_everything_else():
    np.testing.assert_array_equal(letter_index(np.append(encode("aZ 1é"), 257)),
                                  [0, 25, -1, -1, -1, -1, -1])


def test_frequency_analysis_ranks_the_document_so_far():
    """English order e, t, a, ...: the guess is the letter of the current one's rank among the
    counts so far (ties to the letter seen first); a new document starts afresh."""
    order = np.array([4, 19, 0] + [i for i in range(26) if i not in (4, 19, 0)])
    letters = letter_index(encode("xyx yxx"))
    guesses = frequency_analysis(letters, np.zeros(len(letters), int), order)
    # x: 1st (e); y: x leads, y 2nd (t); x: e; space; y: tie with x, x seen first -> t;
    # x: e; x: e
    np.testing.assert_array_equal(guesses, [4, 19, 4, -1, 19, 4, 4])
    two_documents = frequency_analysis(letters, np.array([0, 0, 0, 0, 1, 1, 1]), order)
    assert two_documents[4] == 4  # y is the first letter of the new document


def test_linear_probe_separates_separable_letters():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 26, 600)
    features = np.eye(26)[labels] * 3 + rng.normal(size=(600, 26)) * 0.3
    weights, bias = fit_linear_probe(jnp.asarray(features), jnp.asarray(labels))
    assert ((features @ np.asarray(weights) + np.asarray(bias)).argmax(-1) == labels).mean() > 0.99


class CipherLetterOnly(nnx.Module):
    """Knows the ciphered byte in front of it and nothing else: one-hot hidden states."""

    def hidden(self, tokens, *, segment_ids=None):
        return jax.nn.one_hot(tokens, BYTE_VOCAB)


def test_a_model_that_sees_only_the_cipher_letter_cannot_decipher():
    """The cipher is fresh per row, so the ciphered letter says nothing of the plaintext: the
    probe can do no better than guessing by letter frequency (about 0.13 for 'e')."""
    data = DataConfig(task="text", text=TextConfig(seq_len=128))
    metrics = decipher_probe(CipherLetterOnly(), data, num_examples=16, batch_size=8, seed=0)
    assert set(metrics) == {"decipher", "decipher@64", "decipher@256", "frequency",
                            "frequency@64", "frequency@256"}
    assert metrics["decipher"] < 0.2 and 0 < metrics["frequency"] < 1
    assert metrics["frequency@256"] > metrics["frequency@64"]  # more text, better counts
