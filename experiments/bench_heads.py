"""Speed of the token-free experiment's models: what the lexinvariant heads and the n-gram
features cost against the plain byte LM.

Run:  .venv/bin/python experiments/bench_heads.py [--lengths 256 1024] [--tokens 4096]

Builds each model of ``experiments/token_free.py`` at its sizes (width 64, 2 attention layers),
on rows of the built-in corpus with ``--tokens`` bytes per batch (batch = tokens / length), and
prints the median time of the jitted forward pass (loss included) and of forward+backward, the
forward throughput in bytes per second, and the ratio of the plain byte LM's time to each
model's (below 1: slower than the byte LM), all measured in the same run.
"""

from __future__ import annotations

import argparse
import pathlib

import jax
from flax import nnx

from jaxlm.config import Config, apply_overrides
from jaxlm.data import make_source
from jaxlm.runner import load_experiment, markdown_table
from jaxlm.runner.bench import compile_fn, median_seconds
from jaxlm.train.loop import build_model
from jaxlm.train.losses import batch_loss

EXPERIMENT = pathlib.Path(__file__).with_name("token_free.py")
POINTER = {"model.kind": "lexinvariant", "model.lexinvariant.head": "pointer"}
MODELS = {
    "byte LM": {"model.kind": "decoder"},
    "byte LM + n-gram heads (1-4)": {"model.kind": "decoder", "model.ngram_heads": 4},
    "lexinvariant, tied head": {"model.kind": "lexinvariant"},
    "lexinvariant, pointer head": POINTER,
    "lexinvariant, pointer + n-gram matches (1-4)": {**POINTER,
                                                     "model.lexinvariant.ngram_orders": 4},
}


def measure(base: Config, overrides: dict, length: int, batch_size: int) -> dict[str, float]:
    """Forward and forward+backward median seconds of one model (``base`` with ``overrides``)
    on one batch of text rows."""
    config = apply_overrides(base, {**overrides, "data.text.seq_len": length})
    graphdef, params, rest = nnx.split(build_model(config), nnx.Param, ...)
    batch = make_source(config.data).batch(0, batch_size, "train")

    def loss(p, b):
        model = nnx.merge(graphdef, p, rest)
        return batch_loss(model(b["inputs"], segment_ids=b.get("segment_ids")), b)[0]

    forward = compile_fn(loss, params, batch)
    both = compile_fn(jax.grad(loss), params, batch)
    return {"fwd": median_seconds(forward, params, batch),
            "both": median_seconds(both, params, batch)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--tokens", type=int, default=4096, help="bytes per batch")
    args = parser.parse_args()
    base = load_experiment(str(EXPERIMENT), []).base
    rows = []
    for length in args.lengths:
        batch_size = max(1, args.tokens // length)
        results = {name: measure(base, overrides, length, batch_size)
                   for name, overrides in MODELS.items()}
        ref = results["byte LM"]
        for name, r in results.items():
            row = {"model": name, "length": length, "batch": batch_size,
                   "fwd ms": r["fwd"] * 1e3, "fwd+bwd ms": r["both"] * 1e3,
                   "fwd bytes/s": batch_size * length / r["fwd"],
                   "byte LM/model fwd": ref["fwd"] / r["fwd"],
                   "byte LM/model fwd+bwd": ref["both"] / r["both"]}
            rows.append(row)
            print(row, flush=True)
    print(f"\nbackend: {jax.default_backend()} ({jax.devices()[0].device_kind}), float32\n")
    print(markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
