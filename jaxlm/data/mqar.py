"""Multi-query associative recall (MQAR), from "Zoology: Measuring and Improving Recall in
Efficient Language Models".

An example of ``seq_len`` tokens opens with ``num_kv_pairs`` key-value pairs
``k_1 v_1 ... k_K v_K`` (keys from [1, V/2), values from [V/2, V), distinct within the example),
followed by a query region where each key appears exactly once, at an even offset ``2g`` with
gaps ``g`` drawn without replacement with probability proportional to ``a * (g+1)^(a-1)``
(``a = power_a``; early positions are favoured). Other query-region tokens are 0 (or random
tokens with ``random_non_queries``). The target at a query key's position is its value; every
other target is ``IGNORE``. Matches Zoology's ``multiquery_ar``, generated with jax.random.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import check_positive_fields

IGNORE = -100  # target id that the loss and the metrics skip


@dataclasses.dataclass(frozen=True)
class MQARConfig:
    vocab_size: int = 256
    seq_len: int = 64
    num_kv_pairs: int = 4
    power_a: float = 0.01
    random_non_queries: bool = False

    def __post_init__(self):
        v, length, pairs = self.vocab_size, self.seq_len, self.num_kv_pairs
        check_positive_fields("mqar", self, ("vocab_size", "seq_len", "num_kv_pairs"))
        if length % 2:
            raise ValueError(f"mqar.seq_len must be even, got {length}")
        if 4 * pairs > length:
            raise ValueError(f"mqar: 4 * num_kv_pairs must be <= seq_len (room for the pairs and "
                             f"their queries), got num_kv_pairs={pairs}, seq_len={length}")
        if v <= length:
            raise ValueError(f"mqar.vocab_size must exceed seq_len, got vocab_size={v}, "
                             f"seq_len={length}")
        if pairs > v // 2 - 1:
            raise ValueError(f"mqar.num_kv_pairs={pairs} exceeds the {v // 2 - 1} distinct keys "
                             f"of vocab_size={v}")
        if not 0 < self.power_a <= 1:
            raise ValueError(f"mqar.power_a must be in (0, 1], got {self.power_a}")


def mqar_example(key: jax.Array, config: MQARConfig) -> dict[str, jax.Array]:
    """One example: inputs [seq_len] int32, targets [seq_len] int32 (IGNORE off the queries)."""
    v, length, pairs = config.vocab_size, config.seq_len, config.num_kv_pairs
    k_keys, k_values, k_gaps, k_noise = jax.random.split(key, 4)
    keys = jax.random.choice(k_keys, jnp.arange(1, v // 2, dtype=jnp.int32), (pairs,),
                             replace=False)
    values = jax.random.choice(k_values, jnp.arange(v // 2, v, dtype=jnp.int32), (pairs,),
                               replace=False)
    context = 2 * pairs
    space = (length - context) // 2
    gap_p = config.power_a * jnp.arange(1, space + 1, dtype=jnp.float32) ** (config.power_a - 1)
    gaps = jax.random.choice(k_gaps, space, (pairs,), replace=False, p=gap_p / gap_p.sum())

    kvs = jnp.stack([keys, values], axis=1).reshape(-1)
    queries = jnp.zeros(length - context + 1, jnp.int32).at[2 * gaps].set(keys)
    if config.random_non_queries:
        noise = jax.random.randint(k_noise, queries.shape, 1, v, dtype=jnp.int32)
        is_query = jnp.zeros(queries.shape, bool).at[2 * gaps].set(True)
        queries = jnp.where(is_query, queries, noise)
    tokens = jnp.concatenate([kvs, queries]).astype(jnp.int32)  # [seq_len + 1]
    targets = jnp.full(length, IGNORE, jnp.int32).at[context + 2 * gaps].set(values)
    return {"inputs": tokens[:-1], "targets": targets}
