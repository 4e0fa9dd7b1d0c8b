"""Passkey retrieval, token level: the synthetic analogue of the passkey test of "Stuffed Mamba:
State Collapse and State Capacity of RNN-Based Long-Context Modeling".

Token ids: 0 unused, 1..F filler tokens repeating in a fixed cycle, F+1 marker, F+2 query,
F+3..F+12 the digits 0-9. A row is filler with ``marker d_1 .. d_D`` inserted at a uniform depth,
ending ``query d_1 .. d_{D-1}``: the targets at the query and the answer digits are the next
digits (teacher forcing), so greedy decoding recovers the key exactly when every target
position is predicted right.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxlm.data.mqar import IGNORE
from jaxlm.ops.checks import check_positive_fields


@dataclasses.dataclass(frozen=True)
class PasskeyConfig:
    seq_len: int = 128
    num_digits: int = 5
    filler_cycle: int = 8  # F: distinct filler tokens, repeating in order

    def __post_init__(self):
        check_positive_fields("passkey", self, ("seq_len", "num_digits", "filler_cycle"))
        if self.seq_len < 2 * self.num_digits + 2:
            raise ValueError(f"passkey.seq_len must be >= 2 * num_digits + 2 = "
                             f"{2 * self.num_digits + 2}, got {self.seq_len}")

    @property
    def vocab_size(self) -> int:
        return self.filler_cycle + 13

    @property
    def marker(self) -> int:
        return self.filler_cycle + 1

    @property
    def query(self) -> int:
        return self.filler_cycle + 2

    @property
    def first_digit(self) -> int:
        return self.filler_cycle + 3


def passkey_example(key: jax.Array, config: PasskeyConfig,
                    depth: jax.Array | None = None) -> dict[str, jax.Array]:
    """inputs, targets [seq_len] int32 and ``depth`` (float32 in [0, 1]: where the key sits in
    the filler; uniform unless given)."""
    length, d = config.seq_len, config.num_digits
    k_digits, k_depth = jax.random.split(key)
    digits = jax.random.randint(k_digits, (d,), 0, 10, dtype=jnp.int32) + config.first_digit
    filler_len = length - d  # holds marker + D digits; then come query + D-1 digits
    if depth is None:
        depth = jax.random.uniform(k_depth)
    start = jnp.round(depth * (filler_len - d - 1)).astype(jnp.int32)
    filler = jnp.arange(filler_len, dtype=jnp.int32) % config.filler_cycle + 1
    block = jnp.concatenate([jnp.array([config.marker], jnp.int32), digits])
    body = jax.lax.dynamic_update_slice(filler, block, (start,))
    inputs = jnp.concatenate([body, jnp.array([config.query], jnp.int32), digits[:-1]])
    targets = jnp.concatenate([jnp.full(filler_len, IGNORE, jnp.int32), digits])
    return {"inputs": inputs, "targets": targets, "depth": jnp.asarray(depth, jnp.float32)}
