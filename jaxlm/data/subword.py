"""Subword tokens for the baseline the token-free models are measured against: byte-pair
encoding ("Neural Machine Translation of Rare Words with Subword Units") trained on the
training split with the ``tokenizers`` library.

Ids extend the byte tokenizer of :mod:`jaxlm.data.text`: 0..255 are still the single bytes and
256..259 the special tokens (PAD, BOS, EOS, EOW), so every byte sequence stays encodable; ids
from 260 are the learned merges, in the order they were learned. Each document is read as
Latin-1 (one character per byte), so the learned pieces are byte strings exactly and a
document's pieces concatenate back to its bytes, whatever its encoding. Pre-tokenisation splits
before spaces and between words and whitespace (GPT-2's rule, on bytes), so no piece spans two
words. ``piece_bytes`` gives each id's length in bytes: the denominator of bits per byte.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SPECIALS = 4  # PAD, BOS, EOS, EOW after the 256 bytes
FIRST_MERGE = 256 + SPECIALS
WORDS = r" ?[^\s]+|\s+"  # a word with its leading space, or a run of whitespace


@dataclasses.dataclass(frozen=True)
class Subwords:
    """A trained byte-pair encoding: ``pieces[i]`` the bytes of id i (specials empty)."""
    pieces: tuple[bytes, ...]
    tokenizer: object  # tokenizers.Tokenizer
    to_ids: np.ndarray  # [tokenizer vocab] tokenizer id -> jaxlm id

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @property
    def piece_bytes(self) -> np.ndarray:
        """[vocab] bytes per id (0 for the special tokens)."""
        return np.array([len(p) for p in self.pieces], np.int32)

    def encode(self, data: bytes) -> np.ndarray:
        """The ids of ``data`` (any bytes)."""
        ids = self.tokenizer.encode(data.decode("latin-1")).ids
        return self.to_ids[np.asarray(ids, np.int64)].astype(np.int32)

    def encode_batch(self, documents: list[bytes]) -> list[np.ndarray]:
        """``encode`` of each of ``documents``."""
        encodings = self.tokenizer.encode_batch([d.decode("latin-1") for d in documents])
        return [self.to_ids[np.asarray(e.ids, np.int64)].astype(np.int32) for e in encodings]

    def word_start(self, data: bytes) -> int:
        """Offset of the last pre-token (``WORDS``) of ``data`` (0 when empty): no piece spans
        it, so ``encode(data + more) = encode(data[:w]) + encode(data[w:] + more)`` for any
        ``more`` (the pre-token boundaries before it do not depend on what follows)."""
        words = self.tokenizer.pre_tokenizer.pre_tokenize_str(data.decode("latin-1"))
        return words[-1][1][0] if words else 0

    def decode(self, ids) -> bytes:
        return b"".join(self.pieces[int(i)] for i in ids)


def train_subwords(documents: list[bytes], vocab_size: int) -> Subwords:
    """Learns ``vocab_size - 260`` merges from ``documents``. Deterministic: the same documents
    give the same merges."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    if vocab_size <= FIRST_MERGE:
        raise ValueError(f"subword vocab_size={vocab_size} must exceed {FIRST_MERGE} (the bytes "
                         f"and special tokens)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(WORDS), behavior="isolated")
    alphabet = [chr(b) for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - SPECIALS, initial_alphabet=alphabet,
                                  show_progress=False, min_frequency=2)
    tokenizer.train_from_iterator((d.decode("latin-1") for d in documents), trainer=trainer)
    vocab = tokenizer.get_vocab()  # piece -> tokenizer id
    merges = sorted((i, piece) for piece, i in vocab.items() if len(piece) > 1)
    pieces = [bytes([b]) for b in range(256)] + [b""] * SPECIALS
    pieces += [piece.encode("latin-1") for _, piece in merges]
    to_ids = np.zeros(len(vocab), np.int32)
    for piece, i in vocab.items():
        to_ids[i] = ord(piece) if len(piece) == 1 else 0
    for rank, (i, _) in enumerate(merges):
        to_ids[i] = FIRST_MERGE + rank
    return Subwords(tuple(pieces), tokenizer, to_ids)
