"""Dataset decomposition: every piece is a power-of-two run of one document, a document's
pieces tile it from its start (longest first) and drop fewer than min_bucket tokens; a
training batch is one bucket, batch_size x seq_len tokens, rows of one document with targets
its next tokens; the curriculum moves from short-favoured to token-proportional odds."""

import dataclasses

import numpy as np
import pytest

from jaxlm.data import IGNORE, DataConfig, TextConfig, make_source
from jaxlm.data.decomposition import bucket_probabilities, decompose
from jaxlm.data.text import corpus_split, training_buckets


def test_pieces_tile_each_document_in_powers_of_two():
    sizes = [1, 7, 8, 40, 64, 100, 3, 129]
    documents = np.repeat(np.arange(len(sizes)), sizes)
    buckets = decompose(documents, max_len=32, min_len=4)
    assert buckets.lengths == (4, 8, 16, 32)
    pieces = sorted((int(o), n) for n, offs in zip(buckets.lengths, buckets.offsets)
                    for o in offs)
    starts = np.cumsum([0] + sizes[:-1])
    for doc, (start, size) in enumerate(zip(starts, sizes)):
        mine = [(o, n) for o, n in pieces if start <= o < start + size]
        assert all(documents[o] == documents[o + n - 1] == doc for o, n in mine)
        at = start
        for o, n in mine:  # contiguous from the document's start, longest first
            assert o == at
            at += n
        assert [n for _, n in mine] == sorted((n for _, n in mine), reverse=True)
        assert 0 <= start + size - at < 4  # fewer than min_len tokens dropped
    assert buckets.tokens.sum() == sum(size - size % 32 % 4 for size in sizes)
    with pytest.raises(ValueError, match="max_len must be a power of two"):
        decompose(documents, max_len=24, min_len=4)


def test_batches_are_one_bucket_of_single_documents():
    text = TextConfig(seq_len=64, min_bucket=8, decomposition=True, max_bytes=300)
    source = make_source(DataConfig(task="text", text=text))
    packed = corpus_split(text, 0)
    lengths = set()
    for step in range(6):
        batch = {k: np.asarray(v) for k, v in source.batch(step, 4, "train").items()}
        rows, length = batch["inputs"].shape
        lengths.add(length)
        assert rows * length == 4 * 64 and length in (8, 16, 32, 64)
        assert (batch["segment_ids"] == 0).all()
        for inputs, targets in zip(batch["inputs"], batch["targets"]):
            # find the row in the stream: consecutive tokens of one document
            at = np.flatnonzero(np.lib.stride_tricks.sliding_window_view(
                packed.tokens, length).__eq__(inputs).all(-1))
            assert len(at) and len(set(packed.documents[at[0]:at[0] + length])) == 1
            nxt = packed.tokens[at[0] + 1:at[0] + length + 1]
            owner = packed.documents[at[0] + 1:at[0] + length + 1]
            want = np.where(owner == packed.documents[at[0]], nxt, IGNORE)
            assert (targets[:len(want)] == want).all()
    assert len(lengths) > 1
    again = np.asarray(source.batch(3, 4, "train")["inputs"])
    assert (again == np.asarray(source.batch(3, 4, "train")["inputs"])).all()
    validation = source.batch(0, 4, "validation")  # held-out rows stay packed
    assert validation["inputs"].shape == (4, 64)


def test_curriculum_favours_short_rows_first():
    text = TextConfig(seq_len=64, min_bucket=8, decomposition=True, max_bytes=300)
    buckets = training_buckets(text)
    share = buckets.tokens / buckets.tokens.sum()
    start = bucket_probabilities(buckets, 0, curriculum_steps=100, ratio=8.0)
    end = bucket_probabilities(buckets, 100, curriculum_steps=100, ratio=8.0)
    np.testing.assert_allclose(end, share)
    odds = (start / share)[share > 0]
    assert np.isclose(odds[0] / odds[-1], 8.0) and (np.diff(odds) < 0).all()
    with pytest.raises(ValueError, match="text.seq_len must be a power of two"):
        TextConfig(seq_len=48, decomposition=True)
    with pytest.raises(ValueError, match="decomposition=True draws rows"):
        make_source(DataConfig(task="text", text=text, train_examples=4)).batch(0, 4)
