"""Dense against block-sparse causal attention as the length grows, with a fixed top-k.

Run:  .venv/bin/python experiments/bench_attention.py [--lengths 1024 4096 16384 32768]

Forms, on the current backend: dense attention's reference (materialized scores, skipped past
--max-gib) and xla (blockwise flash) forms; the block-sparse op whose mask `select_blocks`
chooses (1 sink + 1 local + top_k blocks per query block), gathered ("sparse xla"), with the
selection included in the time; and LM-Infinite's Λ mask ("lambda xla", sink tokens + window).
Each row gives forward and forward+backward median time, the compiled scratch memory of
forward+backward, time per 1K tokens (flat when the cost is linear in length), and the dense
xla form's time over the row's (above 1: faster than dense).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from jaxlm.ops import attention
from jaxlm.ops.sparse_attention import (block_sparse_attention, lambda_attention,
                                        num_selected, select_blocks)
from jaxlm.runner.bench import compile_fn, median_seconds, temp_bytes
from jaxlm.runner.report import markdown_table

BATCH, HEADS, DIM = 1, 4, 64


def forms(block_size: int, top_k: int) -> dict:
    slots = num_selected(top_k, 1, 1)

    def sparse(q, k, v):
        mask = select_blocks(jax.lax.stop_gradient(q), jax.lax.stop_gradient(k),
                             block_size=block_size, top_k=top_k)
        return block_sparse_attention(q, k, v, mask, block_size=block_size, max_blocks=slots)

    return {
        "dense reference": lambda q, k, v: attention(q, k, v, impl="reference"),
        "dense xla": lambda q, k, v: attention(q, k, v, impl="xla"),
        "sparse xla": sparse,
        "lambda xla": lambda q, k, v: lambda_attention(
            q, k, v, window=block_size * (top_k + 1), sink_tokens=block_size,
            block_size=block_size),
    }


def measure(fn, length, dtype):
    ks = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (BATCH, length, HEADS, DIM), dtype) for key in ks)
    both = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2))
    fwd_compiled, both_compiled = compile_fn(fn, q, k, v), compile_fn(both, q, k, v)
    return dict(fwd=median_seconds(fwd_compiled, q, k, v, repeats=3),
                both=median_seconds(both_compiled, q, k, v, repeats=3),
                memory=temp_bytes(both_compiled))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--max-gib", type=float, default=4.0)
    parser.add_argument("--dense-max-length", type=int, default=16384,
                        help="longest length at which the dense forms run (their time grows "
                             "with length squared)")
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    rows = []
    for length in args.lengths:
        results = {}
        for name, fn in forms(args.block_size, args.top_k).items():
            scores_bytes = 4 * BATCH * HEADS * length * length * 4
            if name == "dense reference" and scores_bytes > args.max_gib * 2**30:
                rows.append({"form": name, "length": length, "fwd ms": "skipped (memory)"})
                continue
            if name.startswith("dense") and length > args.dense_max_length:
                rows.append({"form": name, "length": length, "fwd ms": "skipped (time)"})
                continue
            r = results[name] = measure(fn, length, dtype)
            rows.append({"form": name, "length": length, "fwd ms": r["fwd"] * 1e3,
                         "fwd+bwd ms": r["both"] * 1e3,
                         "fwd+bwd ms / 1K tokens": r["both"] * 1e3 / (length / 1024),
                         "scratch MiB": (r["memory"] or 0) / 2**20})
            print(rows[-1], flush=True)
        for row in rows:
            if row["length"] == length and row["form"] in results and "dense xla" in results:
                dense = results["dense xla"]
                mine = results[row["form"]]
                row["dense xla / form fwd+bwd"] = dense["both"] / mine["both"]
    columns = ["form", "length", "fwd ms", "fwd+bwd ms", "fwd+bwd ms / 1K tokens",
               "scratch MiB", "dense xla / form fwd+bwd"]
    print(f"\nbackend: {jax.default_backend()} ({jax.devices()[0].device_kind}), batch {BATCH}, "
          f"heads {HEADS}, head dim {DIM}, {args.dtype}, block {args.block_size}, "
          f"top_k {args.top_k} (+1 sink, +1 local)\n")
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
