"""The needle-threading task: every row's thread, followed by plain lookups from the queried
key, ends at the target after exactly ``hops`` hops; keys are distinct; the thread's pairs sit
in the asked order; the splits differ; bad settings are named."""

import numpy as np
import pytest

from jaxlm.data import IGNORE, DataConfig, NeedleThreadingConfig, make_source
from jaxlm.data.needle_threading import QUERY


def rows(config, split="train", size=16):
    source = make_source(DataConfig(task="needle_threading", needle_threading=config))
    return {k: np.asarray(v) for k, v in source.batch(0, size, split).items()}


def follow(inputs):
    """(answer, hops, slots visited) by following the thread from the queried key."""
    assert inputs[-2] == QUERY
    keys, values = inputs[:-2:2], inputs[1:-2:2]
    lookup = {int(k): (int(v), i) for i, (k, v) in enumerate(zip(keys, values))}
    token, hops, slots = int(inputs[-1]), 0, []
    while token in lookup:
        token, slot = lookup[token]
        hops, slots = hops + 1, slots + [slot]
    return token, hops, slots


@pytest.mark.parametrize("direction", ["random", "forward", "backward"])
def test_threads_end_at_the_target_after_hops(direction):
    config = NeedleThreadingConfig(vocab_size=40, seq_len=30, max_hops=4, direction=direction)
    batch = rows(config)
    assert batch["inputs"].shape == batch["targets"].shape == (16, 30)
    assert set(np.unique(batch["hops"])) <= {1, 2, 3, 4} and len(np.unique(batch["hops"])) > 1
    for inputs, targets, hops in zip(batch["inputs"], batch["targets"], batch["hops"]):
        keys = inputs[:-2:2]
        assert len(set(keys.tolist())) == len(keys) and keys.min() >= 2
        assert (targets[:-1] == IGNORE).all()
        answer, followed, slots = follow(inputs)
        assert (answer, followed) == (targets[-1], hops)
        if direction == "forward":
            assert slots == sorted(slots)
        if direction == "backward":
            assert slots == sorted(slots, reverse=True)


def test_fixed_hops_and_splits_differ():
    config = NeedleThreadingConfig(vocab_size=64, seq_len=40, max_hops=3, hops=2)
    train, test = rows(config), rows(config, "test")
    assert (train["hops"] == 2).all()
    assert not (train["inputs"] == test["inputs"]).all()
    assert (rows(config)["inputs"] == train["inputs"]).all()  # deterministic


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="needle_threading.seq_len must be even"):
        NeedleThreadingConfig(seq_len=31)
    with pytest.raises(ValueError, match="needle_threading.vocab_size must be >="):
        NeedleThreadingConfig(vocab_size=20, seq_len=64)
    with pytest.raises(ValueError, match="needle_threading.hops must be in 0..max_hops"):
        NeedleThreadingConfig(hops=5, max_hops=3)
    with pytest.raises(ValueError, match="needle_threading.direction='sideways'"):
        NeedleThreadingConfig(direction="sideways")
