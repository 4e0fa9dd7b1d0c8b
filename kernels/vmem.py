"""On-chip (VMEM) bytes of the Pallas kernels a function runs, counted from their BlockSpecs.

On TPU every block a ``pallas_call`` maps is copied into VMEM whole and double-buffered (the
copy of the next grid step's block overlaps the work on this one), and ``scratch_shapes`` sit
in VMEM for the whole call. So a kernel's VMEM per program is

    2 x Σ (block bytes of every input and output)  +  Σ (scratch bytes)

which this module reads off the traced ``pallas_call``s of any function: the number to keep
under the chip's scoped VMEM limit (16 MiB by default on several TPU generations) when tuning
chunk or block sizes, and the number that must not grow with the sequence length.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import numpy as np

try:  # jax.core's alias is deprecated from JAX 0.10 on
    from jax.extend.core import jaxprs_in_params
except ImportError:  # pragma: no cover
    from jax.core import jaxprs_in_params

DEFAULT_SCOPED_LIMIT = 16 * 2 ** 20
BUFFERS = 2  # Pallas' default pipelining: two buffers per mapped block


def vmem_bytes(fn: Callable, *args, **kwargs) -> dict[str, int]:
    """VMEM bytes per program of every Pallas kernel ``fn(*args, **kwargs)`` runs.

    args may be arrays or ``jax.ShapeDtypeStruct``s (nothing is computed: ``fn`` is only
    traced). Gradients count too: pass e.g. ``jax.grad(loss)`` to include backward kernels.
    Returns {kernel name: bytes}; a name that occurs twice keeps the larger count.
    """
    jaxpr = jax.make_jaxpr(fn)(*args, **kwargs)
    found: dict[str, int] = {}
    for eqn in _pallas_calls(jaxpr.jaxpr):
        name = _name(eqn)
        found[name] = max(found.get(name, 0), _bytes(eqn.params["grid_mapping"]))
    return found


def _pallas_calls(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            yield eqn
            continue
        for sub in jaxprs_in_params(eqn.params):
            yield from _pallas_calls(sub)


def _name(eqn) -> str:
    name = eqn.params.get("name")
    if name:
        return name
    info = getattr(eqn.params.get("metadata"), "name", None) or eqn.params.get("debug")
    return str(getattr(info, "func_name", info))


def _block_bytes(mapping) -> int:
    shape = [1 if b is None or not isinstance(_size(b), int) else _size(b)
             for b in mapping.block_shape]
    return math.prod(shape) * np.dtype(mapping.array_aval.dtype).itemsize


def _size(dim):
    """A block dimension's size: an int, or Pallas' Blocked / Squeezed markers."""
    if isinstance(dim, int):
        return dim
    return getattr(dim, "block_size", 1)


def _bytes(grid_mapping) -> int:
    blocks = sum(_block_bytes(m) for m in grid_mapping.block_mappings)
    scratch = sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize
                  for a in grid_mapping.scratch_avals)
    return BUFFERS * blocks + scratch


def kernel_cases(length: int, *, head_dim: int = 128, dtype=None, batch: int = 1,
                 heads: int = 2, d_inner: int = 256, d_state: int = 16) -> dict:
    """jaxlm's kernels at one shape, for budgets and lowering checks (attention: causal with
    a sliding window of a quarter of the length, grouped queries over ``heads // 2`` key-value
    heads).

    Returns {name: (kernel(*args, platform=...) -> tuple of outputs, argument specs
    (``jax.ShapeDtypeStruct``; sequence inputs in ``dtype``, default bfloat16, gates and states
    in float32), indices of the differentiable arguments)}.
    """
    import jax.numpy as jnp

    from jaxlm.kernels.delta_rule import gated_delta_rule
    from jaxlm.kernels.flash_attention import flash_attention
    from jaxlm.kernels.linear_attention import gated_linear_attention
    from jaxlm.kernels.selective_scan import selective_scan

    dtype = dtype or jnp.bfloat16
    spec = lambda *shape, dt=dtype: jax.ShapeDtypeStruct(shape, dt)
    f32 = jnp.float32
    qkv = (spec(batch, heads, length, head_dim),) * 3
    starts = spec(batch, length, dt=jnp.bool_)
    state = spec(batch, heads, head_dim, head_dim, dt=f32)
    gla = lambda chunk: lambda *a, platform: gated_linear_attention(*a, chunk=chunk,
                                                                    platform=platform)
    kv = (spec(batch, length, max(heads // 2, 1), head_dim),) * 2
    attention = lambda *a, platform: (flash_attention(*a, window=max(length // 4, 1),
                                                      platform=platform),)
    return {
        "flash_attention": (attention, (spec(batch, length, heads, head_dim), *kv), (0, 1, 2)),
        "gla_per_head": (gla(64), (*qkv, spec(batch, heads, length, 1, dt=f32), starts, state),
                         (0, 1, 2, 3, 5)),
        "gla_per_channel": (gla(16), (*qkv, spec(batch, heads, length, head_dim, dt=f32),
                                      starts, state), (0, 1, 2, 3, 5)),
        "delta_rule": (lambda *a, platform: gated_delta_rule(*a, platform=platform),
                       (*qkv, spec(batch, heads, length, dt=f32),
                        spec(batch, heads, length, dt=f32), starts, state), (0, 1, 2, 3, 4, 6)),
        "selective_scan": (lambda *a, platform: selective_scan(*a, platform=platform),
                           (spec(batch, length, d_inner), spec(batch, length, d_inner, dt=f32),
                            spec(d_inner, d_state, dt=f32), spec(batch, length, d_state),
                            spec(batch, length, d_state), starts,
                            spec(batch, d_inner, d_state, dt=f32)), (0, 1, 2, 3, 4, 6)),
    }


def budget_table(lengths=(1024, 16384, 65536), **shape) -> list[dict]:
    """Rows {case, kernel, length, bytes (VMEM per program)} of every kernel of
    :func:`kernel_cases`
    for TPU, forward and backward (``shape``: keyword arguments of ``kernel_cases``)."""
    import jax.numpy as jnp

    rows = []
    for length in lengths:
        for name, (kernel, args, diff) in kernel_cases(length, **shape).items():
            loss = lambda *a, k=kernel: sum(jnp.sum(o.astype(jnp.float32))
                                            for o in k(*a, platform="tpu"))
            for kernel_name, nbytes in vmem_bytes(jax.grad(loss, argnums=diff), *args).items():
                rows.append({"case": name, "kernel": kernel_name, "length": length,
                             "bytes": nbytes})
    return rows
