"""Experiment files: plain Python under ``experiments/`` defining ``config()`` and, for a sweep,
``sweep()``.

``config() -> jaxlm.config.Config`` gives the base run; ``sweep() -> list[dict]`` gives one dict
of overrides (dotted key -> value) per run, e.g. from :func:`grid`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from jaxlm.config import Config, ConfigError, apply_overrides, parse_override


@dataclasses.dataclass(frozen=True)
class Experiment:
    path: pathlib.Path
    base: Config
    points: list[dict[str, Any]]  # overrides of each run of the sweep
    # the file's PRESETS (name -> overrides), whichever one was applied to ``base``
    presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # config keys of sweep axes whose best run per setting the report shows (a preset's
    # "best_of", e.g. Zoology's learning rates)
    best_of: tuple[str, ...] = ()
    # the whole sweep when ``points`` is a slice of it (``with_only``): the report tabulates
    # every point of it that has a result; None: ``points``
    tabulated: list[dict[str, Any]] | None = None

    def run_names(self) -> list[str]:
        """Each point's run directory name, as in the whole sweep (a slice keeps its names)."""
        if self.tabulated is None:
            return _unique_run_names(self.points)
        names = _unique_run_names(self.tabulated)
        return [names[self.tabulated.index(point)] for point in self.points]

    def tabulated_names(self) -> list[str]:
        """The run names the report covers: the whole sweep's, when this is a slice."""
        return _unique_run_names(self.points if self.tabulated is None else self.tabulated)

    def configs(self) -> list[Config]:
        """Every run's config, validated (all before any run starts); an invalid one raises
        ``ConfigError`` naming its sweep point."""
        configs = []
        for i, point in enumerate(self.points):
            try:
                configs.append(apply_overrides(self.base, point))
            except ConfigError as e:
                raise ConfigError(f"{self.path.name}: sweep point {i + 1} of "
                                  f"{len(self.points)} ({run_name(point)}): {e}") from None
        return configs


def grid(axes: Mapping[str | tuple[str, ...], Sequence[Any]]) -> list[dict[str, Any]]:
    """The product of the axes. A tuple key zips several config keys into one axis:
    ``grid({"model.pattern": ["attention"], ("data.mqar.seq_len", "data.mqar.num_kv_pairs"):
    [(64, 4), (128, 8)]})`` gives two runs."""
    names = list(axes)
    points = []
    for values in itertools.product(*(axes[n] for n in names)):
        point: dict[str, Any] = {}
        for name, value in zip(names, values):
            if isinstance(name, tuple):
                if len(value) != len(name):
                    raise ConfigError(f"grid axis {name} needs {len(name)} values per entry, "
                                      f"got {value!r}")
                point.update(zip(name, value))
            else:
                point[name] = value
        points.append(point)
    return points


def load_experiment(path: str | pathlib.Path, overrides: Sequence[str] = (),
                    preset: str | None = None) -> Experiment:
    """Imports an experiment file and applies a named preset of its ``PRESETS`` (a dict of
    name -> overrides, e.g. ``"full"``: the paper's sizes), then command-line overrides, to its
    base config.

    While the file runs, its folder is importable, so one experiment can build on another
    (``import quickstart``)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"jaxlm_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    if not hasattr(module, "config"):
        raise ConfigError(f"{path} must define config() returning a jaxlm.config.Config")
    base = module.config()
    if not isinstance(base, Config):
        raise ConfigError(f"{path}: config() must return a jaxlm.config.Config, "
                          f"got {type(base).__name__}")
    presets = getattr(module, "PRESETS", {})
    best_of: Mapping[str, Sequence[Any]] = {}
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"{path} has no preset {preset!r}; presets: {sorted(presets)}")
        chosen = dict(presets[preset])
        best_of = chosen.pop(BEST_OF, {})
        base = apply_overrides(base, chosen)
    base = apply_overrides(base, overrides)
    points = list(module.sweep()) if hasattr(module, "sweep") else [{}]
    for key, values in best_of.items():
        points = with_axis(points, key, values, f"{path}: preset {preset!r}'s {BEST_OF}")
    # The sweep's points are validated where they run (``Experiment.configs``), so ``jaxlm
    # train`` can train a base config that some point of the sweep would not accept.
    return Experiment(path, base, points, presets, tuple(best_of))


BEST_OF = "best_of"  # a preset's entry {config key: values}: a swept axis reported as its best


def with_axis(points: Sequence[Mapping[str, Any]], key: str, values: Sequence[Any],
              where: str) -> list[dict[str, Any]]:
    """Every point repeated with ``key`` set to each of ``values`` (an innermost axis); raises
    ``ConfigError`` naming ``where`` if a point already sets ``key`` or ``values`` is empty."""
    if not values:
        raise ConfigError(f"{where}: {key} needs at least one value, got {values!r}")
    swept = [point for point in points if key in point]
    if swept:
        raise ConfigError(f"{where}: the sweep already sets {key} (e.g. {swept[0]}); remove "
                          f"one of the two")
    return [{**point, key: value} for point in points for value in values]


def with_seeds(experiment: Experiment, seeds: int) -> Experiment:
    """Every point of ``experiment`` repeated with ``train.seed`` = base seed + 0..seeds-1 (a
    seed axis, innermost; the report then shows the mean and range over seeds). ``seeds=1``
    returns the experiment unchanged."""
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be a positive integer, got {seeds!r}")
    if seeds == 1:
        return experiment
    swept = [point for point in experiment.points if "train.seed" in point]
    if swept:
        raise ConfigError(f"{experiment.path}: its sweep already sets train.seed (e.g. "
                          f"{swept[0]}); leave out seeds={seeds} or the sweep's seed axis")
    first = experiment.base.train.seed
    seeded = lambda points: [{**point, "train.seed": first + i} for point in points
                             for i in range(seeds)]
    tabulated = experiment.tabulated
    return dataclasses.replace(experiment, points=seeded(experiment.points),
                               tabulated=None if tabulated is None else seeded(tabulated))


def with_only(experiment: Experiment, conditions: Sequence[str]) -> Experiment:
    """The points of ``experiment`` whose config has every ``"key=value"`` of ``conditions``
    (a slice of a grid, e.g. ``["model.d_model=32"]``; ``jaxlm sweep --only``). Values are read
    by the field's type within each point's config, so ``model.d_model=32`` and a point's 32
    agree, and a key a point leaves at the base value matches that value. The slice keeps the
    whole sweep as ``tabulated``, so its run names and the report's table are the whole
    sweep's. Raises ``ConfigError`` naming the condition and the values the sweep has when no
    point is left, or the condition's own error (an unknown key, a value of the wrong type)."""
    if not conditions:
        return experiment
    whole = experiment.points if experiment.tabulated is None else experiment.tabulated
    points = list(experiment.points)
    for condition in conditions:
        key, _ = parse_override(condition)
        kept, have, errors = [], [], []
        for point in points:
            config = apply_overrides(experiment.base, point)
            try:  # an unknown key or a bad value, or one this point's other settings refuse
                want = _config_value(apply_overrides(config, [condition]), key)
            except ConfigError as e:
                errors.append(e)
                continue
            have.append(_config_value(config, key))
            if want == have[-1]:
                kept.append(point)
        if not kept:
            if not have:
                raise ConfigError(f"{experiment.path}: --only {condition}: {errors[0]}")
            values = ", ".join(repr(v) for v in _sorted_values(have))
            raise ConfigError(f"{experiment.path}: no sweep point has {condition} (the "
                              f"points' {key}: {values})")
        points = kept
    return dataclasses.replace(experiment, points=points, tabulated=list(whole))


def _sorted_values(values: Sequence[Any]) -> list[Any]:
    unique = list(dict.fromkeys(values))
    try:
        return sorted(unique)
    except TypeError:
        return sorted(unique, key=repr)


def _config_value(config: Config, key: str) -> Any:
    """The value of a dotted key, e.g. ``_config_value(c, "model.d_model")``."""
    value = config
    for name in key.split("."):
        value = getattr(value, name)
    return value


def _unique_run_names(points: Sequence[Mapping[str, Any]]) -> list[str]:
    """:func:`run_name` of each point, numbered when two points would share a name."""
    names = [run_name(p) for p in points]
    if len(set(names)) != len(names):
        names = [f"{i:03d}-{n}" for i, n in enumerate(names)]
    return names


def run_name(point: Mapping[str, Any]) -> str:
    """A directory name for one sweep point, e.g. ``pattern=attention,seq_len=64``."""
    if not point:
        return "run"
    return ",".join(f"{key.split('.')[-1]}={value}" for key, value in point.items())


# One "key=value" of a run name: the value runs to the next ",key=" or the end, so values may
# hold commas (``pattern=deltanet,attention_window,d_model=64``).
_RUN_AXIS = re.compile(r"(?:^|,)([A-Za-z_]\w*)=(.*?)(?=,[A-Za-z_]\w*=|$)")


def parse_run_name(name: str) -> dict[str, str]:
    """The axes of a :func:`run_name`, each value as the name spells it:
    ``"pattern=gla,d_model=64"`` -> ``{"pattern": "gla", "d_model": "64"}``. A numbered name's
    ``"003-"`` prefix is not an axis (nor is the first key it is glued to)."""
    return dict(_RUN_AXIS.findall(name))


def run_name_without(name: str, axes: Sequence[str]) -> str:
    """``name`` with the axes named in ``axes`` (short names, e.g. ``"seed"``) taken out, the
    rest spelled as in ``name``: ``("pattern=gla,seed=1", ["seed"])`` -> ``"pattern=gla"``.
    Runs that differ only in those axes get the same string (how the report groups seeds and
    learning rates)."""
    kept, last = [], 0
    for match in _RUN_AXIS.finditer(name):
        if match.group(1) in axes:
            kept.append(name[last:match.start()])
            last = match.end()
    kept.append(name[last:])
    return "".join(kept).strip(",")
