"""Combiner and Core Context Aware (CCA) attention at CPU scale, untrained, beside the papers'
claims: what each query can reach, how much of a planted needle it recovers, and what it costs.

Run:  python experiments/combiner_cca.py   (about a minute on one CPU core)

1. Reach: the share of each query's causal prefix that gets a positive probability (the
   Combiner paper's "full attention capability": every location attends to every other,
   directly or through an abstraction), against a sliding window of the same local width.
2. Needle: random keys, one planted key u at distance D before the last query, whose query is
   u (logit gap ~ 8); values are one-hot positions, so the output is the attention row and its
   entry at the needle is the mass the needle gets. Untrained: the summaries' pooled queries and
   keys are random, as at initialisation.
3. Cost: scores computed per query and the forward + backward time of each op's fast form at
   length 2048 (batch 1, 4 heads, head dim 64, float32), beside blockwise full attention.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.ops import attention, combiner_attention, core_context_attention

B = 16  # Combiner block, CCA group and window, and the sliding window


def ops_at(block):
    return {
        "attention (full)": lambda q, k, v: attention(q, k, v, impl="xla", block_size=128),
        f"window {block}": lambda q, k, v: attention(q, k, v, window=block, impl="xla",
                                                      block_size=128),
        f"combiner B={block}": lambda q, k, v: combiner_attention(q, k, v, block_size=block),
        f"core_context g=w={block}": lambda q, k, v: core_context_attention(
            q, k, v, group_size=block, window=block),
    }


def reach_and_needle(length=256, dim=32, draws=20):
    rng = np.random.default_rng(0)
    eye = jnp.eye(length)[None, :, None, :]
    rows = {}
    for name, op in ops_at(B).items():
        fn = jax.jit(op)
        reach, needle = [], {d: [] for d in (4, 40, 200)}
        for _ in range(draws):
            k = rng.standard_normal((1, length, 1, dim)) * 0.5
            q = rng.standard_normal((1, length, 1, dim)) * 0.5
            probs = np.asarray(fn(jnp.asarray(q), jnp.asarray(k), eye))[0, :, 0]
            reach.append(np.mean([(probs[t, :t + 1] > 0).mean() for t in range(length)]))
            for distance in needle:
                u = rng.standard_normal(dim)
                u *= np.sqrt(8 * np.sqrt(dim)) / np.linalg.norm(u)  # q·k / √d = 8
                kn, qn = k.copy(), q.copy()
                kn[0, length - 1 - distance, 0] = u
                qn[0, length - 1, 0] = u
                row = np.asarray(fn(jnp.asarray(qn), jnp.asarray(kn), eye))[0, -1, 0]
                needle[distance].append(row[length - 1 - distance])
        rows[name] = (np.mean(reach), {d: np.mean(m) for d, m in needle.items()})
    print(f"## Reach and needle mass (length {length}, head dim {dim}, {draws} draws)\n")
    print("| op | prefix reached | needle mass, D = 4 | D = 40 | D = 200 |")
    print("|---|---|---|---|---|")
    for name, (reach, needle) in rows.items():
        print(f"| {name} | {reach:.3f} | " + " | ".join(f"{needle[d]:.3f}" for d in needle)
              + " |")


def cost(length=2048, heads=4, dim=64, reps=3):
    shape = (1, length, heads, dim)
    q, k, v = (jax.random.normal(jax.random.key(i), shape) for i in range(3))
    block = 64
    scores = {"attention (full)": (length + 1) / 2, f"window {block}": 2 * block,
              f"combiner B={block}": 2 * block + length // block,
              f"core_context g=w={block}": 2 * block + length // block}
    print(f"\n## Cost at length {length} (batch 1, {heads} heads, head dim {dim}, float32)\n")
    print("| op | scores per query | forward + backward ms |")
    print("|---|---|---|")
    for name, op in ops_at(block).items():
        step = jax.jit(jax.grad(lambda q, k, v: jnp.sum(op(q, k, v)), argnums=(0, 1, 2)))
        jax.block_until_ready(step(q, k, v))
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            jax.block_until_ready(step(q, k, v))
            times.append(time.perf_counter() - start)
        print(f"| {name} | {scores[name]:.0f} | {1e3 * min(times):.0f} |")


if __name__ == "__main__":
    reach_and_needle()
    cost()
