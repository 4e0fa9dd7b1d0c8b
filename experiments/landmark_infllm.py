"""Landmark attention's retrieval and InfLLM's training-free memory, at CPU scale.

Run:  python experiments/landmark_infllm.py landmark 2000 700   (three times: each call trains
      700 more steps into runs/landmark_mqar, resuming; the last one evaluates; about 3 minutes
      each on one busy core)
      python experiments/landmark_infllm.py infllm                 (about 3 minutes)

``landmark``: the quickstart's MQAR (length 64, 4 key-value pairs) with landmark attention
(blocks of 7 tokens plus a landmark, 2 layers, width 64), trained with the grouped softmax over
every block; then evaluated as trained and with the paper's inference retrieval, each query
reading only the top-k blocks by landmark score and its own block (same weights).
``infllm``: passkey retrieval (5 digits at a random depth), attention trained at length 64; then
evaluated with no new training as full attention, as a sliding window alone (initial tokens +
local window, ``top_k=0``) and as InfLLM (the same + 2 retrieved memory units of 4 tokens), at
the training length and at twice it. Prints markdown tables (RESULTS.md).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import tempfile

from flax import nnx

import passkey
import quickstart
from jaxlm.layers import InfLLMConfig, LandmarkAttentionConfig
from jaxlm.probes import evaluate, with_seq_len
from jaxlm.train import build_model, train


def retrained(config, **model_changes):
    """The trained model's weights in a model built with ``model_changes``."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **model_changes))


def load(result, config):
    model = build_model(config)
    nnx.update(model, nnx.state(result.model))
    return model


def landmark(steps: int = 2000, per_call: int | None = None):
    base = quickstart.config()
    lm = LandmarkAttentionConfig(n_heads=quickstart.HEADS, block_size=7)
    config = dataclasses.replace(
        base, name="landmark", train=dataclasses.replace(base.train, steps=steps),
        model=dataclasses.replace(base.model, pattern="landmark_attention",
                                  landmark_attention=lm))
    run_dir = pathlib.Path("runs/landmark_mqar")
    resume = (run_dir / "checkpoints").exists()
    done = max([int(p.name) for p in (run_dir / "checkpoints").glob("[0-9]*")] or [0])
    stop = None if per_call is None else min(done + per_call, steps)
    result = train(config, run_dir, progress=False, resume=resume, stop_after=stop)
    if stop is not None and stop < steps:
        print(f"trained to step {stop} of {steps}; run again to continue")
        return
    print(f"| inference | blocks read per query (of up to 9) | accuracy | baseline |\n"
          f"|---|---|---|---|")
    for top_k in (None, 2, 1):
        variant = retrained(config, landmark_attention=dataclasses.replace(lm, top_k=top_k))
        metrics = evaluate(load(result, variant), config.data, num_examples=500)
        read = "all earlier + own" if top_k is None else f"top-{top_k} + own"
        print(f"| {read} | {read.split()[0]} | {metrics['accuracy']:.3f} | "
              f"{metrics['baseline']:.3f} |")
    print(f"\ntrained {steps} steps in {result.seconds:.0f} s (all calls), "
          f"{result.num_params} parameters")


def infllm(steps: int = 1000):
    base = passkey.config()
    config = dataclasses.replace(base, name="infllm",
                                 train=dataclasses.replace(base.train, steps=steps))
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(config, run_dir, progress=False)
    memory = InfLLMConfig(n_heads=2, window=16, block_size=4, init_blocks=1, top_k=2, n_repr=2,
                          chunk_size=1)
    variants = {
        "full attention": retrained(config),
        "initial 4 + window 16": retrained(config, pattern="attention_infllm",
                                           attention_infllm=dataclasses.replace(memory, top_k=0)),
        "InfLLM: + 2 units of 4": retrained(config, pattern="attention_infllm",
                                            attention_infllm=memory),
    }
    print("| attention | length | accuracy (per digit) | exact |\n|---|---|---|---|")
    for name, variant in variants.items():
        model = load(result, variant)
        for length in (64, 128):
            metrics = evaluate(model, with_seq_len(config.data, length), num_examples=500)
            print(f"| {name} | {length} | {metrics['accuracy']:.3f} | "
                  f"{metrics.get('exact', float('nan')):.3f} |")
    print(f"\ntrained {steps} steps at length 64 in {result.seconds:.0f} s")


if __name__ == "__main__":
    {"landmark": landmark, "infllm": infllm}[sys.argv[1]](*map(int, sys.argv[2:]))
