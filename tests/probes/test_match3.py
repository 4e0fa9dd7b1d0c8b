"""The Match3 probe on models whose answers we control: the labels themselves score 1
everywhere; a model that sees only the degenerate triples (j = k, j = i or k = i) answers 0 on
every position they leave undecided, so its ``triple`` accuracy is the share of negatives
there."""

import dataclasses

import jax
import numpy as np
from flax import nnx

from jaxlm.data import DataConfig, Match3Config, make_source, match3_labels
from jaxlm.probes import evaluate

DATA = DataConfig(task="match3", match3=Match3Config(modulus=8, seq_len=7))


class Answers(nnx.Module):
    """Logits favouring id 1 where ``match3_labels(inputs, degenerate=...)`` is 1."""

    def __init__(self, degenerate: bool):
        self.degenerate = degenerate

    def __call__(self, inputs):
        return jax.nn.one_hot(match3_labels(inputs, 8, degenerate=self.degenerate), 8)


def test_oracle_and_degenerate_only_model():
    exact = evaluate(Answers(False), DATA, num_examples=64, batch_size=64, seed=3)
    assert exact["accuracy"] == exact["balanced"] == exact["triple"] == 1.0
    assert 0.5 <= exact["baseline"] <= exact["pairwise"] <= 1
    partial = evaluate(Answers(True), DATA, num_examples=64, batch_size=64, seed=3)
    batch = make_source(dataclasses.replace(DATA, seed=3)).batch(0, 64, "test")
    undecided = np.asarray(match3_labels(batch["inputs"], 8, degenerate=True)) == 0
    assert partial["triple"] == 1 - np.asarray(batch["targets"])[undecided].mean()
