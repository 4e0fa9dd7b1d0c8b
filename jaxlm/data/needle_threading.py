"""Needle threading, token level: follow a chain of key -> key -> ... -> value pairs through a
haystack of random key-value pairs ("Needle Threading: Can LLMs Follow Threads through
Near-Million-Scale Haystacks?").

The paper's haystacks are UUID key-value pairs; a *thread* is a chain of pairs in which each
value is the key of the next pair, k_1 -> k_2 -> ... -> k_h -> v, and the model, given k_1, must
answer v (the end of the thread: a value that is no key). Here every UUID is one token. A row of
``seq_len`` tokens holds P = (seq_len - 2) / 2 pairs ``k v``, then ``QUERY k_1``; the target at
the last position is v, every other target is IGNORE. Token ids: 0 unused, 1 QUERY, 2.. the
keys and values, drawn from one pool so that keys and values look alike. Within a row:

- the P keys are distinct, so every lookup is unambiguous;
- the thread's h pairs chain as above and the rest are distractor pairs whose values are never
  keys, so the thread is the row's only chain and it ends after exactly h hops;
- ``hops``: h for every row, or 0 (the default) for h uniform in 1..``max_hops`` (returned per
  row as ``hops`` for the accuracy-against-hops metric);
- ``direction``: where the thread's pairs sit among the P slots: "random" (the paper's
  default), "forward" (in thread order, left to right) or "backward" (right to left).

Examples are pure functions of their key (random access); the splits draw different keys.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxlm.data.mqar import IGNORE
from jaxlm.ops.checks import check_positive_fields

DIRECTIONS = ("random", "forward", "backward")
QUERY = 1


@dataclasses.dataclass(frozen=True)
class NeedleThreadingConfig:
    vocab_size: int = 128
    seq_len: int = 64
    max_hops: int = 3
    hops: int = 0  # 0: uniform in 1..max_hops per row
    direction: str = "random"  # one of DIRECTIONS

    def __post_init__(self):
        check_positive_fields("needle_threading", self, ("vocab_size", "seq_len", "max_hops"))
        if self.seq_len % 2 or self.seq_len < 4:
            raise ValueError(f"needle_threading.seq_len must be even and >= 4 (pairs, then "
                             f"QUERY and the first key), got {self.seq_len}")
        if not isinstance(self.hops, int) or not 0 <= self.hops <= self.max_hops:
            raise ValueError(f"needle_threading.hops must be in 0..max_hops={self.max_hops} "
                             f"(0: uniform per row), got {self.hops!r}")
        if self.max_hops > self.num_pairs:
            raise ValueError(f"needle_threading.max_hops={self.max_hops} exceeds the "
                             f"{self.num_pairs} pairs of seq_len={self.seq_len}")
        if self.vocab_size < self.num_pairs + 3:
            raise ValueError(f"needle_threading.vocab_size must be >= num_pairs + 3 = "
                             f"{self.num_pairs + 3} (QUERY, distinct keys and at least one "
                             f"value that is no key), got {self.vocab_size}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"needle_threading.direction={self.direction!r} is unknown; "
                             f"expected one of {list(DIRECTIONS)}")

    @property
    def num_pairs(self) -> int:
        """P: the key-value pairs of the haystack, the thread's included."""
        return (self.seq_len - 2) // 2


def needle_threading_example(key: jax.Array, config: NeedleThreadingConfig
                             ) -> dict[str, jax.Array]:
    """inputs, targets [seq_len] int32 (IGNORE except the last position, the thread's end)
    and ``hops`` int32 (the row's thread length h)."""
    pairs = config.num_pairs
    k_pool, k_hops, k_values, k_slots = jax.random.split(key, 4)
    pool = jax.random.permutation(k_pool, jnp.arange(2, config.vocab_size, dtype=jnp.int32))
    keys, non_keys = pool[:pairs], pool[pairs:]
    hops = (jnp.int32(config.hops) if config.hops else
            jax.random.randint(k_hops, (), 1, config.max_hops + 1, dtype=jnp.int32))
    index = jnp.arange(pairs)
    distractors = non_keys[jax.random.randint(k_values, (pairs,), 0, non_keys.shape[0])]
    answer = non_keys[0]
    values = jnp.where(index < hops - 1, jnp.roll(keys, -1),
                       jnp.where(index == hops - 1, answer, distractors))
    slots = jax.random.permutation(k_slots, pairs)
    if config.direction != "random":  # the thread's slots, sorted, in thread order
        ordered = jnp.sort(jnp.where(index < hops, slots, pairs))
        rank = index if config.direction == "forward" else hops - 1 - index
        slots = jnp.where(index < hops, ordered[jnp.clip(rank, 0, pairs - 1)], slots)
    haystack = (jnp.zeros(2 * pairs, jnp.int32).at[2 * slots].set(keys)
                .at[2 * slots + 1].set(values))
    inputs = jnp.concatenate([haystack, jnp.stack([jnp.int32(QUERY), keys[0]])])
    targets = jnp.full(config.seq_len, IGNORE, jnp.int32).at[-1].set(answer)
    return {"inputs": inputs, "targets": targets, "hops": hops}
