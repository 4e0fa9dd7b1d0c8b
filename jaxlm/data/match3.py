"""Match3: a task that needs triple-wise correlations.

From "Representational Strengths and Limitations of Transformers" (Sanford, Hsu and Telgarsky),
the task that "How to Capture Higher-order Correlations? Generalizing Matrix Softmax Attention
to Kronecker Computation" solves with tensor attention: for tokens x_1 .. x_N in Z_M, position
i's output is

    y_i = 1  if  x_i + x_j + x_k ≡ 0 (mod M)  for some j, k,  else 0.

Sanford et al. let j, k range over the whole row; this is the causal form for a decoder,
j, k <= i (j = k and j = i allowed), the same pairs a causal tensor-attention head reads.
They prove one softmax-attention layer needs a width polynomial in N to compute Match3, while a
single tensor-attention head does it with O(1) width: the pair score can be a trilinear form
that peaks where x_i + x_j + x_k ≡ 0.

Token ids: inputs are the residues 0..M-1 (``vocab_size`` = M), drawn uniformly; targets are 0
or 1 (read as ids of the same vocabulary) at every position. The share of positives grows
with i (about 1 - exp(-i(i+1) / (2M)) under uniform inputs), so the probe compares with the
best guess from the position alone. Part of the positives are degenerate triples that repeat a
position (j = k or j = i: x_i + 2 x_j ≡ 0), which a pairwise test detects; the probe also
scores the positions without such a triple, where only a genuine triple decides the label.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import check_positive_fields


@dataclasses.dataclass(frozen=True)
class Match3Config:
    """Options of the ``match3`` task: residues mod ``modulus`` (also the vocabulary size),
    rows of ``seq_len`` tokens."""
    modulus: int = 32  # M; also the vocabulary size
    seq_len: int = 16

    def __post_init__(self):
        check_positive_fields("match3", self, ("modulus", "seq_len"))
        if self.modulus < 2:
            raise ValueError(f"match3.modulus must be >= 2 (targets are the ids 0 and 1), got "
                             f"{self.modulus}")

    @property
    def vocab_size(self) -> int:
        return self.modulus


def match3_labels(inputs: jax.Array, modulus: int, *, degenerate: bool = False) -> jax.Array:
    """y [..., N] int32: 1 where x_i + x_j + x_k ≡ 0 (mod modulus) for some j, k <= i.
    With ``degenerate=True`` only the triples that repeat a position count (j = k, j = i or
    k = i): those a pairwise test x_i + 2 x_j ≡ 0, 2 x_i + x_k ≡ 0 or 3 x_i ≡ 0 finds, so
    softmax attention can detect them. inputs: [..., N] integers in [0, modulus). O(N³) (an
    [N, N, N] test of every triple)."""
    n = inputs.shape[-1]
    total = (inputs[..., :, None, None] + inputs[..., None, :, None]
             + inputs[..., None, None, :]) % modulus  # [..., i, j, k]
    pos = jnp.arange(n)
    earlier = pos[None, :] <= pos[:, None]  # [i, j]
    allowed = earlier[:, :, None] & earlier[:, None, :]
    if degenerate:
        i, j, k = jnp.meshgrid(pos, pos, pos, indexing="ij")
        allowed &= (j == k) | (j == i) | (k == i)
    return jnp.any((total == 0) & allowed, axis=(-2, -1)).astype(jnp.int32)


def match3_example(key: jax.Array, config: Match3Config) -> dict[str, jax.Array]:
    """inputs: [seq_len] int32 residues; targets: [seq_len] int32 labels (0 or 1)."""
    inputs = jax.random.randint(key, (config.seq_len,), 0, config.modulus, dtype=jnp.int32)
    return {"inputs": inputs, "targets": match3_labels(inputs, config.modulus)}
