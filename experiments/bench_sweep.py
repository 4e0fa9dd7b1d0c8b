"""Wall time of N sweep points trained as separate runs against one stacked run
(``jaxlm sweep --stack``), the same steps, and memory per member.

Run:  python experiments/bench_sweep.py [--n 4,8,16] [--steps 30] [--width 64]
The points are the quickstart's attention model (2 layers, width ``--width``) with Zoology's
four learning rates and then further seeds (point i: rate i mod 4, seed i div 4). "separate" is
N calls of ``jaxlm.train.train`` one after another in this process, each compiling its own
step, as a sweep without ``--stack`` does; "stacked" is one ``train_stacked`` call (its
default form: members one after another by ``lax.map`` on one CPU device, vmap elsewhere). Both
include compilation, the final evaluation and the checkpoint writes. "warm step" times one
compiled train step after a warm-up (``--reps`` of them): N times one model's step against
the stack's step in both forms (vmap, lax.map), what long runs approach. Memory: the train state (parameters + AdamW moments)
per member, and XLA's temporary buffers of one compiled step (``memory_analysis``) for one
model and per member of the stack.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import quickstart  # noqa: E402
from jaxlm.config import apply_overrides  # noqa: E402
from jaxlm.data import make_source  # noqa: E402
from jaxlm.train import build_model, init_train_state, make_optimizer, train  # noqa: E402
from jaxlm.train.stacked import (make_stacked_train_step, member_hyperparameters,  # noqa: E402
                                 stack, train_stacked)
from jaxlm.train.state import make_train_step  # noqa: E402

RATES = (1e-4, 3e-4, 1e-3, 3e-3)  # Zoology's MQAR learning rates


def points(n: int, steps: int, width: int):
    base = apply_overrides(quickstart.config(), {
        "model.d_model": width, "train.steps": steps, "train.log_every": max(steps // 2, 1),
        "train.warmup_steps": min(10, steps - 1), "train.eval_batches": 1})
    return [apply_overrides(base, {"train.learning_rate": RATES[i % 4], "train.seed": i // 4})
            for i in range(n)]


def state_bytes(state) -> int:
    return sum(x.nbytes for x in jax.tree.leaves((state.params, state.opt_state)))


def temp_bytes(compiled) -> float:
    analysis = compiled.memory_analysis()
    return float("nan") if analysis is None else analysis.temp_size_in_bytes


def step_costs(configs, reps: int) -> tuple[int, float, float, float, float, float]:
    """(train-state bytes per member, temp bytes of one model's step, of the vmapped stack's
    step per member, seconds of one model's step, of the vmapped and of the lax.map stack's
    step), the steps compiled and warm."""
    graphdef, states = None, []
    for config in configs:
        graphdef, state = init_train_state(build_model(config), make_optimizer(config.train))
        states.append(state)
    batch = make_source(configs[0].data).batch(0, configs[0].train.batch_size, "train")
    single = make_train_step(graphdef, make_optimizer(configs[0].train))
    tcs = [c.train for c in configs]
    stacked_step = make_stacked_train_step(graphdef, tcs, shared_batch=True)
    mapped_step = make_stacked_train_step(graphdef, tcs, shared_batch=True, vectorize=False)
    hyper, keys = member_hyperparameters(tcs), stack([jax.random.key(0)] * len(configs))
    stacked_state, mapped_state = stack(states), stack(states)
    single_temp = temp_bytes(single.lower(states[0], batch).compile())
    stacked_temp = temp_bytes(stacked_step.lower(hyper, keys, stacked_state, batch).compile())
    state_size = state_bytes(states[0])

    def timed(step, state, *args):
        state = step(*args, state, batch)[0]  # compile and warm up
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for _ in range(reps):
            state = step(*args, state, batch)[0]
        jax.block_until_ready(state)
        return (time.perf_counter() - t0) / reps

    one = timed(single, states[0])
    vmapped = timed(stacked_step, stacked_state, hyper, keys)
    mapped = timed(mapped_step, mapped_state, hyper, keys)
    return state_size, single_temp, stacked_temp / len(configs), one, vmapped, mapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="4,8,16", help="numbers of points, comma-separated")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--reps", type=int, default=10, help="warm steps timed per step kind")
    args = parser.parse_args()
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), width "
          f"{args.width}, {args.steps} steps per point")
    rows = []
    for n in (int(v) for v in args.n.split(",")):
        configs = points(n, args.steps, args.width)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = pathlib.Path(tmp)
            t0 = time.perf_counter()
            for i, config in enumerate(configs):
                train(config, tmp / f"separate{i}", progress=False)
            separate = time.perf_counter() - t0
            t0 = time.perf_counter()
            train_stacked(configs, [tmp / f"stacked{i}" for i in range(n)], progress=False)
            stacked = time.perf_counter() - t0
        state, single_temp, member_temp, one, vmapped, mapped = step_costs(configs, args.reps)
        rows.append((n, separate, stacked, state / 2**20, single_temp / 2**20,
                     member_temp / 2**20, one * 1e3, vmapped * 1e3, mapped * 1e3))
    print("\n| N | separate s | stacked s | speed-up | warm step ms: N alone | vmap | lax.map "
          "| state MiB / member | step temp MiB: alone | vmap / member |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, sep, stk, state, single, member, one, vmapped, mapped in rows:
        print(f"| {n} | {sep:.1f} | {stk:.1f} | {sep / stk:.2f}x | {n * one:.0f} | "
              f"{vmapped:.0f} ({n * one / vmapped:.2f}x) | {mapped:.0f} ({n * one / mapped:.2f}x) "
              f"| {state:.2f} | {single:.2f} | {member:.2f} |", flush=True)

if __name__ == "__main__":
    main()
