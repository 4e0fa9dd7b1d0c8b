"""Run configuration: frozen dataclasses, one override grammar, JSON round trips.

A run is described by :class:`Config` (model, data, train, probe). Overrides use dotted keys,
``model.d_model=128`` or ``model.attention.window=16``; an unknown key fails with the list of
valid keys at that level, a bad value with the type expected, before anything compiles.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from jaxlm.data import DataConfig
from jaxlm.models import ModelConfig
from jaxlm.parallel.hosts import DistributedConfig
from jaxlm.parallel.mesh import MeshConfig


class ConfigError(ValueError):
    """A configuration key or value that jaxlm cannot use."""


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")


SCHEDULES = ("cosine", "linear", "constant", "wsd", "power")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | linear | constant | wsd | power (after the warm-up)
    final_lr_fraction: float = 0.0  # the decay ends at learning_rate * final_lr_fraction
    decay_fraction: float = 0.1  # wsd, power: the last fraction of the steps decays linearly
    power_a: float = 4.0  # power: lr(n) = min(learning_rate, batch_size * a * n^b), n tokens
    power_b: float = -0.51
    power_tokens_per_step: int = 0  # power: tokens per step for n (0: batch_size, one a row)
    input_mask_rate: float = 0.0  # MEAP: fraction of input tokens replaced by input_mask_token
    input_mask_token: int = 0
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.98
    grad_clip: float = 1.0  # global-norm clipping; 0 turns it off
    seed: int = 0  # parameter initialisation
    log_every: int = 50
    eval_every: int = 0  # 0: evaluate at the end only
    eval_batches: int = 4
    checkpoint_every: int = 0  # 0: checkpoint at the end only
    keep_checkpoints: int = 2
    tensorboard: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "eval_batches", "keep_checkpoints"):
            _require(getattr(self, name) >= 1, f"train.{name}", getattr(self, name), ">= 1")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "weight_decay",
                     "grad_clip"):
            _require(getattr(self, name) >= 0, f"train.{name}", getattr(self, name), ">= 0")
        _require(self.learning_rate > 0, "train.learning_rate", self.learning_rate, "> 0")
        _require(self.schedule in SCHEDULES, "train.schedule", self.schedule,
                 f"one of {list(SCHEDULES)}")
        _require(0 < self.decay_fraction <= 1, "train.decay_fraction", self.decay_fraction,
                 "in (0, 1]")
        _require(self.power_a > 0, "train.power_a", self.power_a, "> 0")
        _require(self.power_b < 0, "train.power_b", self.power_b, "< 0 (a decaying power)")
        _require(0 <= self.input_mask_rate < 1, "train.input_mask_rate", self.input_mask_rate,
                 "in [0, 1)")
        _require(self.input_mask_token >= 0, "train.input_mask_token", self.input_mask_token,
                 ">= 0")
        _require(self.power_tokens_per_step >= 0, "train.power_tokens_per_step",
                 self.power_tokens_per_step, ">= 0 (0: batch_size)")
        _require(0 <= self.final_lr_fraction <= 1, "train.final_lr_fraction",
                 self.final_lr_fraction, "in [0, 1]")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    num_examples: int = 1000
    batch_size: int = 250
    seed: int = 1234
    lengths: str = ""  # also probe at these sequence lengths, e.g. "128,256,512"

    def __post_init__(self):
        for name in ("num_examples", "batch_size"):
            _require(getattr(self, name) >= 1, f"probe.{name}", getattr(self, name), ">= 1")
        try:
            ok = all(n >= 1 for n in self.test_lengths())
        except ValueError:
            ok = False
        _require(ok, "probe.lengths", self.lengths,
                 "comma-separated positive integers, e.g. '128,256'")

    def test_lengths(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.lengths.split(",") if n.strip())


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "run"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig = ProbeConfig()
    mesh: MeshConfig = MeshConfig()  # all ones: one device
    distributed: DistributedConfig = DistributedConfig()  # several processes (hosts)

    def __post_init__(self):
        if self.model.vocab_size < self.data.vocab_size:
            raise ConfigError(f"model.vocab_size={self.model.vocab_size} is smaller than the "
                              f"task's vocab_size={self.data.vocab_size}")
        if self.train.input_mask_rate and not (
                self.train.input_mask_token < self.model.vocab_size and not self.data.continuous):
            raise ConfigError(f"train.input_mask_rate={self.train.input_mask_rate} needs a token "
                              f"task and train.input_mask_token < model.vocab_size="
                              f"{self.model.vocab_size}, got {self.train.input_mask_token} on "
                              f"data.task={self.data.task!r}")
        if self.model.learned_positions and self.model.max_length < self.data.seq_len:
            raise ConfigError(f"model.max_length={self.model.max_length} is shorter than the "
                              f"task's seq_len={self.data.seq_len}")
        for key, value in _flat(to_dict(self)).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
        _check_heads_divide(self.model, "")
        if self.model.kind in ("hierarchical", "word_pooled"):
            _check_heads_divide(self.model.local_config(1), "model.words (the byte encoder "
                                "and decoder, at model.words.d_local)")


def _check_heads_divide(model: ModelConfig, where: str) -> None:
    """Mixers that split d_model into n_heads heads (no explicit head_dim) need n_heads to
    divide d_model; otherwise they would silently use d_model // n_heads."""
    for name in dict.fromkeys(model.mixer_names()):
        options = model.mixer_config(name)
        heads = getattr(options, "n_heads", None)
        if heads and getattr(options, "head_dim", None) is None and model.d_model % heads:
            or_head_dim = (f" (or set model.{name}.head_dim)"
                           if hasattr(options, "head_dim") else "")
            raise ConfigError(f"{where + ': ' if where else ''}model.{name}.n_heads={heads} "
                              f"must divide d_model={model.d_model}{or_head_dim}")



# --------------------------------------------------------------------------------------------
# Overrides.


def config_keys(config: Any, prefix: str = "") -> list[str]:
    """Every settable dotted key of a config dataclass."""
    keys = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            keys += config_keys(value, f"{prefix}{field.name}.")
        else:
            keys.append(prefix + field.name)
    return keys


def parse_override(text: str) -> tuple[str, str]:
    """``"model.d_model=128"`` -> ``("model.d_model", "128")``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value, e.g. model.d_model=128")
    return key.strip(), value.strip()


def apply_overrides(config: Any, overrides: Iterable[str] | Mapping[str, Any]) -> Any:
    """Returns ``config`` with the overrides applied.

    ``overrides`` is a list of ``"key=value"`` strings (values parsed by the field's type) or a
    mapping of dotted keys to Python values. Each section is rebuilt once with all of its
    changes, so validation (including checks across sections) sees the final values and the
    order of the overrides does not matter.
    """
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    changes: dict[str, Any] = {}
    for key, value in items:
        node = changes
        *sections, leaf = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
            if isinstance(node, _Leaf):
                raise ConfigError(f"config key {key!r} conflicts with another override")
        node[leaf] = _Leaf(key, value)
    return _rebuild(config, changes, "")


@dataclasses.dataclass(frozen=True)
class _Leaf:
    key: str
    value: Any


def _first_key(change: Any) -> str:
    return change.key if isinstance(change, _Leaf) else _first_key(next(iter(change.values())))


def _rebuild(obj: Any, changes: dict[str, Any], prefix: str) -> Any:
    fields = {f.name for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    updates = {}
    for name, change in changes.items():
        if name not in fields:
            raise ConfigError(_unknown_key(obj, _first_key(change), prefix))
        current = getattr(obj, name)
        if isinstance(change, _Leaf):
            if dataclasses.is_dataclass(current):
                raise ConfigError(f"config key {change.key!r} is a section; set one of its keys: "
                                  f"{[change.key + '.' + k for k in config_keys(current)]}")
            updates[name] = _coerce(change.value, hints[name], change.key)
        else:
            if not dataclasses.is_dataclass(current):
                raise ConfigError(f"config key {_first_key(change)!r}: {prefix + name!r} is a "
                                  f"value, not a section")
            updates[name] = _rebuild(current, change, f"{prefix}{name}.")
    try:
        return dataclasses.replace(obj, **updates)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None


def _unknown_key(obj: Any, key: str, prefix: str) -> str:
    """The error for an unknown ``key``: the closest few valid keys, or the names valid at
    that level when none is close."""
    valid = [prefix + k for k in config_keys(obj)]
    close = difflib.get_close_matches(key, valid, n=5, cutoff=0.8)
    if close:
        return f"unknown config key {key!r}; closest valid keys: {close}"
    level = [prefix + f.name for f in dataclasses.fields(obj)]
    return (f"unknown config key {key!r}; valid names under {prefix.rstrip('.') or 'the root'}: "
            f"{level}")


_NONE_WORDS = ("none", "null")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Parses a string (or checks a Python value) against a field's type hint."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None or (isinstance(value, str) and value.lower() in _NONE_WORDS
                         and type(None) in options and str not in options):
        if type(None) in options:
            return None
        raise ConfigError(f"{key} cannot be None; expected {_type_name(hint)}")
    for option in options:
        if option is type(None):
            continue
        try:
            return _coerce_one(value, option)
        except (ValueError, TypeError):
            continue
    raise ConfigError(f"{key}={value!r} is not a valid {_type_name(hint)}")


def _coerce_one(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            return int(value)
        raise TypeError(value)
    if kind is float:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return float(value)
        raise TypeError(value)
    if kind is str:
        if isinstance(value, str):
            return value
        raise TypeError(value)
    raise TypeError(f"unsupported config type {kind}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _type_name(hint: Any) -> str:
    if _is_union(hint):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


# --------------------------------------------------------------------------------------------
# JSON.


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


# Keys a resumed run may change: they change how long it runs, what it logs and where, not
# what a step computes. train.steps stretches the learning-rate schedule from then on.
RESUME_SAFE_KEYS = ("name", "train.steps", "train.log_every", "train.eval_every",
                    "train.eval_batches", "train.checkpoint_every", "train.keep_checkpoints",
                    "train.tensorboard", "probe.", "mesh.", "distributed.")


def _safe_on_resume(key: str) -> bool:
    return any(key == safe or (safe.endswith(".") and key.startswith(safe))
               for safe in RESUME_SAFE_KEYS)


def resume_changes(saved: Config, config: Config) -> dict[str, tuple[Any, Any]]:
    """The keys ``config`` changes from the ``saved`` config of a run it resumes, as
    ``{key: (old, new)}``, when every one is in ``RESUME_SAFE_KEYS``. Raises ``ConfigError``
    listing every changed key (old -> new) when any other key changed."""
    old, new = _flat(to_dict(saved)), _flat(to_dict(config))
    changes = {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
               if old.get(key) != new.get(key)}
    unsafe = [key for key in changes if not _safe_on_resume(key)]
    if unsafe:
        listed = ", ".join(f"{key}: {changes[key][0]!r} -> {changes[key][1]!r}"
                           for key in unsafe)
        raise ConfigError(f"the config differs from the one the run was trained with: {listed}; "
                          f"resume with the run's config (its config.json), or start a new run "
                          f"directory (keys that may change on resume: "
                          f"{list(RESUME_SAFE_KEYS)})")
    return changes


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuilds a config dataclass from ``to_dict`` output (unknown keys are an error)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; valid keys: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        kwargs[name] = from_dict(hint, value) if dataclasses.is_dataclass(hint) else value
    return cls(**kwargs)


def save_config(config: Config, path) -> None:
    with open(path, "w") as f:
        json.dump(to_dict(config), f, indent=2, sort_keys=True)


def load_config(path) -> Config:
    with open(path) as f:
        return from_dict(Config, json.load(f))
