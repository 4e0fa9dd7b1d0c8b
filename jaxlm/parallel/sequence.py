"""Sequence parallelism for the linear-time recurrent ops, LASP-2 style ("LASP-2: Rethinking
Sequence Parallelism for Linear Attention and Its Hybrid").

The length is split over the mesh axis ``axis`` (P devices). Every op here has a state that is
an affine function of the state it starts from: final = T(initial) + M. Each device

1. runs its chunk from a zero state, which gives M_i (its final state),
2. gets its transition T_i by running the op on its chunk with the value input zeroed, from
   an identity state (matrix transitions: gated linear attention, delta rule) or a ones state
   (elementwise transitions: selective scan, SSD); document resets of packed rows come out
   right by themselves, because the op applies them,
3. all-gathers (M_i, T_i) once: a fixed number of bytes whatever the length,
4. folds the prefix S_i = T_{i-1}(S_{i-1}) + M_{i-1} from the global initial state, and
5. reruns its chunk from S_i, which corrects its outputs exactly.

Gradients flow through the same path (the all-gather's transpose is a reduce-scatter). The
cost is about three local passes, against one pass on one device for the whole length: the
price of a generic, exact correction (LASP-2's closed-form correction for decay-only ops would
save the rerun). Lengths that P does not divide are padded at the end with inputs that leave
the state unchanged. In packed rows a document is a maximal run of equal ``segment_ids``
(:func:`jaxlm.ops.segments.document_ids`), numbered over the whole row before the split, so an
id that comes back on a later device still starts a new document.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from jaxlm.ops.chunking import pad_length, prefix_states
from jaxlm.ops.delta_rule import gated_delta_rule
from jaxlm.ops.linear_attention import gated_linear_attention
from jaxlm.ops.segments import document_ids, pad_segments
from jaxlm.ops.selective import selective_scan, ssd
from jaxlm.parallel.mesh import axis_size, batch_axes


def pad_rows(x: jax.Array | None, length: int) -> jax.Array | None:
    """Zero-pads axis 1 of [batch, length, ...] (None passes through)."""
    return None if x is None else pad_length(x, length, 1)


def _lasp2(run, transition, apply, initial, segment_ids, axis):
    """Inside shard_map: ``run(initial_state) -> (out, final)`` on this device's chunk."""
    _, local_final = run(None)
    finals = jax.lax.all_gather(local_final, axis)
    transitions = jax.lax.all_gather(transition(), axis)
    carried = None
    if segment_ids is not None:  # [P, batch] ids at each chunk's first and last position
        first = jax.lax.all_gather(segment_ids[:, 0], axis)
        last_ids = jax.lax.all_gather(segment_ids[:, -1], axis)
        carried = jnp.concatenate([jnp.ones_like(first[:1], bool), first[1:] == last_ids[:-1]])
    entering, last = prefix_states(finals, transitions, initial.astype(local_final.dtype), apply,
                                   carried)
    out, _ = run(entering[jax.lax.axis_index(axis)])
    return out, last


def _matmul(transition, state):  # [.., dk, dk] @ [.., dk, dv]
    return jnp.einsum("...ij,...jv->...iv", transition, state)


def _multiply(transition, state):
    return transition * state


def _sharded(mesh, axis, body, seq_args, segment_ids, initial, replicated, length):
    """shard_map of ``body(seq_args, segment_ids, initial, replicated)``: [batch, length, ...]
    arrays split on batch and length, the [batch, ...] initial state on batch, ``replicated``
    everywhere. Returns (out [batch, length, ...], last state)."""
    n = axis_size(mesh, axis)
    padded = -(-length // n) * n
    seq_args = tuple(pad_rows(x, padded) for x in seq_args)
    # Documents (maximal runs of equal ids) are numbered over the whole row before the split,
    # so an id that comes back on a later device still starts a new document.
    segment_ids = document_ids(segment_ids)
    segment_ids = None if segment_ids is None else pad_segments(segment_ids, padded)
    batch = batch_axes(mesh)
    seq_spec = lambda x: None if x is None else P(batch, axis)
    fn = jax.shard_map(
        body, mesh=mesh,
        in_specs=(tuple(seq_spec(x) for x in seq_args), seq_spec(segment_ids), P(batch),
                  tuple(None if x is None else P() for x in replicated)),
        out_specs=(P(batch, axis), P(batch)), check_vma=False)
    out, last = fn(seq_args, segment_ids, initial, tuple(replicated))
    return out[:, :length], last


def check_global(op: Callable, *args, **kwargs) -> None:
    """Runs ``op``'s own argument checks on the whole, unsplit inputs (shapes only, nothing is
    computed), so bad input is named with the shapes the caller passed, not a device's share."""
    jax.eval_shape(functools.partial(op, **kwargs), *args)  # flags go in kwargs: not traced


def _finish(out, last, return_final_state):
    return (out, last) if return_final_state else out


def _identity_state(q, dk):
    batch, _, heads = q.shape[:3]
    return jnp.broadcast_to(jnp.eye(dk, dtype=jnp.promote_types(q.dtype, jnp.float32)),
                            (batch, heads, dk, dk))


def _initial(initial_state, shape, dtype):
    return jnp.zeros(shape, jnp.promote_types(dtype, jnp.float32)) if initial_state is None \
        else initial_state


def _matrix_state_lasp2(op, q, k, v, gates, *, mesh, axis, initial_state, segment_ids,
                        return_final_state):
    """LASP-2 for an op with a [d_k, d_v] state per head whose update is linear in the state:
    ``op(q, k, v, *gates, initial_state=, segment_ids=) -> (out, final state)``. The carried
    transition is the op run on zeroed values from the identity state (a [d_k, d_k] matrix)."""
    batch, length, heads, dk = q.shape
    initial = _initial(initial_state, (batch, heads, dk, v.shape[-1]), v.dtype)

    def body(seq, seg, init, _):
        q, k, v, *gates = seq
        run = lambda s: op(q, k, v, *gates, initial_state=s, segment_ids=seg)
        transition = lambda: op(q, k, jnp.zeros(v.shape[:-1] + (dk,), v.dtype), *gates,
                                initial_state=_identity_state(q, dk), segment_ids=seg)[1]
        return _lasp2(run, transition, _matmul, init, seg, axis)

    out, last = _sharded(mesh, axis, body, (q, k, v, *gates), segment_ids, initial, (), length)
    return _finish(out, last, return_final_state)


def sequence_parallel_gla(q: jax.Array, k: jax.Array, v: jax.Array, log_g: jax.Array | None, *,
                          mesh: Mesh, axis: str = "sequence", scale: float | None = None,
                          chunk_size: int = 64, initial_state: jax.Array | None = None,
                          return_final_state: bool = False,
                          segment_ids: jax.Array | None = None, impl: str = "auto"):
    """:func:`jaxlm.ops.gated_linear_attention` with the length split over ``mesh`` axis
    ``axis`` (arguments and results as there; ``log_g=None`` is linear attention)."""
    check_global(gated_linear_attention, q, k, v, log_g, initial_state=initial_state,
                 segment_ids=segment_ids, impl=impl)
    op = functools.partial(gated_linear_attention, scale=scale, chunk_size=chunk_size,
                           return_final_state=True, impl=impl)
    return _matrix_state_lasp2(op, q, k, v, (log_g,), mesh=mesh, axis=axis,
                               initial_state=initial_state, segment_ids=segment_ids,
                               return_final_state=return_final_state)


def sequence_parallel_delta_rule(q: jax.Array, k: jax.Array, v: jax.Array, beta: jax.Array,
                                 log_alpha: jax.Array | None = None, *, mesh: Mesh,
                                 axis: str = "sequence", scale: float | None = None,
                                 chunk_size: int = 64, initial_state: jax.Array | None = None,
                                 return_final_state: bool = False,
                                 segment_ids: jax.Array | None = None, impl: str = "auto"):
    """:func:`jaxlm.ops.gated_delta_rule` (``log_alpha=None``: DeltaNet) with the length split
    over ``mesh`` axis ``axis``. The carried transition is the product of the
    α_t (I − β_t k_t k_tᵀ) of the chunk, a [d_k, d_k] matrix per head."""
    check_global(gated_delta_rule, q, k, v, beta, log_alpha, initial_state=initial_state,
                 segment_ids=segment_ids, impl=impl)
    op = functools.partial(gated_delta_rule, scale=scale, chunk_size=chunk_size,
                           return_final_state=True, impl=impl)
    return _matrix_state_lasp2(op, q, k, v, (beta, log_alpha), mesh=mesh, axis=axis,
                               initial_state=initial_state, segment_ids=segment_ids,
                               return_final_state=return_final_state)


def sequence_parallel_ssd(x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array,
                          C: jax.Array, *, mesh: Mesh, axis: str = "sequence",
                          chunk_size: int = 64, D: jax.Array | None = None,
                          initial_state: jax.Array | None = None,
                          return_final_state: bool = False,
                          segment_ids: jax.Array | None = None, impl: str = "auto"):
    """:func:`jaxlm.ops.ssd` (Mamba-2) with the length split over ``mesh`` axis ``axis``."""
    check_global(ssd, x, dt, A, B, C, D=D, initial_state=initial_state, segment_ids=segment_ids,
                 impl=impl)
    batch, length, heads, head_dim = x.shape
    op = functools.partial(ssd, chunk_size=chunk_size, return_final_state=True, impl=impl)
    initial = _initial(initial_state, (batch, heads, head_dim, B.shape[-1]), x.dtype)

    def body(seq, seg, init, params):
        x, dt, B, C = seq
        A, D = params
        run = lambda s: op(x, dt, A, B, C, D=D, initial_state=s, segment_ids=seg)
        transition = lambda: op(jnp.zeros_like(x), dt, A, B, C,
                                initial_state=jnp.ones_like(init), segment_ids=seg)[1]
        return _lasp2(run, transition, _multiply, init, seg, axis)

    out, last = _sharded(mesh, axis, body, (x, dt, B, C), segment_ids, initial, (A, D), length)
    return _finish(out, last, return_final_state)


def sequence_parallel_selective_scan(u: jax.Array, delta: jax.Array, A: jax.Array,
                                     B: jax.Array, C: jax.Array, D: jax.Array | None = None,
                                     z: jax.Array | None = None,
                                     delta_bias: jax.Array | None = None,
                                     delta_softplus: bool = False, *, mesh: Mesh,
                                     axis: str = "sequence",
                                     initial_state: jax.Array | None = None,
                                     return_final_state: bool = False,
                                     segment_ids: jax.Array | None = None,
                                     chunk_size: int = 64, impl: str = "auto"):
    """:func:`jaxlm.ops.selective_scan` (Mamba) with the length split over ``mesh`` axis
    ``axis``. Δ is made final (bias, softplus) before the split, so padding with Δ = 0 leaves
    the state unchanged."""
    check_global(selective_scan, u, delta, A, B, C, D, z, delta_bias,
                 delta_softplus=delta_softplus, initial_state=initial_state,
                 segment_ids=segment_ids, impl=impl)
    batch, length, d_inner = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias
    if delta_softplus:
        delta = jax.nn.softplus(delta)
    op = functools.partial(selective_scan, chunk_size=chunk_size, return_final_state=True,
                           impl=impl)
    initial = _initial(initial_state, (batch, d_inner, A.shape[-1]), u.dtype)

    def body(seq, seg, init, params):
        u, delta, B, C, z = seq
        A, D = params
        run = lambda s: op(u, delta, A, B, C, D, z, initial_state=s, segment_ids=seg)
        transition = lambda: op(jnp.zeros_like(u), delta, A, B, C,
                                initial_state=jnp.ones_like(init), segment_ids=seg)[1]
        return _lasp2(run, transition, _multiply, init, seg, axis)

    out, last = _sharded(mesh, axis, body, (u, delta, B, C, z), segment_ids, initial, (A, D),
                         length)
    return _finish(out, last, return_final_state)
