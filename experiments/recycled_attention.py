"""Recycled attention at decoding time, against full attention and a sliding window that reads
as many keys ("Recycled Attention: Efficient inference for long-context language models").

Run:  python experiments/recycled_attention.py            (about 3 minutes on one CPU core)
      python experiments/recycled_attention.py --steps 2000 --examples 500

Trains the quickstart's attention model on MQAR (length 64, 4 key-value pairs, 2 layers of
width 64; 2000 steps), then decodes the test rows token by token with ``Attention.step`` (the
KV cache; no new training) in three ways with the same weights:

- full attention at every step (its accuracy equals the parallel forward's: printed as a check);
- recycled attention: full attention every ``S`` steps, which picks the ``K`` cached keys with
  the most attention per KV head; the steps between read only those K keys and the tokens
  generated since (``recycle_every=S``, ``recycle_top_k=K``);
- a sliding window of ``K + S`` keys (StreamingLLM without the sink: a fixed local budget).

Reports the MQAR accuracy (queried positions; chance 0.25) and the mean number of keys a query
reads per step over the row. The paper's claim: at the same key budget, recycled attention
stays close to full attention on retrieval where local-window methods fail.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import jax
import numpy as np
from flax import nnx

import quickstart
from jaxlm.data import make_source
from jaxlm.models.generate import eval_view
from jaxlm.probes import evaluate, target_hits
from jaxlm.train import build_model, train


def decode_logits(model, tokens: np.ndarray) -> np.ndarray:
    """Teacher-forced decoding: tokens [batch, length] int -> logits [batch, length, vocab],
    each position computed by one ``model.step`` over the KV cache of the ones before."""
    graphdef, params = nnx.split(eval_view(model))

    @jax.jit
    def run(params, tokens):
        lm = nnx.merge(graphdef, params)
        state = lm.init_state(tokens.shape[0], max_length=tokens.shape[1])
        _, logits = jax.lax.scan(lambda s, tok: lm.step(tok, s)[::-1], state, tokens.T)
        return logits.transpose(1, 0, 2)

    return np.asarray(run(params, tokens))


def keys_read(length: int, every: int | None, top_k: int | None, window: int | None) -> float:
    """Mean number of cached keys a step reads over positions 0..length-1."""
    total, last_full = 0, None
    for t in range(length):
        if window is not None:
            total += min(t + 1, window)
        elif every is None or last_full is None or t - last_full >= every:
            total, last_full = total + t + 1, t
        else:  # the recycled set (at most K of the keys there were) + the tokens since
            total += min(top_k, last_full + 1) + (t - last_full)
    return total / length


def accuracy(model, data, num_examples: int, batch_size: int = 250) -> float:
    source = make_source(dataclasses.replace(data, seed=1234))
    hits = counted = 0
    for index in range(-(-num_examples // batch_size)):
        batch = jax.device_get(source.batch(index, batch_size, "test"))
        h, n = target_hits(batch, decode_logits(model, batch["inputs"]))
        hits, counted = hits + int(h.sum()), counted + int(n.sum())
    return hits / counted


def with_attention(config, **changes):
    attention = dataclasses.replace(config.model.attention, **changes)
    return dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                 attention=attention))


def main(steps: int, examples: int, budgets: list[tuple[int, int]]):
    base = quickstart.config()
    config = dataclasses.replace(base, name="recycled_attention",
                                 train=dataclasses.replace(base.train, steps=steps))
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(config, run_dir, progress=False)
    length = config.data.seq_len
    parallel = evaluate(result.model, config.data, num_examples=examples)["accuracy"]

    def load(variant):
        model = build_model(variant)
        nnx.update(model, nnx.state(result.model))
        return model

    print(f"| decoding | S (full every) | K (recycled) | keys read per step (mean) | accuracy |\n"
          f"|---|---|---|---|---|")
    full = accuracy(load(config), config.data, examples)
    print(f"| full attention | 1 | all | {keys_read(length, None, None, None):.1f} | "
          f"{full:.3f} |")
    for every, top_k in budgets:
        recycled = load(with_attention(config, recycle_every=every, recycle_top_k=top_k))
        print(f"| recycled | {every} | {top_k} | {keys_read(length, every, top_k, None):.1f} | "
              f"{accuracy(recycled, config.data, examples):.3f} |")
        window = load(with_attention(config, window=top_k + every))
        print(f"| window of K + S = {top_k + every} | - | - | "
              f"{keys_read(length, None, None, top_k + every):.1f} | "
              f"{accuracy(window, config.data, examples):.3f} |")
    print(f"\nparallel forward: {parallel:.3f} (the step form at full attention: {full:.3f}); "
          f"trained {steps} steps in {result.seconds:.0f} s; length {length}, "
          f"chance {1 / config.data.mqar.num_kv_pairs:.2f}; backend {jax.default_backend()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--budgets", default="4:8,8:8,16:8,4:16,16:16",
                        help="S:K pairs (full attention every S steps, K recycled keys)")
    args = parser.parse_args()
    pairs = [tuple(int(x) for x in b.split(":")) for b in args.budgets.split(",")]
    main(args.steps, args.examples, pairs)
