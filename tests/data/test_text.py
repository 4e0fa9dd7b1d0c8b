"""Byte text: tokenizer, corpora from a path, document-level splits, packing that never
predicts across a document, the letter cipher."""

import dataclasses
import sys
import types

import numpy as np
import pytest

from jaxlm.data import BOS, EOS, IGNORE, DataConfig, TextConfig, decode, encode, make_source
from jaxlm.data.text import packed_splits, read_documents, split_of


def test_encode_decode_round_trip_and_invalid_utf8():
    text = "héllo wörld ✓"
    assert decode(encode(text)) == text
    assert len(encode(text)) == len(text.encode("utf-8"))
    # a lone continuation byte and a truncated 3-byte sequence become U+FFFD; specials vanish
    assert decode([0x80, ord("a"), BOS, 0xE2, 0x9C, EOS]) == "\ufffda\ufffd"
    assert decode([]) == ""


def make_corpus(root, n=40):
    for i in range(n):
        (root / f"doc{i:02d}.txt").write_text(f"document {i}: " + "word " * (20 + i))
    (root / "empty.txt").write_text("")
    (root / ".hidden").write_text("secret " * 50)
    (root / "sub").mkdir()
    (root / "sub" / "bin.dat").write_bytes(bytes([0xFF, 0xFE, 0x41]) * 30)  # invalid UTF-8


def test_read_documents_from_a_folder_and_a_file(tmp_path):
    make_corpus(tmp_path)
    names = [name for name, _ in read_documents(tmp_path)]
    assert "empty.txt" not in names and ".hidden" not in names
    assert "sub/bin.dat" in names and len(names) == 41
    single = tmp_path / "one.txt"
    single.write_text("first paragraph\n\nsecond\n\n\n\nthird")
    assert [d for _, d in read_documents(single)] == [b"first paragraph", b"second", b"third"]
    with pytest.raises(FileNotFoundError, match="text.path"):
        read_documents(tmp_path / "missing")


def test_splits_share_no_document_and_rows_never_predict_across_documents(tmp_path):
    make_corpus(tmp_path)
    splits = packed_splits(str(tmp_path))
    assert sum(s.num_documents for s in splits) == 41
    expected = [0, 0, 0]
    for name, _ in read_documents(tmp_path):
        expected[split_of(name)] += 1
    assert [s.num_documents for s in splits] == expected and min(expected) > 0
    data = DataConfig(task="text", text=TextConfig(path=str(tmp_path), seq_len=32))
    for split in ("train", "validation", "test"):
        b = make_source(data).batch(0, 8, split)
        inputs, targets, segments = (np.asarray(b[k]) for k in ("inputs", "targets",
                                                                "segment_ids"))
        same = segments[:, 1:] == segments[:, :-1]
        # a target is the next input inside a document and IGNORE exactly after its EOS
        assert (targets[:, :-1][same] == inputs[:, 1:][same]).all()
        assert (targets[:, :-1][~same] == IGNORE).all()
        assert ((inputs == EOS) == (targets == IGNORE)).all()
        assert ((inputs[:, 1:] == BOS) == ~same).all()


def test_the_builtin_corpus_and_a_clear_error_for_too_little_text(tmp_path):
    train, validation, test = packed_splits("pydoc")
    assert train.num_documents > 40 and validation.num_documents and test.num_documents
    assert len(train.tokens) > 300_000  # the Python documentation topics
    (tmp_path / "a.txt").write_text("tiny")
    data = DataConfig(task="text", text=TextConfig(path=str(tmp_path / "a.txt"), seq_len=64))
    with pytest.raises(ValueError, match="text.path=.*too little text"):
        make_source(data).batch(0, 2, "train")


def test_cipher_is_one_letter_permutation_per_row():
    data = DataConfig(task="text", text=TextConfig(seq_len=128))
    ciphered = dataclasses.replace(data, text=dataclasses.replace(data.text, cipher=True))
    plain = np.asarray(make_source(data).batch(0, 4, "validation")["inputs"])
    secret = np.asarray(make_source(ciphered).batch(0, 4, "validation")["inputs"])
    letters = (plain >= ord("a")) & (plain <= ord("z"))
    assert (plain[~letters & ~np.isin(plain, np.arange(65, 91))] ==
            secret[~letters & ~np.isin(plain, np.arange(65, 91))]).all()
    for row in range(4):
        pairs = set(zip(plain[row][letters[row]], secret[row][letters[row]]))
        assert len({p for p, _ in pairs}) == len(pairs) == len({c for _, c in pairs})
    assert not (secret[0] == plain[0]).all()
    maps = [dict(zip(plain[r][letters[r]], secret[r][letters[r]])) for r in range(2)]
    shared = set(maps[0]) & set(maps[1])
    assert any(maps[0][k] != maps[1][k] for k in shared)  # a fresh permutation per row


def test_tfds_sources_are_read_through_data_source(monkeypatch):
    """``tfds:NAME?split=SPLIT&field=FIELD`` reads every record of ``tfds.data_source`` (a stand-in module
    here: the real one needs a prepared dataset)."""
    calls = []

    class Source:
        def __init__(self, records):
            self.records = records

        def __len__(self):
            return len(self.records)

        def __getitem__(self, i):
            return self.records[i]

    def data_source(name, *, split, download):
        calls.append((name, split, download))
        return Source([{"body": f"record {i} ".encode() * 40} for i in range(60)] + [{"body": b""}])

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(
        data_source=data_source))
    splits = packed_splits("tfds:my/corpus?split=train[:50%]&field=body")
    assert calls == [("my/corpus", "train[:50%]", False)]
    assert sum(s.num_documents for s in splits) == 60 and min(s.num_documents for s in splits)


def test_tfds_without_the_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
        packed_splits("tfds:missing")


def test_subwords_extend_the_byte_ids_and_decode_back_exactly():
    from jaxlm.data.subword import FIRST_MERGE
    from jaxlm.data.text import split_documents, subwords
    words = subwords("pydoc", 0, 512)
    assert words.vocab_size == 512 and words == subwords("pydoc", 0, 512)
    assert all(len(p) == 1 for p in words.pieces[:256]) and words.pieces[256:FIRST_MERGE] == (
        b"",) * 4 and all(len(p) >= 2 for p in words.pieces[FIRST_MERGE:])
    rng = np.random.default_rng(0)
    samples = [rng.bytes(200), "héllo  wörld\n\n\tx".encode(), b"\xff\xfe invalid \xc3"]
    for data in samples + split_documents("pydoc")[2][:20]:
        ids = words.encode(data)
        assert words.decode(ids) == data and ids.max() < 512
    text = split_documents("pydoc")[2][0]
    assert len(words.encode(text)) < len(text) / 2  # merges shorten English text


def test_subword_rows_pack_like_bytes_and_bad_settings_are_named():
    data = DataConfig(task="text", text=TextConfig(seq_len=32, subword_vocab=512))
    assert data.vocab_size == 512
    b = make_source(data).batch(0, 4, "test")
    inputs, targets, segments = (np.asarray(b[k]) for k in ("inputs", "targets", "segment_ids"))
    assert ((inputs == EOS) == (targets == IGNORE)).all() and inputs.max() < 512
    assert (inputs >= 260).any()
    with pytest.raises(ValueError, match="text.subword_vocab=260: expected 0"):
        TextConfig(subword_vocab=260)
    with pytest.raises(ValueError, match="text.cipher=True permutes letters"):
        TextConfig(subword_vocab=512, cipher=True)
