"""Two processes on one machine train one model together, and checkpoint.

Run:  .venv/bin/python experiments/two_process_training.py [--steps 6] [--out runs/two_process]
      [--set mesh.sequence=4 model.pattern=deltanet ...]

This is what a multi-host job does, on one machine: the script starts ``--processes`` copies of
itself, each a JAX process with ``--devices-per-process`` CPU devices (``JAX_NUM_CPU_DEVICES``),
joined through ``jax.distributed`` on localhost (``distributed.*`` in the config). Each process
builds only the batch rows its devices hold; process 0 writes the metrics; all of them write the
orbax checkpoint. The script then trains the same config in one process over as many devices
and prints both loss curves side by side; they agree to float32 rounding.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

# A small MQAR attention model; the mesh splits the batch in two and the length in four.
BASE = ["model.d_model=32", "model.n_layers=2", "model.vocab_size=64", "model.attention.n_heads=4",
        "data.mqar.vocab_size=64", "data.mqar.seq_len=32", "data.mqar.num_kv_pairs=4",
        "train.batch_size=8", "train.log_every=1", "train.warmup_steps=2", "train.eval_batches=1",
        "train.tensorboard=false", "mesh.data=2", "mesh.sequence=-1"]


def _config(args: argparse.Namespace, extra: list[str]):
    from jaxlm.config import Config, apply_overrides
    return apply_overrides(Config(name="two_process"),
                           BASE + [f"train.steps={args.steps}"] + args.overrides + extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _worker(args: argparse.Namespace) -> None:
    from jaxlm.train import train
    config = _config(args, ["distributed.initialize=true",
                            f"distributed.coordinator_address=localhost:{args.port}",
                            f"distributed.num_processes={args.processes}",
                            f"distributed.process_id={args.worker}"])
    train(config, os.path.join(args.out, "processes"), progress=False)


def launch(args: argparse.Namespace) -> None:
    """Starts the worker processes and waits for all of them; raises if one fails."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "JAX_NUM_CPU_DEVICES": str(args.devices_per_process),
           "XLA_FLAGS": " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                 if "force_host_platform_device_count" not in f)}
    common = [sys.executable, os.path.abspath(__file__), "--steps", str(args.steps),
              "--out", args.out, "--processes", str(args.processes), "--port", str(port)]
    if args.overrides:
        common += ["--set", *args.overrides]
    workers = [subprocess.Popen(common + ["--worker", str(i)], env=env)
               for i in range(args.processes)]
    codes = [w.wait(timeout=args.timeout) for w in workers]
    if any(codes):
        raise SystemExit(f"worker exit codes {codes}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default="runs/two_process")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--set", dest="overrides", nargs="+", default=[])
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return _worker(args)
    launch(args)
    total = args.processes * args.devices_per_process
    if "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={total}")
    from jaxlm.train import read_metrics, train
    train(_config(args, []), os.path.join(args.out, "one_process"), progress=False)
    curves = {name: {m["step"]: m["loss"] for m in read_metrics(os.path.join(args.out, name))
                     if m["split"] == "train"} for name in ("processes", "one_process")}
    print(f"| step | loss, {args.processes} processes x {args.devices_per_process} devices "
          f"| loss, 1 process x {total} devices |")
    print("|---|---|---|")
    for step in sorted(curves["one_process"]):
        print(f"| {step} | {curves['processes'].get(step, float('nan')):.6f} "
              f"| {curves['one_process'][step]:.6f} |")


if __name__ == "__main__":
    main()
