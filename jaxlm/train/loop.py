"""The training loop: config in, trained model, metrics and checkpoints out."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any

import flax
import jax
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxlm.config import Config, ConfigError, load_config, resume_changes, save_config
from jaxlm.data import TaskSource, make_source
from jaxlm.layers import MIXERS
from jaxlm.models import (ModelConfig, SequenceRegressor, build_lm, count_params,
                          load_pretrained)
from jaxlm.parallel import (initialize_distributed, local_rows, make_mesh, place_batch,
                            place_state, under_mesh)
from jaxlm.train.checkpoint import Checkpointer
from jaxlm.train.metrics import MetricWriter, read_metrics
from jaxlm.train.optim import make_optimizer, make_schedule
from jaxlm.train.rundir import RunLock
from jaxlm.train.signals import StopRequests, TrainingInterrupted
from jaxlm.train.state import (TrainState, init_train_state, make_eval_step, make_train_step,
                               merge_model)


@dataclasses.dataclass
class TrainResult:
    model: nnx.Module
    state: TrainState
    eval_metrics: dict[str, float]
    num_params: int
    seconds: float  # wall time of the training loop (compilation included), over every call
    # that trained this run (a resumed run adds the seconds recorded with its checkpoint)


def build_model(config: Config) -> nnx.Module:
    """The model of ``config``, initialised from ``config.train.seed``: the token model of
    ``config.model.kind`` for token tasks, a ``SequenceRegressor`` for continuous ones. Dropout
    masks come from a stream of the same seed, apart from the parameters'."""
    seed = config.train.seed
    rngs = nnx.Rngs(params=seed, dropout=jax.random.fold_in(jax.random.key(seed), 1))
    if config.data.continuous:
        return SequenceRegressor(config.model, config.data.task_config.input_dim, rngs=rngs)
    return build_lm(config.model, rngs=rngs)


def _pretrained(config: Config, path) -> nnx.Module:
    model, _ = load_pretrained(path)
    if model.config != config.model:
        raise ConfigError(f"train: init_from={str(path)!r} holds a model whose config differs "
                          f"from model.*; set config.model to jaxlm.models.pretrained_config("
                          f"{str(path)!r})")
    return model


def evaluate_params(eval_step, model_states: tuple[nnx.State, ...], source: TaskSource, *,
                    split: str, num_batches: int, batch_size: int,
                    mesh: Mesh | None = None) -> dict[str, float]:
    """Token-weighted mean of the eval metrics over ``num_batches`` batches of ``split``
    (placed on ``mesh`` when given)."""
    totals: dict[str, float] = {}
    tokens = 0.0
    rows = None if mesh is None else local_rows(mesh, batch_size)
    for index in range(num_batches):
        batch = source.batch(index, batch_size, split, rows)
        batch = batch if mesh is None else place_batch(batch, mesh, batch_size, rows)
        metrics = jax.device_get(eval_step(model_states, batch))
        n = float(metrics["tokens"])
        tokens += n
        for name, value in metrics.items():
            if name != "tokens":
                totals[name] = totals.get(name, 0.0) + float(value) * n
    return {name: value / max(tokens, 1.0) for name, value in totals.items()}


def make_training_mesh(config: Config) -> Mesh | None:
    """The mesh of ``config.mesh`` (None for one device), after checking that the batch and the
    sequence split evenly over it: a bad mesh fails here, before anything compiles."""
    if config.mesh.single_device:
        if jax.process_count() > 1:
            raise ValueError(f"{jax.process_count()} processes share this run but the mesh is "
                             f"one device; set a mesh over all {jax.device_count()} devices, "
                             f"e.g. mesh.data=-1")
        return None
    mesh = make_mesh(config.mesh)
    batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.train.batch_size % batch_ways:
        raise ValueError(f"train.batch_size={config.train.batch_size} must be a multiple of "
                         f"mesh data x fsdp = {batch_ways}")
    length = config.data.seq_len
    if length % mesh.shape["sequence"]:
        raise ValueError(f"data.seq_len={length} (the training row length) must be a multiple "
                         f"of mesh.sequence={mesh.shape['sequence']}")
    if mesh.shape["tensor"] > 1:
        raise ValueError(f"mesh.tensor={mesh.shape['tensor']}: tensor parallelism is not built "
                         f"yet; set mesh.tensor=1")
    if mesh.shape["sequence"] > 1:
        check_sequence_parallel(config.model, mesh.shape["sequence"])
    return mesh


SEQUENCE_PARALLEL_KINDS = ("decoder", "lexinvariant")  # models whose backbone sees every token


def check_sequence_parallel(model: ModelConfig, ways: int) -> None:
    """Raises, naming what to change, unless every layer of ``model`` has a sequence-parallel
    path (see :mod:`jaxlm.parallel.dispatch`) for a mesh that splits the length ``ways`` ways."""
    where = f"mesh.sequence={ways}"
    if model.kind not in SEQUENCE_PARALLEL_KINDS:
        raise ValueError(f"{where}: model.kind={model.kind!r} has no sequence-parallel path "
                         f"(kinds that have one: {list(SEQUENCE_PARALLEL_KINDS)}); set "
                         f"mesh.sequence=1 and split the batch instead (mesh.data=-1)")
    if model.ngram_heads:
        raise ValueError(f"{where}: model.ngram_heads={model.ngram_heads} has no "
                         f"sequence-parallel path; set mesh.sequence=1 or model.ngram_heads=0")
    missing = sorted({name for name in model.layer_mixers() if not MIXERS[name].sequence_parallel})
    if missing:
        have = sorted(name for name, spec in MIXERS.items() if spec.sequence_parallel)
        raise ValueError(f"{where}: the mixers {missing} of model.pattern={model.pattern!r} have "
                         f"no sequence-parallel path (mixers that have one: {have}); set "
                         f"mesh.sequence=1 or use those mixers")


def source_version() -> str | None:
    """``git describe --always --dirty`` of the jaxlm checkout, or None when jaxlm is not run
    from its own git checkout (an installed copy inside some other repository is not one)."""
    root = pathlib.Path(__file__).resolve().parents[2]  # the folder holding jaxlm/
    if not (root / ".git").exists():
        return None
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root,
                                   capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if described.returncode != 0:
        return None
    return described.stdout.strip() or None


def environment() -> dict[str, Any]:
    """Versions, devices and the CPU cores the process may use, logged beside every run.

    The cores matter on CPU: XLA splits reductions across its threads, so a run restricted to
    fewer cores (``taskset``, a container limit) rounds differently and, over thousands of
    steps, can train to a different result."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"jax": jax.__version__, "flax": flax.__version__, "python": platform.python_version(),
            "jaxlm": source_version(), "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "cpu_cores": cores,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "process_index": jax.process_index(), "process_count": jax.process_count()}


class NonFiniteTraining(FloatingPointError):
    """The loss or the gradient became NaN or infinite; training stopped before checkpointing
    the damaged state."""


def check_finite(step: int, metrics: dict, config: Config, checkpointer: Checkpointer) -> None:
    """Raises :class:`NonFiniteTraining` naming the run directory (``checkpointer``'s parent),
    ``step`` and the values when ``metrics``' ``loss`` or ``grad_norm`` (scalars) is NaN or
    infinite; call it before saving the state of ``step``."""
    values = jax.device_get({name: metrics[name] for name in ("loss", "grad_norm")
                             if name in metrics})
    bad = [name for name, value in values.items() if not math.isfinite(float(value))]
    if bad:
        shown = ", ".join(f"{name} {float(value)}" for name, value in values.items())
        latest = checkpointer.latest_step()
        kept = (f"the checkpoint of step {latest} is kept" if latest is not None
                else "no checkpoint was written")
        raise NonFiniteTraining(
            f"non-finite {' and '.join(bad)} at step {step} ({shown}) in "
            f"{checkpointer.directory.parent}: training stopped and "
            f"nothing after it was saved ({kept}); lower train.learning_rate="
            f"{config.train.learning_rate} or set train.grad_clip (now "
            f"{config.train.grad_clip})")


def check_run_dir(run_dir: pathlib.Path) -> None:
    """Raises ``FileExistsError`` when ``run_dir`` exists and is not a directory."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"run directory {str(run_dir)!r} is a file; give a directory (or "
                              f"a path that does not exist yet)")


def resume_config(config: Config, run_dir: pathlib.Path, step: int) -> None:
    """Refuses a resumed run whose config changed anything but the keys safe to change on
    resume (``RESUME_SAFE_KEYS``); records those in ``resumes.jsonl``."""
    saved_path = run_dir / "config.json"
    if not saved_path.exists():
        return
    try:
        changes = resume_changes(load_config(saved_path), config)
    except ConfigError as e:
        raise ConfigError(f"resuming {run_dir}: {e}") from None
    if changes and jax.process_index() == 0:
        record = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "changed": {key: {"old": old, "new": new}
                              for key, (old, new) in changes.items()}}
        with open(run_dir / "resumes.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
        print(f"jaxlm: resuming {run_dir} at step {step} with changed {listed} (recorded in "
              f"resumes.jsonl)", file=sys.stderr)


def train(config: Config, run_dir: str | pathlib.Path, *, resume: bool = False,
          stop_after: int | None = None, progress: bool = True,
          init_from: str | pathlib.Path | None = None) -> TrainResult:
    """Trains ``config``'s model on its task, writing into ``run_dir``.

    ``run_dir`` receives ``config.json``, ``environment.json``, ``metrics.jsonl``, TensorBoard
    events and ``checkpoints/``. With ``resume=True`` the newest intact checkpoint there is
    restored and training continues from its step (data batches are a function of the step, so
    the result is the same as an uninterrupted run); without it an existing checkpoint is an
    error, so no run overwrites another by accident. ``stop_after`` ends this call after that
    many total steps (a planned interruption), checkpointing first. ``init_from`` (a local Hugging
    Face folder, see ``jaxlm.models.load_pretrained``) starts from its weights instead of a random
    initialisation; ``config.model`` must be its config (``jaxlm.models.pretrained_config``).

    What a run promises on interruption:

    - SIGTERM or SIGINT: the current step finishes, a checkpoint of it is written and waited
      for, and :class:`~jaxlm.train.signals.TrainingInterrupted` is raised.
    - A resumed run matches an uninterrupted one bit for bit on CPU; ``metrics.jsonl`` keeps
      one row per step (rows of steps after the checkpoint are dropped and redone).
    - Resuming with a config that changed anything but ``RESUME_SAFE_KEYS`` raises
      ``ConfigError`` naming each changed key (old -> new); safe changes are recorded in
      ``resumes.jsonl``.
    - A damaged checkpoint is skipped for the newest intact one (see
      :class:`~jaxlm.train.checkpoint.Checkpointer`).
    - A NaN or infinite loss or gradient raises :class:`NonFiniteTraining` before anything is
      saved from that step on.
    - One process at a time trains into ``run_dir`` (``run.lock``); another raises
      :class:`~jaxlm.train.rundir.RunDirBusy` naming the holder.
    """
    run_dir = pathlib.Path(run_dir)
    check_run_dir(run_dir)
    initialize_distributed(config.distributed)
    mesh = make_training_mesh(config)
    rows = None if mesh is None else local_rows(mesh, config.train.batch_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    if jax.process_index() == 0:
        lock.acquire()
    try:
        return _train(config, run_dir, mesh, rows, resume=resume, stop_after=stop_after,
                      progress=progress, init_from=init_from)
    finally:
        lock.release()


def _train(config: Config, run_dir: pathlib.Path, mesh: Mesh | None, rows, *, resume: bool,
           stop_after: int | None, progress: bool, init_from=None) -> TrainResult:
    tc = config.train
    checkpointer = Checkpointer(run_dir / "checkpoints", keep=tc.keep_checkpoints)
    previous_seconds = 0.0
    try:
        saved_step = checkpointer.latest_step()
        if saved_step is not None and not resume:
            raise FileExistsError(f"{run_dir} already holds checkpoints; pass resume=True "
                                  f"(--resume) to continue that run, or choose another "
                                  f"run_dir")
        if saved_step is not None:
            resume_config(config, run_dir, saved_step)
        model = build_model(config) if init_from is None else _pretrained(config, init_from)
        num_params = count_params(model)
        tx = make_optimizer(tc)
        graphdef, state = init_train_state(model, tx)
        if saved_step is not None:
            state = checkpointer.restore(state, set_aside=True)
            previous_seconds = float(checkpointer.info(int(state.step)).get("train_s", 0.0))
    except BaseException:
        checkpointer.close()
        raise
    if mesh is not None:
        state = place_state(state, mesh)
    if jax.process_index() == 0:
        save_config(config, run_dir / "config.json")
        (run_dir / "environment.json").write_text(json.dumps(environment(), indent=2))

    source = make_source(config.data)
    train_step = under_mesh(make_train_step(
        graphdef, tx, input_mask_rate=tc.input_mask_rate, input_mask_token=tc.input_mask_token,
        mask_key=jax.random.fold_in(jax.random.key(tc.seed), 2)), mesh)  # MEAP's masks
    eval_step = under_mesh(make_eval_step(graphdef), mesh)
    start = int(state.step)
    writer = MetricWriter(run_dir, tensorboard=tc.tensorboard,
                          resume_step=start if saved_step is not None else None)
    end = tc.steps if stop_after is None else min(stop_after, tc.steps)

    def evaluate(step):
        metrics = evaluate_params(eval_step, (state.params, state.variables), source,
                                  split="validation", num_batches=tc.eval_batches,
                                  batch_size=tc.batch_size, mesh=mesh)
        writer.write(step, metrics, split="validation")
        return metrics

    schedule = make_schedule(tc)
    eval_metrics: dict[str, float] = {}
    t_start = time.perf_counter()
    elapsed = lambda: previous_seconds + time.perf_counter() - t_start
    save = lambda step, seconds: checkpointer.save(step, state,
                                                   info={"train_s": round(seconds, 3)})
    interrupted = None
    bar = tqdm(range(start, end), desc=config.name, disable=not progress or jax.process_index())
    try:
        with StopRequests() as stop:
            unchecked = None  # the previous step's metrics, checked once the next is queued
            for step in bar:
                batch = source.batch(step, tc.batch_size, "train", rows)
                batch = batch if mesh is None else place_batch(batch, mesh, tc.batch_size, rows)
                state, metrics = train_step(state, batch)
                done = step + 1
                if unchecked is not None:
                    check_finite(*unchecked, config, checkpointer)
                unchecked = (done, metrics)
                if done % tc.log_every == 0 or done == end:
                    metrics = jax.device_get(metrics)
                    writer.write(done, {**metrics, "learning_rate": float(schedule(done - 1))})
                    bar.set_postfix({name: f"{float(metrics[name]):.3f}"
                                     for name in ("loss", "accuracy") if name in metrics})
                if tc.eval_every and done % tc.eval_every == 0 and done != end:
                    evaluate(done)
                reason = stop.reason or (jax.process_count() > 1
                                         and checkpointer.reached_preemption(done)
                                         and "a preemption notice")
                if reason and done != end:
                    check_finite(done, metrics, config, checkpointer)
                    save(done, elapsed())
                    interrupted = TrainingInterrupted(reason, done, tc.steps, run_dir)
                    break
                if tc.checkpoint_every and done % tc.checkpoint_every == 0 and done != end:
                    check_finite(done, metrics, config, checkpointer)
                    save(done, elapsed())
            else:
                if unchecked is not None:
                    check_finite(*unchecked, config, checkpointer)
                jax.block_until_ready(state)
                seconds = round(elapsed(), 3)
                if end > start or checkpointer.latest_step() is None:
                    save(int(state.step), seconds)
                if end == tc.steps:
                    # resumed after its last step: the final evaluation is already written
                    earlier = [row for row in (read_metrics(run_dir) if end == start else [])
                               if row["split"] == "validation" and row["step"] == end]
                    eval_metrics = ({k: v for k, v in earlier[-1].items()
                                     if k not in ("step", "split")} if earlier
                                    else evaluate(int(state.step)))
            if interrupted is not None:
                seconds = elapsed()
            checkpointer.wait()  # the last checkpoint is on disk before a signal can stop us
    finally:
        bar.close()
        writer.close()
        checkpointer.close()  # waits until every started checkpoint is on disk
    if interrupted is not None:
        raise interrupted
    return TrainResult(model=merge_model(graphdef, state), state=state,
                       eval_metrics=eval_metrics, num_params=num_params, seconds=seconds)
