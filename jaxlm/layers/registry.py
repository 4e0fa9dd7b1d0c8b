"""The mixer registry: layer-pattern names -> constructors of sequence mixers.

Every mixer follows one protocol (see ``Mixer``), so the LM, the runner, generation and the
tests work for all of them. A mixer registers a constructor and the frozen dataclass of its
options; ``jaxlm.models.ModelConfig`` holds one such dataclass per registered name.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.ops.checks import as_jax


class Mixer(Protocol):
    """The sequence-mixer protocol.

    ``__call__(x, *, segment_ids=None)``: x [batch, length, d_model] -> [batch, length, d_model].
    ``init_state(batch_size, dtype, *, max_length=None)``: the recurrent state (or KV cache).
    ``step(x_t, state)``: x_t [batch, d_model] -> (y_t [batch, d_model], new state). For every
    registered mixer, ``step`` first checks x_t against ``d_model`` and the state against
    ``init_state(batch, ...)``'s structure and shapes (:func:`check_step_inputs`).
    ``d_model``: the width of x.
    Optionally ``prefill(x, *, max_length)`` -> (y, state): the parallel form that also returns
    the state after ``x``; mixers whose outputs are not causal token by token (JRT's prefix)
    must define it. :func:`prefill` falls back to a scan of ``step``.
    """

    d_model: int

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array: ...

    def init_state(self, batch_size: int, dtype: Any, *, max_length: int | None = None) -> Any: ...

    def step(self, x_t: jax.Array, state: Any) -> tuple[jax.Array, Any]: ...


@dataclasses.dataclass(frozen=True)
class MixerSpec:
    name: str
    config_type: type
    build: Callable[..., nnx.Module]  # build(d_model, config, *, rngs) -> Mixer
    sequence_parallel: bool = False  # its parallel form follows a sequence-split mesh


MIXERS: dict[str, MixerSpec] = {}


def register_mixer(name: str, config_type: type, layer: type | None = None, *,
                   sequence_parallel: bool = False, **fixed: Any):
    """Registers a mixer under ``name`` with its options dataclass ``config_type``.
    ``sequence_parallel=True`` declares that the mixer's ops come from
    :mod:`jaxlm.parallel.dispatch`, so it trains under a mesh that splits the length.

    With ``layer``, the constructor is ``layer(d_model, **asdict(config), **fixed, rngs=rngs)``
    (the options are the layer's keyword arguments). Without it, this returns a decorator for a
    custom ``build(d_model, config, *, rngs)``. The layer's ``step`` (and that of any class a
    custom build returns) checks its inputs: :func:`check_step_inputs`.
    """

    def wrap(build):
        if name in MIXERS:
            raise ValueError(f"register_mixer: a mixer named {name!r} is already registered")
        if layer is not None:
            checked_step(layer)
        MIXERS[name] = MixerSpec(name, config_type, build, sequence_parallel)
        return build

    if layer is None:
        return wrap

    def build_layer(d_model: int, config: Any, *, rngs: nnx.Rngs) -> nnx.Module:
        return layer(d_model, **dataclasses.asdict(config), **fixed, rngs=rngs)

    wrap(build_layer)


def build_mixer(name: str, d_model: int, config: Any, *, rngs: nnx.Rngs) -> nnx.Module:
    """Builds the registered mixer ``name`` with its options ``config``."""
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; registered mixers: {sorted(MIXERS)}")
    spec = MIXERS[name]
    if not isinstance(config, spec.config_type):
        raise TypeError(f"mixer {name!r} takes a {spec.config_type.__name__}, "
                        f"got {type(config).__name__}")
    mixer = spec.build(d_model, config, rngs=rngs)
    checked_step(type(mixer))
    return mixer


def prefill(mixer: Any, x: jax.Array, *, max_length: int | None = None) -> tuple[jax.Array, Any]:
    """Runs ``mixer`` over x [batch, length, d_model] and returns (y, state after x): the
    mixer's own ``prefill`` where it has one, else a ``lax.scan`` of ``step``."""
    if hasattr(mixer, "prefill"):
        return mixer.prefill(x, max_length=max_length)
    state = mixer.init_state(x.shape[0], x.dtype, max_length=max_length)

    def body(state, x_t):
        y, state = mixer.step(x_t, state)
        return state, y

    state, ys = jax.lax.scan(body, state, jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(ys, 0, 1), state


# Two cache lengths: an init_state dimension that differs between them follows max_length, so
# a state of any length passes there (a KV cache made for another max_length, a prefill's).
_PROBE_LENGTHS = (1, 4099)


def _expected_state(mixer: Any, batch: int, dtype: Any) -> list:
    """init_state(batch, dtype)'s [(tree, ...)] for each probe length, by jax.eval_shape (no
    arrays are made)."""
    takes_length = "max_length" in inspect.signature(mixer.init_state).parameters
    lengths = _PROBE_LENGTHS if takes_length else (None,)
    return [jax.eval_shape(functools.partial(mixer.init_state, batch, dtype,
                                             **({"max_length": m} if takes_length else {})))
            for m in lengths]


def check_step_inputs(mixer: Any, x_t: Any, state: Any) -> None:
    """Raises a ValueError naming the mixer, the argument and the leaf unless x_t is
    [batch, mixer.d_model] and ``state`` has the structure and shapes of
    ``mixer.init_state(batch, x_t.dtype)`` (dimensions that follow ``max_length`` may take any
    size). Costs nothing at run time: shapes only, from ``jax.eval_shape``; dtypes are not
    checked."""
    op = f"{type(mixer).__name__}.step"
    shape = tuple(jnp.shape(x_t))
    d_model = getattr(mixer, "d_model", None)
    if len(shape) != 2 or (d_model is not None and shape[1] != d_model):
        raise ValueError(f"{op}: x_t must have shape [batch, d_model={d_model}], got shape "
                         f"{shape}")
    dtype = jnp.result_type(x_t)
    dtype = dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.float32
    expected = _expected_state(mixer, shape[0], dtype)
    got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(state)
    probes = [jax.tree_util.tree_flatten_with_path(e) for e in expected]
    exp_leaves, exp_tree = probes[0]
    if got_tree != exp_tree:
        raise ValueError(
            f"{op}: state must have init_state's structure "
            f"{[jax.tree_util.keystr(p) for p, _ in exp_leaves]}, got "
            f"{[jax.tree_util.keystr(p) for p, _ in got_leaves]}")
    for i, (path, leaf) in enumerate(got_leaves):
        dims = [tuple(leaves[i][1].shape) for leaves, _ in probes]
        want = tuple(d if all(o[j] == d for o in dims) else None
                     for j, d in enumerate(dims[0]))
        got = tuple(jnp.shape(leaf))
        if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
            shown = "(" + ", ".join("any" if w is None else str(w) for w in want) + ")"
            raise ValueError(
                f"{op}: state{jax.tree_util.keystr(path)} must have shape {shown} (as "
                f"init_state(batch_size={shape[0]}) makes it, for x_t of shape {shape}), got "
                f"shape {got}")


def checked_step(layer: type) -> None:
    """Makes ``layer.step`` take NumPy arrays (as JAX arrays) and call
    :func:`check_step_inputs` first (once per class)."""
    step = layer.step
    if getattr(step, "_checks_inputs", False):
        return

    @functools.wraps(step)
    def step_with_checks(self, x_t, state, *args, **kwargs):
        x_t, state = as_jax((x_t, state))
        check_step_inputs(self, x_t, state)
        return step(self, x_t, state, *args, **kwargs)

    step_with_checks._checks_inputs = True
    layer.step = step_with_checks
