"""The mixer registry: layer-pattern names -> constructors of sequence mixers.

Every mixer follows one protocol (see ``Mixer``), so the LM, the runner, generation and the
tests work for all of them. A mixer registers a constructor and the frozen dataclass of its
options; ``jaxlm.models.ModelConfig`` holds one such dataclass per registered name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx


class Mixer(Protocol):
    """The sequence-mixer protocol.

    ``__call__(x, *, segment_ids=None)``: x [batch, length, d_model] -> [batch, length, d_model].
    ``init_state(batch_size, dtype, *, max_length=None)``: the recurrent state (or KV cache).
    ``step(x_t, state)``: x_t [batch, d_model] -> (y_t [batch, d_model], new state).
    Optionally ``prefill(x, *, max_length)`` -> (y, state): the parallel form that also returns
    the state after ``x``; mixers whose outputs are not causal token by token (JRT's prefix)
    must define it. :func:`prefill` falls back to a scan of ``step``.
    """

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
    custom ``build(d_model, config, *, rngs)``.
    """

    def wrap(build):
        if name in MIXERS:
            raise ValueError(f"register_mixer: a mixer named {name!r} is already registered")
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
    return spec.build(d_model, config, rngs=rngs)


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
