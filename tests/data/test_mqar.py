"""MQAR generator: deterministic in the seed, random-access, Zoology's layout, no leakage."""

import jax
import numpy as np
import pytest

from jaxlm.data import IGNORE, DataConfig, MQARConfig, make_source

CONFIG = MQARConfig(vocab_size=128, seq_len=64, num_kv_pairs=6)


def batch(index=0, size=32, split="train", seed=0, config=CONFIG):
    source = make_source(DataConfig(seed=seed, mqar=config))
    return jax.tree.map(np.asarray, source.batch(index, size, split))


def test_deterministic_and_random_access():
    a, b = batch(3), batch(3)
    assert (a["inputs"] == b["inputs"]).all() and (a["targets"] == b["targets"]).all()
    assert not (batch(4)["inputs"] == a["inputs"]).all()
    assert not (batch(3, seed=1)["inputs"] == a["inputs"]).all()
    # Batch i of size n holds examples i*n .. i*n+n-1: a bigger batch contains smaller ones.
    assert (batch(0, size=64)["inputs"][32:] == batch(1, size=32)["inputs"]).all()


def test_splits_differ():
    assert not (batch(0, split="train")["inputs"] == batch(0, split="test")["inputs"]).all()


def test_layout_and_answers():
    pairs = CONFIG.num_kv_pairs
    data = batch()
    for inputs, targets in zip(data["inputs"], data["targets"]):
        assert inputs.shape == targets.shape == (CONFIG.seq_len,)
        keys, values = inputs[0:2 * pairs:2], inputs[1:2 * pairs:2]
        assert len(set(keys)) == pairs and len(set(values)) == pairs
        assert ((keys >= 1) & (keys < 64)).all() and ((values >= 64) & (values < 128)).all()
        answer = dict(zip(keys, values))
        queried = np.flatnonzero(targets != IGNORE)
        assert len(queried) == pairs
        assert (queried >= 2 * pairs).all() and (queried % 2 == 0).all()
        # Each key is queried exactly once, and the target is its value.
        assert sorted(inputs[queried]) == sorted(keys)
        for pos in queried:
            assert targets[pos] == answer[inputs[pos]]
        # No leakage: the query region holds only the queried keys and zeros.
        region = inputs[2 * pairs:]
        assert set(region[region != 0]) == set(keys)
        assert not np.isin(values, region).any()


def test_gaps_favour_early_queries():
    """p(g) ~ a g^(a-1) with a = 0.01 puts most queries near the start of the region."""
    targets = batch(size=256)["targets"]
    first = np.argmax(targets != IGNORE, axis=1) - 2 * CONFIG.num_kv_pairs
    assert np.median(first) < 4


def test_random_non_queries():
    config = MQARConfig(vocab_size=128, seq_len=64, num_kv_pairs=6, random_non_queries=True)
    data = batch(config=config)
    region = data["inputs"][:, 12:]
    assert (region != 0).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(seq_len=63), "seq_len must be even"),
    (dict(num_kv_pairs=17, seq_len=64), "4 \\* num_kv_pairs must be <= seq_len"),
    (dict(vocab_size=64, seq_len=64), "vocab_size must exceed seq_len"),
    (dict(num_kv_pairs=0), "num_kv_pairs must be a positive integer"),
])
def test_bad_config_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MQARConfig(**kwargs)
