"""The training loop: config in, trained model, metrics and checkpoints out."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import subprocess
import time
from typing import Any

import flax
import jax
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxlm.config import Config, ConfigError, save_config
from jaxlm.data import TaskSource, make_source
from jaxlm.layers import MIXERS
from jaxlm.models import (ModelConfig, SequenceRegressor, build_lm, count_params,
                          load_pretrained)
from jaxlm.parallel import (initialize_distributed, local_rows, make_mesh, place_batch,
                            place_state, under_mesh)
from jaxlm.train.checkpoint import Checkpointer
from jaxlm.train.metrics import MetricWriter
from jaxlm.train.optim import make_optimizer, make_schedule
from jaxlm.train.state import (TrainState, init_train_state, make_eval_step, make_train_step,
                               merge_model)


@dataclasses.dataclass
class TrainResult:
    model: nnx.Module
    state: TrainState
    eval_metrics: dict[str, float]
    num_params: int
    seconds: float  # wall time of this call's training loop (compilation included)


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


def train(config: Config, run_dir: str | pathlib.Path, *, resume: bool = False,
          stop_after: int | None = None, progress: bool = True,
          init_from: str | pathlib.Path | None = None) -> TrainResult:
    """Trains ``config``'s model on its task, writing into ``run_dir``.

    ``run_dir`` receives ``config.json``, ``environment.json``, ``metrics.jsonl``, TensorBoard
    events and ``checkpoints/``. With ``resume=True`` the latest checkpoint there is restored and
    training continues from its step (data batches are a function of the step, so the result is
    the same as an uninterrupted run); without it an existing checkpoint is an error, so no run
    overwrites another by accident. ``stop_after`` ends this call after that many total steps
    (a planned interruption), checkpointing first. ``init_from`` (a local Hugging Face folder,
    see ``jaxlm.models.load_pretrained``) starts from its weights instead of a random
    initialisation; ``config.model`` must be its config (``jaxlm.models.pretrained_config``).
    """
    initialize_distributed(config.distributed)
    mesh = make_training_mesh(config)
    rows = None if mesh is None else local_rows(mesh, config.train.batch_size)
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tc = config.train
    model = build_model(config) if init_from is None else _pretrained(config, init_from)
    num_params = count_params(model)
    tx = make_optimizer(tc)
    graphdef, state = init_train_state(model, tx)
    checkpointer = Checkpointer(run_dir / "checkpoints", keep=tc.keep_checkpoints)
    if checkpointer.latest_step() is not None:
        if not resume:
            checkpointer.close()
            raise FileExistsError(f"{run_dir} already holds checkpoints; pass resume=True "
                                  f"(--resume) to continue that run, or choose another run_dir")
        state = checkpointer.restore(state)
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
    writer = MetricWriter(run_dir, tensorboard=tc.tensorboard)
    start = int(state.step)
    end = tc.steps if stop_after is None else min(stop_after, tc.steps)

    def evaluate(step):
        metrics = evaluate_params(eval_step, (state.params, state.variables), source, split="validation",
                                  num_batches=tc.eval_batches, batch_size=tc.batch_size,
                                  mesh=mesh)
        writer.write(step, metrics, split="validation")
        return metrics

    schedule = make_schedule(tc)
    eval_metrics: dict[str, float] = {}
    t_start = time.perf_counter()
    bar = tqdm(range(start, end), desc=config.name, disable=not progress or jax.process_index())
    try:
        for step in bar:
            batch = source.batch(step, tc.batch_size, "train", rows)
            batch = batch if mesh is None else place_batch(batch, mesh, tc.batch_size, rows)
            state, metrics = train_step(state, batch)
            done = step + 1
            if done % tc.log_every == 0 or done == end:
                metrics = jax.device_get(metrics)
                writer.write(done, {**metrics, "learning_rate": float(schedule(done - 1))})
                bar.set_postfix({name: f"{float(metrics[name]):.3f}"
                                 for name in ("loss", "accuracy") if name in metrics})
            if tc.eval_every and done % tc.eval_every == 0 and done != end:
                evaluate(done)
            if tc.checkpoint_every and done % tc.checkpoint_every == 0 and done != end:
                checkpointer.save(done, state)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - t_start
        if end > start or checkpointer.latest_step() is None:
            checkpointer.save(int(state.step), state)
        if end == tc.steps:
            eval_metrics = evaluate(int(state.step))
    finally:
        bar.close()
        writer.close()
        checkpointer.close()  # waits until every started checkpoint is on disk
    return TrainResult(model=merge_model(graphdef, state), state=state,
                       eval_metrics=eval_metrics, num_params=num_params, seconds=seconds)
