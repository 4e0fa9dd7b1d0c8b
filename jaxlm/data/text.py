"""Text as bytes: a byte tokenizer, corpora, packed rows with ``segment_ids`` and a
document-level train / validation / test split.

Token ids 0..255 are the UTF-8 bytes; ``BOS`` opens and ``EOS`` closes every document, ``EOW``
ends a word for the word-level models ("Hierarchical Autoregressive Transformers", "Learn Your
Tokens"), ``PAD`` fills. A corpus is a list of named documents: every file under a path the
user gives; a prepared tensorflow-datasets dataset, ``tfds:NAME?split=SPLIT&field=FIELD``, read through
``tfds.data_source`` (random access; the optional extra ``tensorflow-datasets``, data already in
its data_dir: nothing is downloaded); or the built-in default, the topic pages of the Python
documentation that ship with the standard library (``pydoc_data.topics``: about 460 kB of
English prose and code, on every machine with Python).

A document goes to the validation split when the CRC-32 of its name is 0 mod 10, to the test
split when it is 1 mod 10, otherwise to training: the splits never share a document. Each
split's documents are concatenated as ``BOS doc EOS BOS doc EOS ...`` and cut into rows of
``seq_len + 1`` tokens; row ``r`` holds ``inputs = stream[r L : r L + L]``, ``targets`` the
next tokens, ``segment_ids`` the document of each input. A target in another document than its
input (the token after an ``EOS``) is ``IGNORE``, so no prediction crosses a document. Training
rows are visited in a fresh seeded permutation each epoch; example ``i`` of a split is a pure
function of (seed, split, i), so runs resume from the step.

``cipher=True`` applies, per row, a random permutation of the 26 letters (the same one to
upper and lower case): English under a substitution cipher, the probe of "Lexinvariant
Language Models".

``subword_vocab=N`` tokenizes the same documents with a byte-pair encoding of N ids learned on
the training split (:mod:`jaxlm.data.subword`; ids below 260 keep their byte meaning): the
subword baseline, scored in bits per byte like the byte-level models.

``decomposition=True`` replaces packing in the training split by dataset decomposition
(:mod:`jaxlm.data.decomposition`): rows of one document each, of power-of-two lengths from
``min_bucket`` to ``seq_len``, one length per step with batch_size x seq_len tokens, and a
short-to-long curriculum over ``curriculum_steps``.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import urllib.parse
import zlib

import numpy as np

from jaxlm.data.decomposition import Buckets, decompose, decomposed_batch
from jaxlm.data.mqar import IGNORE
from jaxlm.data.subword import FIRST_MERGE, Subwords, train_subwords
from jaxlm.ops.checks import check_positive_fields

PAD, BOS, EOS, EOW = 256, 257, 258, 259
BYTE_VOCAB = 260
BYTE_PIECES = (np.arange(BYTE_VOCAB) < 256).astype(np.int32)  # bytes per id: 1, specials 0
SPLIT_MODULUS = 10  # crc32(name) % 10: 0 -> validation, 1 -> test, else train
DEFAULT_CORPUS = "pydoc"


def encode(text: str | bytes) -> np.ndarray:
    """UTF-8 bytes of ``text`` as int32 token ids 0..255."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, np.uint8).astype(np.int32)


def decode(ids) -> str:
    """Token ids -> text: special ids are dropped, invalid UTF-8 becomes U+FFFD."""
    ids = np.asarray(ids).reshape(-1)
    return bytes(int(i) for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Byte-level text: ``path`` is a text file or a folder of them ('' or 'pydoc': the
    built-in corpus)."""
    path: str = DEFAULT_CORPUS
    seq_len: int = 256
    cipher: bool = False  # substitution-cipher each row's letters (a fresh permutation per row)
    max_bytes: int = 0  # > 0: keep at most this many bytes of each document
    subword_vocab: int = 0  # > 260: byte-pair-encoded tokens of this many ids; 0: bytes
    # Dataset decomposition of the training split (jaxlm.data.decomposition): rows of one
    # document each, bucketed by power-of-two length from min_bucket to seq_len
    decomposition: bool = False
    min_bucket: int = 16
    curriculum_steps: int = 0  # steps over which short rows lose their extra odds; 0: none
    curriculum_ratio: float = 8.0  # odds of the shortest bucket over the longest at step 0

    def __post_init__(self):
        check_positive_fields("text", self, ("seq_len",))
        if self.max_bytes < 0:
            raise ValueError(f"text.max_bytes must be >= 0 (0: whole documents), "
                             f"got {self.max_bytes}")
        if self.subword_vocab and self.subword_vocab <= FIRST_MERGE:
            raise ValueError(f"text.subword_vocab={self.subword_vocab}: expected 0 (bytes) or "
                             f"more than {FIRST_MERGE} (the bytes, the special tokens and at "
                             f"least one merge)")
        if self.decomposition:
            for name in ("seq_len", "min_bucket"):
                value = getattr(self, name)
                if value < 1 or value & (value - 1):
                    raise ValueError(f"text.{name} must be a power of two with "
                                     f"text.decomposition=True, got {value}")
            if self.min_bucket > self.seq_len:
                raise ValueError(f"text.min_bucket={self.min_bucket} exceeds "
                                 f"text.seq_len={self.seq_len}")
            if self.curriculum_steps < 0 or not self.curriculum_ratio >= 1.0:
                raise ValueError(f"text.curriculum_steps must be >= 0 and "
                                 f"text.curriculum_ratio >= 1, got {self.curriculum_steps} and "
                                 f"{self.curriculum_ratio}")
        if self.subword_vocab and self.cipher:
            raise ValueError("text.cipher=True permutes letters, which needs byte tokens; set "
                             "text.subword_vocab=0")

    @property
    def vocab_size(self) -> int:
        return self.subword_vocab or BYTE_VOCAB


def default_documents() -> list[tuple[str, bytes]]:
    """The built-in corpus: the Python documentation topics of the standard library."""
    from pydoc_data.topics import topics
    return [(name, topics[name].encode("utf-8")) for name in sorted(topics)]


def read_documents(path: str | pathlib.Path) -> list[tuple[str, bytes]]:
    """(name, bytes) for every non-empty file under ``path`` (a file or a folder, recursively,
    hidden files skipped), sorted by name. A single file is split into documents at blank
    lines so that it can be split into train / validation / test."""
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"text.path={str(path)!r} does not exist; give a text file, a "
                                f"folder of text files, or 'pydoc' for the built-in corpus")
    if path.is_file():
        paragraphs = [p.strip(b"\n") for p in path.read_bytes().split(b"\n\n")]
        return [(f"{path.name}:{i}", p) for i, p in enumerate(paragraphs) if p.strip()]
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    documents = [(str(p.relative_to(path)), p.read_bytes()) for p in files]
    return [(name, data) for name, data in documents if data.strip()]


def tfds_documents(spec: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of every record of ``tfds:NAME?split=SPLIT&field=FIELD`` (default split
    ``train``, field ``text``), read with ``tfds.data_source``; the dataset must already be
    prepared in tensorflow-datasets' data_dir (jaxlm never downloads)."""
    name, _, query = spec.removeprefix("tfds:").partition("?")
    options = dict(urllib.parse.parse_qsl(query))
    split, field = options.get("split", "train"), options.get("field", "text")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError(f"text.path={spec!r} needs tensorflow-datasets: pip install "
                          f"tensorflow-datasets (and prepare {name!r} in its data_dir)") from None
    source = tfds.data_source(name, split=split, download=False)
    documents = []
    for index in range(len(source)):
        value = source[index][field]
        documents.append((f"{name}:{split}:{index}",
                          value.encode("utf-8") if isinstance(value, str) else bytes(value)))
    return [(n, d) for n, d in documents if d.strip()]


def split_of(name: str) -> int:
    """0 train, 1 validation, 2 test (the index in ``jaxlm.data.SPLITS``)."""
    residue = zlib.crc32(name.encode("utf-8")) % SPLIT_MODULUS
    return {0: 1, 1: 2}.get(residue, 0)


@dataclasses.dataclass(frozen=True)
class PackedSplit:
    """One split as a token stream: ``tokens`` [n] int32 and ``documents`` [n] int32 (the
    document index of each token)."""
    tokens: np.ndarray
    documents: np.ndarray
    num_documents: int

    def num_rows(self, seq_len: int) -> int:
        return max((len(self.tokens) - 1) // seq_len, 0)


def pack(documents: list[bytes], tokenize=encode) -> PackedSplit:
    """``BOS tokenize(doc) EOS`` for every document, concatenated."""
    pieces, owners = [], []
    for index, data in enumerate(documents):
        tokens = np.concatenate([[BOS], tokenize(data), [EOS]]).astype(np.int32)
        pieces.append(tokens)
        owners.append(np.full(len(tokens), index, np.int32))
    if not pieces:
        return PackedSplit(np.zeros(0, np.int32), np.zeros(0, np.int32), 0)
    return PackedSplit(np.concatenate(pieces), np.concatenate(owners), len(documents))


@functools.lru_cache(maxsize=8)
def split_documents(path: str, max_bytes: int = 0
                    ) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The train, validation and test documents of a corpus (read once per process)."""
    if path in ("", DEFAULT_CORPUS):
        named = default_documents()
    elif path.startswith("tfds:"):
        named = tfds_documents(path)
    else:
        named = read_documents(path)
    if max_bytes:
        named = [(name, data[:max_bytes]) for name, data in named]
    by_split: list[list[bytes]] = [[], [], []]
    for name, data in named:
        by_split[split_of(name)].append(data)
    return tuple(by_split)


@functools.lru_cache(maxsize=8)
def subwords(path: str, max_bytes: int, vocab_size: int) -> Subwords:
    """The byte-pair encoding of ``vocab_size`` ids learned on a corpus's training split."""
    return train_subwords(split_documents(path, max_bytes)[0], vocab_size)


@functools.lru_cache(maxsize=8)
def packed_splits(path: str, max_bytes: int = 0, subword_vocab: int = 0
                  ) -> tuple[PackedSplit, PackedSplit, PackedSplit]:
    """The train, validation and test token streams of a corpus: bytes, or subwords when
    ``subword_vocab`` is set."""
    tokenize = subwords(path, max_bytes, subword_vocab).encode if subword_vocab else encode
    return tuple(pack(docs, tokenize) for docs in split_documents(path, max_bytes))


def piece_bytes(config: TextConfig) -> np.ndarray:
    """[vocab] the bytes each token id stands for (0 for the special tokens)."""
    if config.subword_vocab:
        return subwords(config.path, config.max_bytes, config.subword_vocab).piece_bytes
    return BYTE_PIECES


def corpus_split(config: TextConfig, split: int) -> PackedSplit:
    splits = packed_splits(config.path, config.max_bytes, config.subword_vocab)
    packed = splits[split]
    if packed.num_rows(config.seq_len) == 0:
        sizes = [p.num_documents for p in splits]
        raise ValueError(f"text.path={config.path!r}: split {split} (0 train, 1 validation, "
                         f"2 test) has too little text for one row of text.seq_len="
                         f"{config.seq_len} tokens (documents per split: {sizes}); give a "
                         f"larger corpus or a shorter seq_len")
    return packed


@functools.lru_cache(maxsize=8)
def training_buckets(config: TextConfig) -> Buckets:
    """The dataset decomposition of the training split (``text.decomposition``)."""
    buckets = decompose(corpus_split(config, 0).documents, config.seq_len, config.min_bucket)
    if not sum(len(o) for o in buckets.offsets):
        raise ValueError(f"text.path={config.path!r}: no training document has "
                         f"text.min_bucket={config.min_bucket} tokens")
    return buckets


def decomposed_text_batch(seed: int, step: int, batch_size: int,
                          config: TextConfig) -> dict[str, np.ndarray]:
    """Training batch ``step`` under dataset decomposition: batch_size x seq_len tokens in rows
    of one document each, all of one bucket's length (:mod:`jaxlm.data.decomposition`)."""
    return decomposed_batch(corpus_split(config, 0), training_buckets(config), seed, step,
                            batch_size, seq_len=config.seq_len,
                            curriculum_steps=config.curriculum_steps,
                            curriculum_ratio=config.curriculum_ratio)


def row_order(seed: int, split: int, index: np.ndarray, num_rows: int) -> np.ndarray:
    """The stream row of each example index: a seeded permutation per epoch in training, in
    order for validation and test."""
    if split != 0:
        return index % num_rows
    rows = np.empty_like(index)
    for epoch in np.unique(index // num_rows):
        at = index // num_rows == epoch
        permutation = np.random.default_rng([seed, int(epoch)]).permutation(num_rows)
        rows[at] = permutation[index[at] % num_rows]
    return rows


def letter_cipher(rng: np.random.Generator) -> np.ndarray:
    """A token map [BYTE_VOCAB] that permutes a..z (and A..Z the same way), fixing the rest."""
    table = np.arange(BYTE_VOCAB, dtype=np.int32)
    permutation = rng.permutation(26)
    table[ord("a") + np.arange(26)] = ord("a") + permutation
    table[ord("A") + np.arange(26)] = ord("A") + permutation
    return table


def text_batch(seed: int, split: int, indices: np.ndarray,
               config: TextConfig) -> dict[str, np.ndarray]:
    """Rows of packed text: inputs, targets, segment_ids [batch, seq_len] int32."""
    packed = corpus_split(config, split)
    length = config.seq_len
    rows = row_order(seed, split, np.asarray(indices, np.int64), packed.num_rows(length))
    window = rows[:, None] * length + np.arange(length + 1)
    tokens, owners = packed.tokens[window], packed.documents[window]
    if config.cipher:
        for b, index in enumerate(indices):
            cipher = letter_cipher(np.random.default_rng([seed, split, int(index), 7]))
            tokens[b] = cipher[tokens[b]]
    same = owners[:, 1:] == owners[:, :-1]
    return {"inputs": tokens[:, :-1], "targets": np.where(same, tokens[:, 1:], IGNORE),
            "segment_ids": owners[:, :-1]}
