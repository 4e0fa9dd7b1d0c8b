"""Set disjointness, from "Just read twice: closing the recall gap for recurrent language
models".

Token ids: 0 unused, 1 = prefix, 2 = list separator, 3 = answer separator, 4..V-1 set elements.
Per example the elements are shuffled and split in halves; A (``len_a`` elements) comes from one
half, B (``len_b``) from the other, and one element of A overwrites a random position of B, so
the sets meet in exactly one element. The row is ``[1] A [2] B [3]``; with ``repeats`` > 1 the
``[1] A [2] B`` part is repeated before the ``[3]`` (the JRT prompt). The only target, at the
final position, is the shared element. ``order="mixed"`` swaps which set comes first in half of the examples.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxlm.data.mqar import IGNORE
from jaxlm.ops.checks import check_positive_fields

PREFIX, SEP_LISTS, SEP_ANSWER, FIRST_ELEMENT = 1, 2, 3, 4
ORDERS = ("a_first", "b_first", "mixed")


@dataclasses.dataclass(frozen=True)
class SetDisjointnessConfig:
    vocab_size: int = 256
    len_a: int = 4
    len_b: int = 16
    order: str = "a_first"  # a_first | b_first | mixed (either, 50/50)
    repeats: int = 1

    def __post_init__(self):
        check_positive_fields("set_disjointness", self,
                              ("vocab_size", "len_a", "len_b", "repeats"))
        half = (self.vocab_size - FIRST_ELEMENT) // 2
        if max(self.len_a, self.len_b) > half:
            raise ValueError(f"set_disjointness: len_a={self.len_a} and len_b={self.len_b} "
                             f"must be <= {half}, half of the {self.vocab_size - FIRST_ELEMENT} "
                             f"elements of vocab_size={self.vocab_size}")
        if self.order not in ORDERS:
            raise ValueError(f"set_disjointness.order={self.order!r}; expected one of "
                             f"{list(ORDERS)}")

    @property
    def seq_len(self) -> int:
        return self.repeats * (self.len_a + self.len_b + 2) + 1


def set_disjointness_example(key: jax.Array, config: SetDisjointnessConfig
                             ) -> dict[str, jax.Array]:
    """inputs, targets [seq_len] int32, and ``a_first`` (bool: set A came first)."""
    k_perm, k_pick, k_slot, k_order = jax.random.split(key, 4)
    elements = jax.random.permutation(
        k_perm, jnp.arange(FIRST_ELEMENT, config.vocab_size, dtype=jnp.int32))
    half = (config.vocab_size - FIRST_ELEMENT) // 2
    a = elements[:config.len_a]
    shared = a[jax.random.randint(k_pick, (), 0, config.len_a)]
    b = elements[half:half + config.len_b]
    b = b.at[jax.random.randint(k_slot, (), 0, config.len_b)].set(shared)
    sep = jnp.array([SEP_LISTS], jnp.int32)
    if config.order == "mixed":
        a_first = jax.random.bernoulli(k_order)
    else:
        a_first = jnp.asarray(config.order == "a_first")
    # Both layouts have length len_a + 1 + len_b, so one select picks between them.
    body = jnp.where(a_first, jnp.concatenate([a, sep, b]), jnp.concatenate([b, sep, a]))
    prefixed = jnp.concatenate([jnp.array([PREFIX], jnp.int32), body])
    inputs = jnp.concatenate([jnp.tile(prefixed, config.repeats),
                              jnp.array([SEP_ANSWER], jnp.int32)])
    targets = jnp.full(config.seq_len, IGNORE, jnp.int32).at[-1].set(shared)
    return {"inputs": inputs, "targets": targets, "a_first": a_first}
