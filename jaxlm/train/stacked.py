"""Many small models as one compiled program: sweep points that share the model's shapes,
trained together with their parameters and optimizer states stacked on a leading axis.

The train step of :mod:`jaxlm.train.state` is ``jax.vmap``-ed over the members. What may differ
between members (:data:`MEMBER_FIELDS`: the learning rate, weight decay, Adam's betas, the
clipping norm, the final learning-rate fraction, the initialisation seed and the data seed) is
*data*: a field that differs is passed into the program as a ``[members]`` array, so one
compilation serves them all, and the optimizer (its state, its schedule) is each member's own.
A field every member shares stays a Python constant, so a stack of seeds compiles to the
separate run's program under ``vmap``.

Each member writes its run directory exactly as :func:`jaxlm.train.train` would:
``config.json``, ``environment.json``, ``metrics.jsonl``, TensorBoard events (when on) and
``checkpoints/`` holding that member's own train state, restorable by a separate run. With
several devices the members are sharded over them (the largest device count that divides the
number of members).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import time
import types
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxlm.config import Config, ConfigError, save_config
from jaxlm.data import make_source
from jaxlm.models import count_params
from jaxlm.train.checkpoint import Checkpointer
from jaxlm.train.loop import TrainResult, build_model, check_finite, check_run_dir, environment, \
    evaluate_params, resume_config
from jaxlm.train.metrics import MetricWriter
from jaxlm.train.optim import make_optimizer, make_schedule
from jaxlm.train.rundir import RunLock
from jaxlm.train.signals import StopRequests, TrainingInterrupted
from jaxlm.train.state import TrainState, init_train_state, make_eval_step, make_train_step, \
    merge_model

# Optimizer fields that may differ within a stack; traced as data when they do.
TRACED_FIELDS = ("learning_rate", "weight_decay", "b1", "b2", "grad_clip", "final_lr_fraction")
MEMBER_FIELDS = tuple(f"train.{name}" for name in TRACED_FIELDS) + ("train.seed", "data.seed")


def stack_key(config: Config) -> Config:
    """``config`` with the fields a stack's members may differ in (:data:`MEMBER_FIELDS`)
    set to fixed values: two configs can train in one stack iff their keys are equal. The
    power schedule's shape is not linear in the learning rate, so with ``train.schedule=
    "power"`` the learning rate and final fraction stay in the key, as does whether gradients
    are clipped at all (``grad_clip > 0``: the optimizer's state differs)."""
    tc = config.train
    fixed = {"weight_decay": 0.0, "b1": 0.9, "b2": 0.98, "seed": 0,
             "grad_clip": 1.0 if tc.grad_clip > 0 else 0.0}
    if tc.schedule != "power":
        fixed.update(learning_rate=1.0, final_lr_fraction=0.0)
    return dataclasses.replace(config, name="", train=dataclasses.replace(tc, **fixed),
                               data=dataclasses.replace(config.data, seed=0))


def group_stackable(configs: Sequence[Config]) -> list[list[int]]:
    """The indices of ``configs`` in groups that can train as one stack (equal
    :func:`stack_key`), in order of first appearance."""
    keys: list[Config] = []
    groups: list[list[int]] = []
    for index, config in enumerate(configs):
        key = stack_key(config)
        if key in keys:
            groups[keys.index(key)].append(index)
        else:
            keys.append(key)
            groups.append([index])
    return groups


def _check_stackable(configs: Sequence[Config]) -> None:
    if not configs:
        raise ValueError("train_stacked: configs is empty; expected at least one config")
    first = stack_key(configs[0])
    for index, config in enumerate(configs):
        if not config.mesh.single_device:
            raise ConfigError(f"train_stacked: configs[{index}] sets a mesh ({config.mesh}); a "
                              f"stack shards its members over the devices itself, so every "
                              f"member's mesh must be one device")
        if stack_key(config) != first:
            differ = _differences(stack_key(configs[0]), stack_key(config))
            raise ConfigError(f"train_stacked: configs[{index}] differs from configs[0] in "
                              f"{differ}; members may differ only in {list(MEMBER_FIELDS)} "
                              f"(group them with group_stackable)")


def _differences(a, b, prefix: str = "") -> list[str]:
    """The dotted names of the (nested dataclass) fields where ``a`` and ``b`` differ."""
    if not dataclasses.is_dataclass(a):
        return [prefix.rstrip(".")] if a != b else []
    out = []
    for field in dataclasses.fields(a):
        out += _differences(getattr(a, field.name), getattr(b, field.name),
                            f"{prefix}{field.name}.")
    return out


def member_optimizer(train_config, hyper: dict[str, jax.Array]) -> optax.GradientTransformation:
    """The optimizer of ``train_config`` with the fields in ``hyper`` replaced by (traced)
    values: :func:`jaxlm.train.optim.make_optimizer`, whose state has the same structure as a
    separate run's. A traced learning rate scales the unit-peak schedule's updates (every
    schedule but ``power`` is linear in the peak), as optax's schedules branch on the peak's
    value."""
    fields = {f.name: getattr(train_config, f.name) for f in dataclasses.fields(train_config)}
    fields.update(hyper)
    scale = fields["learning_rate"] if "learning_rate" in hyper else None
    if scale is not None:
        fields["learning_rate"] = 1.0
    tx = make_optimizer(types.SimpleNamespace(**fields))
    if scale is None:
        return tx

    def update(grads, state, params=None):
        updates, state = tx.update(grads, state, params)
        return jax.tree.map(lambda u: (scale * u).astype(u.dtype), updates), state

    return optax.GradientTransformation(tx.init, update)


def make_stacked_train_step(graphdef, train_configs: Sequence, *, shared_batch: bool,
                            vectorize: bool = True):
    """A jitted ``(hyper, mask_keys, states, batch) -> (states, metrics)``: the train step of
    :func:`jaxlm.train.state.make_train_step` vmapped over the members (``vectorize``), or run
    for one member after another by ``jax.lax.map`` in the same program. ``hyper``: the
    differing fields of :data:`TRACED_FIELDS` as ``[members]`` arrays (see
    :func:`member_hyperparameters`); ``mask_keys``: MEAP's key per member; ``states``: a
    stacked :class:`TrainState` (donated); ``batch``: one batch for every member
    (``shared_batch``) or a stacked ``[members, batch, ...]`` one."""
    base = train_configs[0]

    def member(hyper, mask_key, state, batch):
        step = make_train_step(graphdef, member_optimizer(base, hyper),
                               input_mask_rate=base.input_mask_rate,
                               input_mask_token=base.input_mask_token, mask_key=mask_key)
        return step(state, batch)

    if vectorize:
        return jax.jit(jax.vmap(member, in_axes=(0, 0, 0, None if shared_batch else 0)),
                       donate_argnums=2)

    def in_sequence(hyper, mask_keys, states, batch):
        if shared_batch:
            return jax.lax.map(lambda m: member(*m, batch), (hyper, mask_keys, states))
        return jax.lax.map(lambda m: member(*m), (hyper, mask_keys, states, batch))

    return jax.jit(in_sequence, donate_argnums=2)


def member_hyperparameters(train_configs: Sequence) -> dict[str, jax.Array]:
    """``{field: [members] float32}`` for every field of :data:`TRACED_FIELDS` whose value
    differs between the members (the shared ones stay constants of the program)."""
    return {name: jnp.asarray([getattr(tc, name) for tc in train_configs], jnp.float32)
            for name in TRACED_FIELDS
            if len({getattr(tc, name) for tc in train_configs}) > 1}


def stack(trees: Sequence):
    """Pytrees of equal structure -> one pytree with a leading member axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, index: int):
    """Member ``index`` of a stacked pytree."""
    return jax.tree.map(lambda x: x[index], tree)


def member_mesh(members: int) -> Mesh | None:
    """A one-axis mesh ``("members",)`` over the largest number of devices that divides
    ``members``; None when that is one device."""
    count = max(d for d in range(1, min(members, jax.device_count()) + 1) if members % d == 0)
    return None if count == 1 else Mesh(np.asarray(jax.devices()[:count]), ("members",))


def _place(tree, mesh: Mesh | None, stacked: bool = True):
    if mesh is None:
        return tree
    spec = PartitionSpec("members") if stacked else PartitionSpec()
    return jax.device_put(tree, NamedSharding(mesh, spec))


def train_stacked(configs: Sequence[Config], run_dirs: Sequence[str | pathlib.Path], *,
                  resume: bool = False, stop_after: int | None = None,
                  progress: bool = True, vectorize: bool | None = None) -> list[TrainResult]:
    """Trains every config of ``configs`` (members of one stack: they may differ only in
    :data:`MEMBER_FIELDS`) as one vmapped program, member ``i`` writing into ``run_dirs[i]``
    exactly what ``jaxlm.train.train(configs[i], run_dirs[i])`` writes.

    ``resume`` and ``stop_after`` as in :func:`jaxlm.train.train`. On resume every member
    restarts from the latest checkpoint step all members hold (a stack interrupted while
    saving may have saved some members one step further; those re-train that stretch, which
    is deterministic, and skip re-saving and re-logging the steps they already hold).
    ``vectorize``: True vmaps the step over the members (sharded over the devices when there
    are several), False runs the members one after another inside the one program
    (``jax.lax.map``: on one CPU device a vmapped step measured about 0.6x the speed of the
    separate steps, the sequential one faster than them; see ``experiments/bench_sweep.py``);
    None picks the sequential form on a single CPU device and vmap elsewhere.
    Returns one :class:`TrainResult` per member; ``seconds`` is the whole stack's wall time.

    Every member keeps the promises of :func:`jaxlm.train.train`: its run directory is locked
    for the whole call (another process raises :class:`~jaxlm.train.rundir.RunDirBusy` naming
    the holder; every lock is released on exit); on resume its config is checked against its
    ``config.json`` (``ConfigError`` naming each changed key that is not in
    ``RESUME_SAFE_KEYS``; safe changes are recorded in its ``resumes.jsonl``); a NaN or
    infinite loss or gradient of any member raises
    :class:`~jaxlm.train.loop.NonFiniteTraining` naming that member's run directory and step,
    before any member saves that step; SIGTERM or SIGINT finishes the current step,
    checkpoints every member, waits for the checkpoints and raises
    :class:`~jaxlm.train.signals.TrainingInterrupted`.

    Raises ``ConfigError`` naming the field when two configs cannot share a stack,
    ``FileExistsError`` when a run directory holds checkpoints and ``resume`` is False (or is a
    file), ``ValueError`` when two members share a run directory.
    """
    configs = list(configs)
    run_dirs = [pathlib.Path(d) for d in run_dirs]
    if len(run_dirs) != len(configs):
        raise ValueError(f"train_stacked: {len(configs)} configs but {len(run_dirs)} run_dirs; "
                         f"expected one run directory per config")
    if len({d.resolve() for d in run_dirs}) != len(run_dirs):
        raise ValueError(f"train_stacked: run_dirs {[str(d) for d in run_dirs]} name a "
                         f"directory more than once; expected one directory per member")
    _check_stackable(configs)
    for run_dir in run_dirs:
        check_run_dir(run_dir)
    with contextlib.ExitStack() as locks:  # every member's lock, released on any exit
        for run_dir in run_dirs:
            run_dir.mkdir(parents=True, exist_ok=True)
            if jax.process_index() == 0:
                locks.enter_context(RunLock(run_dir))
        return _train_stacked(configs, run_dirs, resume=resume, stop_after=stop_after,
                              progress=progress, vectorize=vectorize)


def _train_stacked(configs: list[Config], run_dirs: list[pathlib.Path], *, resume: bool,
                   stop_after: int | None, progress: bool,
                   vectorize: bool | None) -> list[TrainResult]:
    tcs = [config.train for config in configs]
    tc = tcs[0]
    models = [build_model(config) for config in configs]
    num_params = count_params(models[0])
    states = []
    for model, member_tc in zip(models, tcs):
        graphdef, state = init_train_state(model, make_optimizer(member_tc))
        states.append(state)
    checkpointers = []
    for run_dir, member_tc in zip(run_dirs, tcs):
        checkpointers.append(Checkpointer(run_dir / "checkpoints",
                                          keep=member_tc.keep_checkpoints))
    try:
        saved = [c.latest_step() for c in checkpointers]
        if any(step is not None for step in saved) and not resume:
            taken = [str(d) for d, step in zip(run_dirs, saved) if step is not None]
            raise FileExistsError(f"{taken} already hold checkpoints; pass resume=True "
                                  f"(--resume) to continue those runs, or choose other "
                                  f"run directories")
        held = [0 if step is None else step for step in saved]
        common = min(held)
        for config, run_dir, step in zip(configs, run_dirs, saved):
            if step is not None:
                resume_config(config, run_dir, common)
        if common:
            states = [_restore(c, state, common) for c, state in zip(checkpointers, states)]
    except BaseException:
        for checkpointer in checkpointers:
            checkpointer.close()
        raise
    for config, run_dir in zip(configs, run_dirs):
        if jax.process_index() == 0:
            save_config(config, run_dir / "config.json")
            (run_dir / "environment.json").write_text(json.dumps(environment(), indent=2))

    mesh = member_mesh(len(configs))
    if vectorize is None:
        vectorize = mesh is not None or jax.default_backend() != "cpu"
    mesh = mesh if vectorize else None
    state = _place(stack(states), mesh)
    del states
    sources = _sources(configs)
    shared_batch = len({id(s) for s in sources}) == 1
    train_step = make_stacked_train_step(graphdef, tcs, shared_batch=shared_batch,
                                         vectorize=vectorize)
    hyper = _place(member_hyperparameters(tcs), mesh)
    mask_keys = _place(jnp.stack([jax.random.fold_in(jax.random.key(t.seed), 2) for t in tcs]),
                       mesh)
    eval_step = make_eval_step(graphdef)
    writers = [MetricWriter(d, tensorboard=t.tensorboard, resume_step=step)
               for d, t, step in zip(run_dirs, tcs, saved)]
    schedules = [make_schedule(t) for t in tcs]
    start = common
    end = tc.steps if stop_after is None else min(stop_after, tc.steps)

    def batch_at(step):
        if shared_batch:
            return _place(sources[0].batch(step, tc.batch_size, "train"), mesh, stacked=False)
        return _place(stack([s.batch(step, tc.batch_size, "train") for s in sources]), mesh)

    def save(step, members):
        for i, (checkpointer, member) in enumerate(zip(checkpointers, members)):
            if step > held[i]:
                checkpointer.save(step, member)

    def evaluate(step, members):
        results = []
        for i, member in enumerate(members):
            metrics = evaluate_params(eval_step, (member.params, member.variables), sources[i],
                                      split="validation", num_batches=tc.eval_batches,
                                      batch_size=tc.batch_size)
            if step > held[i]:
                writers[i].write(step, metrics, split="validation")
            results.append(metrics)
        return results

    def check(step, metrics):  # before any member saves ``step``
        values = jax.device_get({name: metrics[name] for name in ("loss", "grad_norm")
                                 if name in metrics})
        for i, (config, checkpointer) in enumerate(zip(configs, checkpointers)):
            check_finite(step, {name: v[i] for name, v in values.items()}, config, checkpointer)

    eval_metrics = [{} for _ in configs]
    interrupted = None
    t_start = time.perf_counter()
    bar = tqdm(range(start, end), desc=f"{configs[0].name} x{len(configs)}",
               disable=not progress or jax.process_index())
    try:
        with StopRequests() as stop:
            unchecked = None  # the previous step's metrics, checked once the next is queued
            for step in bar:
                state, metrics = train_step(hyper, mask_keys, state, batch_at(step))
                done = step + 1
                if unchecked is not None:
                    check(*unchecked)
                unchecked = (done, metrics)
                if done % tc.log_every == 0 or done == end:
                    metrics = jax.device_get(metrics)
                    for i, writer in enumerate(writers):
                        if done > held[i]:
                            writer.write(done, {**{k: v[i] for k, v in metrics.items()},
                                                "learning_rate": float(schedules[i](done - 1))})
                stopping = stop.reason is not None and done != end
                evaluating = tc.eval_every and done % tc.eval_every == 0 and done != end
                saving = stopping or (tc.checkpoint_every and done % tc.checkpoint_every == 0
                                      and done != end)
                if saving:
                    check(done, metrics)
                if evaluating or saving:
                    members = [unstack(state, i) for i in range(len(configs))]
                    if evaluating:
                        evaluate(done, members)
                    if saving:
                        save(done, members)
                if stopping:
                    interrupted = TrainingInterrupted(stop.reason, done, tc.steps,
                                                      ", ".join(str(d) for d in run_dirs))
                    break
            else:
                if unchecked is not None:
                    check(*unchecked)
                jax.block_until_ready(state)
                seconds = time.perf_counter() - t_start
                members = [unstack(state, i) for i in range(len(configs))]
                final = int(members[0].step)
                if end > start or any(c.latest_step() is None for c in checkpointers):
                    save(final, members)
                if end == tc.steps:
                    eval_metrics = evaluate(final, members)
            for checkpointer in checkpointers:  # on disk before a signal can stop us
                checkpointer.wait()
    finally:
        bar.close()
        for writer in writers:
            writer.close()
        for checkpointer in checkpointers:
            checkpointer.close()
    if interrupted is not None:
        raise interrupted
    return [TrainResult(model=merge_model(graphdef, member), state=member, eval_metrics=metrics,
                        num_params=num_params, seconds=seconds)
            for member, metrics in zip(members, eval_metrics)]


def _restore(checkpointer: Checkpointer, like: TrainState, step: int) -> TrainState:
    try:
        return checkpointer.restore(like, step)
    except (FileNotFoundError, ValueError) as e:
        raise FileNotFoundError(f"resuming a stack at step {step}, the latest step every member "
                                f"holds: {checkpointer.directory} no longer has it (train."
                                f"keep_checkpoints too small?); resume that run alone") from e


def _sources(configs: Sequence[Config]) -> list:
    """One data source per member; members with the same data config share one object."""
    made: list = []  # (data config, source) pairs
    out = []
    for config in configs:
        found = [source for data, source in made if data == config.data]
        if not found:
            found = [make_source(config.data)]
            made.append((config.data, found[0]))
        out.append(found[0])
    return out
