"""Running experiments: one run (train + probe) or a sweep of them, resumable."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from flax import nnx

from jaxlm.config import (Config, ConfigError, apply_overrides, load_config, save_config,
                          to_dict)
from jaxlm.models import pretrained_config
from jaxlm.probes import evaluate
from jaxlm.runner.experiment import Experiment
from jaxlm.runner.report import RESULTS, TASK_COLUMNS, write_report
from jaxlm.train import (Checkpointer, build_model, init_train_state, make_optimizer,
                         merge_model, train)

RESULT = "result.json"


def describe(config: Config) -> dict[str, Any]:
    """The table columns that come from the config."""
    model = config.model.pattern
    lexinvariant = config.model.lexinvariant
    if config.model.kind == "lexinvariant" and lexinvariant.head != "tied":
        ngrams = (f", n-gram matches up to {lexinvariant.ngram_orders}"
                  if lexinvariant.ngram_orders else "")
        model = f"lexinvariant, {lexinvariant.head} head{ngrams} ({model})"
    elif config.model.kind != "decoder":
        model = f"{config.model.kind} ({model})"
    elif config.data.task == "text":
        vocab = config.data.text.subword_vocab
        model = f"{f'subword LM, {vocab} ids' if vocab else 'byte LM'} ({model})"
    if config.model.ngram_heads:
        model = f"{model} + n-gram heads (1-{config.model.ngram_heads})"
    row = {"task": config.data.task, "model": model,
           "d_model": config.model.d_model, "layers": config.model.n_layers,
           "seq_len": config.data.seq_len, "steps": config.train.steps,
           "seed": config.train.seed}
    for column, field in TASK_COLUMNS.get(config.data.task, {}).items():
        row[column] = getattr(config.data.task_config, field)
    return row


def _probe(model, config: Config) -> dict[str, Any]:
    probe = config.probe
    return evaluate(model, config.data, lengths=probe.test_lengths(),
                    num_examples=probe.num_examples, batch_size=probe.batch_size,
                    seed=probe.seed)


def run_one(config: Config, run_dir: str | pathlib.Path, *, name: str = "run",
            resume: bool = True, progress: bool = True,
            init_from: str | pathlib.Path | None = None) -> dict[str, Any]:
    """Trains (or resumes) one run, probes it, and saves the row as ``result.json``. With
    ``init_from`` (a local Hugging Face folder) the model is that checkpoint's, fine-tuned."""
    run_dir = pathlib.Path(run_dir)
    if init_from is not None:
        config = dataclasses.replace(config, model=pretrained_config(init_from))
    result = train(config, run_dir, resume=resume, progress=progress, init_from=init_from)
    row = result_row(config, name, result)
    (run_dir / RESULT).write_text(json.dumps(row, indent=2))
    return row


def result_row(config: Config, name: str, result) -> dict[str, Any]:
    """The table row of a trained run (a ``jaxlm.train.TrainResult``): its description, the
    probe of its model, the training time and the final validation metrics."""
    return {"run": name, **describe(config), "params": result.num_params,
            **_probe(result.model, config), "train_s": round(result.seconds, 1),
            **{f"val_{k}": v for k, v in result.eval_metrics.items()}}


def run_sweep(experiment: Experiment, out_dir: str | pathlib.Path, *,
              progress: bool = True, workers: int = 1, stack: bool = False,
              log=print) -> list[dict[str, Any]]:
    """Runs every point of ``experiment`` into ``out_dir/<run name>/``.

    Finished runs (those with a ``result.json``) are skipped and interrupted ones resume from
    their latest checkpoint, so rerunning a sweep after an interruption finishes it. With
    ``workers > 1`` the pending runs go to that many processes at once, each asked to keep XLA's
    CPU matrix products on one thread (worth it with many cores; on 2 cores it measured no
    faster than one run at a time). With ``stack=True`` the pending points that share the
    model's shapes train together as one program (:func:`jaxlm.runner.stacked.run_stacked`),
    each into its own run directory as a separate run would. The rows go
    to ``out_dir/results.jsonl`` and the table to ``results.{md,csv,png}``; for a slice of a
    sweep (:func:`~jaxlm.runner.experiment.with_only`) they cover every point of the whole
    sweep that has a result in ``out_dir``.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    configs = experiment.configs()  # every point validated before anything trains
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = experiment.run_names()
    pending = []
    for i, name in enumerate(names):
        if (out_dir / name / RESULT).exists():
            log(f"[{i + 1}/{len(configs)}] {name}: done earlier, skipped")
        else:
            pending.append(i)
    if stack:
        if workers > 1:
            raise ConfigError(f"workers={workers} with stack=True: a stack is one process; "
                              f"choose one of them")
        from jaxlm.runner.stacked import run_stacked
        run_stacked([(names[i], configs[i]) for i in pending], out_dir, progress=progress,
                    log=log)
    elif workers > 1 and len(pending) > 1:
        _run_in_processes([(names[i], configs[i]) for i in pending], out_dir, workers, log)
    else:
        for i in pending:
            log(f"[{i + 1}/{len(configs)}] {names[i]}")
            run_one(configs[i], out_dir / names[i], name=names[i], progress=progress)
    rows = [json.loads((out_dir / name / RESULT).read_text())
            for name in experiment.tabulated_names() if (out_dir / name / RESULT).exists()]
    with open(out_dir / RESULTS, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    write_report(rows, out_dir, title=experiment.base.name, best_of=experiment.best_of)
    return rows


def _run_in_processes(runs, out_dir: pathlib.Path, workers: int, log) -> None:
    """Runs each (name, config) in ``python -m jaxlm.runner.worker`` with one XLA thread. The
    config goes to the worker on its standard input (the run directory's ``config.json`` stays
    the record of what its checkpoints were trained with); each worker dies with this process."""
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + _ONE_THREAD).strip()}

    def launch(run):
        name, config = run
        run_dir = out_dir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        log(f"started {name}")
        with open(run_dir / "worker.log", "a") as out:
            code = subprocess.run([sys.executable, "-m", "jaxlm.runner.worker", str(run_dir),
                                   name, str(os.getpid())], input=json.dumps(to_dict(config)),
                                  text=True, stdout=out, stderr=subprocess.STDOUT,
                                  env=env).returncode
        if code:
            tail = (run_dir / "worker.log").read_text().splitlines()[-20:]
            raise RuntimeError(f"sweep run {name} failed (exit {code}); end of "
                               f"{run_dir / 'worker.log'}:\n" + "\n".join(tail))
        log(f"finished {name}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(launch, run) for run in runs]:
            future.result()


_ONE_THREAD = " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def load_run(run_dir: str | pathlib.Path, step: int | None = None) -> tuple[Config, nnx.Module]:
    """The config and trained model of a run directory (latest checkpoint by default)."""
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a jaxlm run directory (no config.json)")
    config = load_config(run_dir / "config.json")
    graphdef, like = init_train_state(build_model(config), make_optimizer(config.train))
    checkpointer = Checkpointer(run_dir / "checkpoints")
    try:
        state = checkpointer.restore(like, step)
    finally:
        checkpointer.close()
    return config, merge_model(graphdef, state)


def probe_run(run_dir: str | pathlib.Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Probes a trained run, optionally on a changed task (``data.mqar.seq_len=128``, ...)."""
    config, model = load_run(run_dir)
    probe_config = apply_overrides(config, overrides)
    return {**describe(probe_config), **_probe(model, probe_config)}
