"""In-context language learning on random regular languages, from "In-Context Language
Learning: Architectures and Algorithms" (Akyurek, Wang, Kim, Andreas).

Every prompt has its own random DFA: 4-12 states, an alphabet of 4-18 of the letters a..r, and
from each state 1-3 outgoing transitions on distinct letters to distinct other states (no
self-loops); all states accept. Strings start in state 0 and take a uniformly random outgoing
letter at each step (a probabilistic automaton), with lengths uniform in 1..max_string_len; a
prompt is strings joined by the separator, cut at ``seq_len + 1`` tokens. The model is trained
on every next token; the probe scores, at each position whose next token is a letter, whether
the greedy prediction is a letter the DFA allows from the current state.

Held-out languages: a DFA whose transition table hashes to 0 mod 5 is a test DFA, any other a
training DFA, so the validation and test splits use languages never seen in training.
Token ids: 0 unused, 1 = separator, 2..19 = letters a..r. Generated with NumPy on the host
(the DFA sampling is sequential), deterministic in (seed, split, example index).
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from jaxlm.ops.checks import check_positive_fields

SEPARATOR, FIRST_LETTER, LETTERS = 1, 2, 18
HELD_OUT_MODULUS = 5


@dataclasses.dataclass(frozen=True)
class RegularLanguageConfig:
    seq_len: int = 128
    min_states: int = 4
    max_states: int = 12
    min_alphabet: int = 4
    max_alphabet: int = 18
    max_out_degree: int = 3
    max_string_len: int = 20  # the paper uses 49

    def __post_init__(self):
        check_positive_fields("regular_language", self, (
            "seq_len", "min_states", "max_states", "min_alphabet", "max_alphabet",
            "max_out_degree", "max_string_len"))
        if not 2 <= self.min_states <= self.max_states:
            raise ValueError(f"regular_language: need 2 <= min_states <= max_states, got "
                             f"{self.min_states}, {self.max_states}")
        if not 1 <= self.min_alphabet <= self.max_alphabet <= LETTERS:
            raise ValueError(f"regular_language: need 1 <= min_alphabet <= max_alphabet <= "
                             f"{LETTERS}, got {self.min_alphabet}, {self.max_alphabet}")

    @property
    def vocab_size(self) -> int:
        return FIRST_LETTER + LETTERS


def random_dfa(rng: np.random.Generator, config: RegularLanguageConfig) -> np.ndarray:
    """A transition table [states, 18] int: the next state on each letter, -1 where none."""
    n = int(rng.integers(config.min_states, config.max_states + 1))
    alphabet = rng.choice(LETTERS, int(rng.integers(config.min_alphabet,
                                                    config.max_alphabet + 1)), replace=False)
    table = np.full((n, LETTERS), -1, np.int64)
    for state in range(n):
        others = np.delete(np.arange(n), state)
        degree = min(int(rng.integers(1, config.max_out_degree + 1)), len(alphabet), n - 1)
        letters = rng.choice(alphabet, degree, replace=False)
        table[state, letters] = rng.choice(others, degree, replace=False)
    return table


def is_held_out(table: np.ndarray) -> bool:
    """Whether a DFA belongs to the held-out (validation / test) languages."""
    return zlib.crc32(np.ascontiguousarray(table, np.int64).tobytes()) % HELD_OUT_MODULUS == 0


def regular_language_example(rng: np.random.Generator, config: RegularLanguageConfig,
                             held_out: bool) -> dict[str, np.ndarray]:
    """inputs, targets [seq_len] int32 and ``valid`` [seq_len, vocab] bool: the letters the DFA
    allows after each input position (from the state reached there)."""
    table = random_dfa(rng, config)
    while is_held_out(table) != held_out:
        table = random_dfa(rng, config)
    tokens, states = [], []  # states[t]: the DFA state after reading tokens[t]
    while len(tokens) < config.seq_len + 1:
        state = 0
        for _ in range(int(rng.integers(1, config.max_string_len + 1))):
            letter = rng.choice(np.flatnonzero(table[state] >= 0))
            state = int(table[state, letter])
            tokens.append(FIRST_LETTER + letter)
            states.append(state)
        tokens.append(SEPARATOR)
        states.append(0)
    tokens = np.asarray(tokens[:config.seq_len + 1], np.int32)
    states = np.asarray(states[:config.seq_len])
    valid = np.zeros((config.seq_len, config.vocab_size), bool)
    valid[:, FIRST_LETTER:] = table[states] >= 0
    return {"inputs": tokens[:-1], "targets": tokens[1:], "valid": valid}


def regular_language_batch(seed: int, split: int, indices: np.ndarray,
                           config: RegularLanguageConfig) -> dict[str, np.ndarray]:
    """Examples ``indices`` of split number ``split`` (0 = train: training languages; else
    held-out languages), each a function of (seed, split, index) alone."""
    examples = [regular_language_example(np.random.default_rng([seed, split, int(i)]), config,
                                         held_out=split != 0) for i in indices]
    return {name: np.stack([e[name] for e in examples]) for name in examples[0]}
