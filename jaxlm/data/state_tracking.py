"""State tracking: the running product of a word over a finite group.

The task behind "FlashRNN: Optimizing Traditional RNNs on Modern Hardware" (and xLSTM's
formal-language results): a row is a word g_1 g_2 ... g_T of group elements drawn uniformly, and
the target at every position t is the state after reading the prefix,

    s_t = g_t · s_{t-1},   s_0 = e,

so s_t = g_t ⋯ g_2 g_1. Groups (``group``):

- ``"parity"``: Z_2, the parity of the number of ones in a bit string;
- ``"cyclic"``: Z_m with m = ``modulus`` (modular counting: the sum of the inputs mod m);
- ``"s3"``, ``"s5"``: the symmetric group on 3 or 5 points, permutation composition
  (S5 is not solvable: no constant-depth linear recurrence with non-negative diagonal
  transitions tracks it, while a nonlinear RNN can).

Token ids are the element indices 0..|G|-1 for both inputs and targets (``vocab_size`` = |G|);
permutations are indexed in lexicographic order of their one-line notation (0 is the identity).
Every position is a target. Because the inputs are i.i.d., position L-1 of a row is distributed
as the last position of a row of length L: the probe reads accuracy against length off one row.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.ops.checks import check_positive_fields

GROUPS = ("parity", "cyclic", "s3", "s5")


@dataclasses.dataclass(frozen=True)
class StateTrackingConfig:
    group: str = "parity"  # one of GROUPS
    modulus: int = 5  # the m of group="cyclic"
    seq_len: int = 64

    def __post_init__(self):
        check_positive_fields("state_tracking", self, ("modulus", "seq_len"))
        if self.group not in GROUPS:
            raise ValueError(f"state_tracking.group={self.group!r} is unknown; expected one of "
                             f"{list(GROUPS)}")
        if self.group == "cyclic" and self.modulus < 2:
            raise ValueError(f"state_tracking.modulus must be >= 2 for group='cyclic', got "
                             f"{self.modulus}")

    @property
    def vocab_size(self) -> int:
        """The order of the group: the number of input and of state tokens."""
        return len(group_table(self.group, self.modulus))


@functools.lru_cache(maxsize=None)
def group_table(group: str, modulus: int = 5) -> np.ndarray:
    """The multiplication table [|G|, |G|] int32: ``table[s, g]`` is the index of g · s.
    For permutations, (g · s)(i) = g(s(i)) (apply s, then g)."""
    if group == "parity":
        group, modulus = "cyclic", 2
    if group == "cyclic":
        n = np.arange(modulus)
        return ((n[:, None] + n[None, :]) % modulus).astype(np.int32)
    if group not in ("s3", "s5"):
        raise ValueError(f"group_table: group={group!r} is unknown; expected one of "
                         f"{list(GROUPS)}")
    perms = list(itertools.permutations(range(int(group[1]))))
    index = {p: i for i, p in enumerate(perms)}
    return np.array([[index[tuple(g[s[i]] for i in range(len(s)))] for g in perms]
                     for s in perms], np.int32)


def state_tracking_example(key: jax.Array, config: StateTrackingConfig) -> dict[str, jax.Array]:
    """inputs: [seq_len] int32 group elements; targets: [seq_len] int32, the state after each
    prefix."""
    table = jnp.asarray(group_table(config.group, config.modulus))
    inputs = jax.random.randint(key, (config.seq_len,), 0, table.shape[0], dtype=jnp.int32)

    def step(state, g):
        state = table[state, g]
        return state, state

    _, targets = jax.lax.scan(step, jnp.int32(0), inputs)
    return {"inputs": inputs, "targets": targets}
