"""Induction heads and selective copying: the copy probes of "Hungry Hungry Hippos: Towards
Language Modeling with State Space Models" (H3) and "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces".

Induction head (token ids: 0 unused, 1 = trigger, 2..V-1 content): random content tokens, one
trigger at a uniform position followed by the token to remember, and the trigger again at the
end; the only target is the remembered token, at the last position.

Selective copying (0 = noise, 1 = marker, 2..V-1 data): ``num_tokens`` data tokens at sorted
random positions of a noise region, then ``num_tokens`` markers; at the i-th marker the target is
the i-th data token. Input-dependent selection is what solves it: a time-invariant convolution
cannot tell where the data sits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxlm.data.mqar import IGNORE
from jaxlm.ops.checks import check_positive_fields

TRIGGER = 1
MARKER = 1


@dataclasses.dataclass(frozen=True)
class InductionHeadConfig:
    vocab_size: int = 16
    seq_len: int = 64

    def __post_init__(self):
        check_positive_fields("induction_head", self, ("vocab_size", "seq_len"))
        if self.vocab_size < 4:
            raise ValueError(f"induction_head.vocab_size must be >= 4 (trigger + 2 content "
                             f"tokens), got {self.vocab_size}")
        if self.seq_len < 4:
            raise ValueError(f"induction_head.seq_len must be >= 4, got {self.seq_len}")


def induction_head_example(key: jax.Array, config: InductionHeadConfig) -> dict[str, jax.Array]:
    """inputs, targets: [seq_len] int32; the target is IGNORE except at the last position."""
    length, v = config.seq_len, config.vocab_size
    k_tokens, k_pos = jax.random.split(key)
    tokens = jax.random.randint(k_tokens, (length,), 2, v, dtype=jnp.int32)
    pos = jax.random.randint(k_pos, (), 0, length - 2)
    tokens = tokens.at[pos].set(TRIGGER).at[length - 1].set(TRIGGER)
    targets = jnp.full(length, IGNORE, jnp.int32).at[length - 1].set(tokens[pos + 1])
    return {"inputs": tokens, "targets": targets}


@dataclasses.dataclass(frozen=True)
class SelectiveCopyConfig:
    vocab_size: int = 16
    seq_len: int = 256  # noise region + num_tokens markers
    num_tokens: int = 8

    def __post_init__(self):
        check_positive_fields("selective_copy", self,
                              ("vocab_size", "seq_len", "num_tokens"))
        if self.vocab_size < 3:
            raise ValueError(f"selective_copy.vocab_size must be >= 3, got {self.vocab_size}")
        if 2 * self.num_tokens > self.seq_len:
            raise ValueError(f"selective_copy: 2 * num_tokens must be <= seq_len, got "
                             f"num_tokens={self.num_tokens}, seq_len={self.seq_len}")


def selective_copy_example(key: jax.Array, config: SelectiveCopyConfig) -> dict[str, jax.Array]:
    """inputs, targets: [seq_len] int32; targets only at the markers."""
    n, region = config.num_tokens, config.seq_len - config.num_tokens
    k_data, k_pos = jax.random.split(key)
    data = jax.random.randint(k_data, (n,), 2, config.vocab_size, dtype=jnp.int32)
    positions = jnp.sort(jax.random.choice(k_pos, region, (n,), replace=False))
    noise = jnp.zeros(region, jnp.int32).at[positions].set(data)
    inputs = jnp.concatenate([noise, jnp.full(n, MARKER, jnp.int32)])
    targets = jnp.concatenate([jnp.full(region, IGNORE, jnp.int32), data])
    return {"inputs": inputs, "targets": targets}
