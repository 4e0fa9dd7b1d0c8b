"""The sequence mixers' ops, following the mesh in context.

Under ``jax.set_mesh(mesh)`` with a ``sequence`` axis larger than one, each op here runs its
sequence-parallel form over that axis (LASP-2 for the linear-time ops, ring or Ulysses attention
for softmax attention); otherwise, and inside a ``shard_map`` that already splits the axis, it
is the plain op of :mod:`jaxlm.ops`. The layers call these, so every model with these mixers
trains under a sequence-split mesh unchanged. Arguments and results are those of the plain ops.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from jax.sharding import AbstractMesh

from jaxlm import ops
from jaxlm.ops.linear_attention import linear_attention_through
from jaxlm.parallel.ring import ring_attention
from jaxlm.parallel.sequence import (sequence_parallel_delta_rule, sequence_parallel_gla,
                                     sequence_parallel_selective_scan, sequence_parallel_ssd)
from jaxlm.parallel.ulysses import ulysses_attention

SEQUENCE_AXIS = "sequence"
ATTENTION_SCHEMES = ("ring", "zigzag", "ulysses")


def sequence_mesh(axis: str = SEQUENCE_AXIS) -> AbstractMesh | None:
    """The mesh in context when it splits ``axis`` over more than one device and no enclosing
    ``shard_map`` has taken that axis over; else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or axis not in mesh.axis_names or mesh.shape[axis] == 1:
        return None
    return None if axis in mesh.manual_axes else mesh


def _follow_mesh(op: Callable, parallel: Callable) -> Callable:
    @functools.wraps(op)
    def run(*args, **kwargs):
        mesh = sequence_mesh()
        return op(*args, **kwargs) if mesh is None else parallel(*args, mesh=mesh, **kwargs)
    return run


gated_linear_attention = _follow_mesh(ops.gated_linear_attention, sequence_parallel_gla)
gated_delta_rule = _follow_mesh(ops.gated_delta_rule, sequence_parallel_delta_rule)
selective_scan = _follow_mesh(ops.selective_scan, sequence_parallel_selective_scan)
ssd = _follow_mesh(ops.ssd, sequence_parallel_ssd)


def linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, normalize: bool = False,
                     **kwargs):
    """:func:`jaxlm.ops.linear_attention` through the :func:`gated_linear_attention` here."""
    return linear_attention_through(gated_linear_attention, q, k, v, normalize=normalize,
                                    **kwargs)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, window: int | None = None,
                     segment_ids: jax.Array | None = None, bias: jax.Array | None = None,
                     impl: str = "auto", scheme: str = "ring") -> jax.Array:
    """:func:`jaxlm.ops.attention` with ``causal=True``. Under a sequence-split mesh,
    ``scheme`` picks ring attention ("ring": contiguous chunks; "zigzag": balanced chunks) or
    head-split all-to-all attention ("ulysses")."""
    if scheme not in ATTENTION_SCHEMES:
        raise ValueError(f"attention: sequence_parallel={scheme!r}; expected one of "
                         f"{ATTENTION_SCHEMES}")
    mesh = sequence_mesh()
    if mesh is None:
        return ops.attention(q, k, v, causal=True, window=window, segment_ids=segment_ids,
                             bias=bias, impl=impl)
    if bias is not None:
        raise ValueError("attention: a score bias has no sequence-parallel form; run with "
                         "mesh.sequence=1")
    if scheme == "ulysses":
        return ulysses_attention(q, k, v, mesh=mesh, segment_ids=segment_ids, window=window,
                                 impl=impl)
    return ring_attention(q, k, v, mesh=mesh, segment_ids=segment_ids, window=window,
                          layout="zigzag" if scheme == "zigzag" else "contiguous")
