"""One Pallas driver for every chunkwise recurrent kernel (GLA / SSD, delta rule, selective scan).

A chunkwise recurrence is a function ``step(state, consts, xs) -> (ys, new_state)`` on one chunk
of one program (one batch row and head): ``xs`` are ``[chunk, width]`` slices of the sequence
inputs. :func:`chunked_recurrence` runs it as a kernel with one program per row of the grid
axis, the state kept on chip from chunk to chunk, and a ``jax.custom_vjp`` whose backward pass
is a second kernel: it walks the chunks in reverse from the chunk-start states the forward
kernel saved ([programs, chunks, *state] in HBM, as flash-linear-attention does) and takes each
chunk's vector-Jacobian product inside the kernel body. The backward pass is therefore as
chunked as the forward, and never differentiates through ``pallas_call``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxlm.kernels.backend import compiler_params, target_platform

Step = Callable[[jax.Array, tuple, tuple], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Recurrence:
    """The static description of a chunked recurrence kernel.

    step: the chunk function. chunk: positions per chunk (the length is a multiple of it).
    repeats: per sequence input, how many consecutive programs share one row of it (program
    g reads row g // repeat: the heads of one batch row share its document starts).
    out_width: width of ``ys``. name: for errors and profiles. grad_step: the chunk function
    the backward kernel differentiates, when it differs from ``step`` (e.g. carries
    ``custom_vjp`` rules, which not every lowering takes in a forward kernel).
    """

    step: Step
    chunk: int
    repeats: tuple[int, ...]
    out_width: int
    name: str
    interpret: bool = False
    platform: str | None = None
    grad_step: Step | None = None
    out_dtype: jnp.dtype | None = None


def run(rec: Recurrence, seqs: tuple[jax.Array, ...], consts: tuple[jax.Array, ...],
        state: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Runs ``rec`` with the driver for its target: on TPU (and in interpret mode on a CPU
    host, which simulates the TPU) the chunk-pipelined driver of
    :mod:`jaxlm.kernels.tpu.chunked`; on GPU (``platform="gpu"``, also interpreted) the
    whole-row driver below, which the Triton lowering takes."""
    if target_platform(rec.platform, rec.interpret) == "tpu":
        from jaxlm.kernels.tpu import chunked as tpu_chunked

        return tpu_chunked.chunked_recurrence(rec, seqs, consts, state)
    compiler_params(rec.name, rec.interpret, 1, platform=rec.platform)  # raises early
    return chunked_recurrence(rec, seqs, consts, state)


def chunked_recurrence(rec: Recurrence, seqs: tuple[jax.Array, ...],
                       consts: tuple[jax.Array, ...], state: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
    """Runs ``rec.step`` over every chunk of every program, each program holding whole rows
    (the portable driver: the Triton lowering on GPU).

    seqs: arrays [programs // repeat, length, width] (length a multiple of ``rec.chunk``);
    consts: arrays [programs, ...] every chunk of a program reads whole; state: [programs, ...]
    float32 or wider. Returns (ys [programs, length, out_width] in ``rec.out_dtype`` (default:
    the state's dtype), final state in the state's dtype).
    """
    return _RECURRENCE(rec, seqs, consts, state)


def fold_repeats(rec: Recurrence, seqs, consts, d_seqs, d_consts) -> tuple[tuple, tuple]:
    """Per-program gradients back to the inputs' shapes and dtypes: a sequence input shared by
    ``repeat`` programs gets the sum of their gradients."""
    d_seqs = tuple(d.reshape(x.shape[0], r, *x.shape[1:]).sum(1).astype(x.dtype)
                   for d, x, r in zip(d_seqs, seqs, rec.repeats))
    return d_seqs, tuple(d.astype(c.dtype) for d, c in zip(d_consts, consts))


def with_chunk_vjp(forward: Callable, backward: Callable) -> Callable:
    """The ``jax.custom_vjp`` every chunked-recurrence driver shares: the forward kernel (it
    also saves the chunk-start states when differentiated) and a backward kernel that walks
    the chunks in reverse from them. ``forward(rec, seqs, consts, state, save_states=)`` ->
    (ys, final, states or None); ``backward(rec, seqs, consts, states, d_ys, d_final)`` ->
    per-program (d_seqs, d_consts, d_state). Returns ``run(rec, seqs, consts, state)``."""
    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def run(rec, seqs, consts, state):
        ys, final, _ = forward(rec, seqs, consts, state, save_states=False)
        return ys, final

    def run_fwd(rec, seqs, consts, state):
        ys, final, states = forward(rec, seqs, consts, state, save_states=True)
        return (ys, final), (seqs, consts, states)

    def run_bwd(rec, residuals, cotangents):
        seqs, consts, states = residuals
        d_seqs, d_consts, d_state = backward(rec, seqs, consts, states, *cotangents)
        return fold_repeats(rec, seqs, consts, d_seqs, d_consts) + (d_state,)

    run.defvjp(run_fwd, run_bwd)
    return run


def _whole(shape, row=lambda g: g):
    """BlockSpec giving program g the whole of row ``row(g)`` of an array of ``shape``."""
    rest = len(shape) - 1
    return pl.BlockSpec((pl.squeezed, *shape[1:]), lambda g: (row(g),) + (0,) * rest)


def _seq_specs(rec, seqs):
    # lax.div, not //: floor division lowers through sign, which Mosaic cannot lower off-device.
    return [_whole(x.shape, lambda g, r=r: jax.lax.div(g, jnp.asarray(r, g.dtype))) for x, r in zip(seqs, rec.repeats)]


def _chunk_slices(rec, refs, c):
    start = pl.multiple_of(c * rec.chunk, rec.chunk)
    return pl.ds(start, rec.chunk), tuple(r[pl.ds(start, rec.chunk), :] for r in refs)


def _forward(rec: Recurrence, seqs, consts, state, *, save_states: bool):
    programs, length = state.shape[0], seqs[0].shape[1]
    n_chunks = length // rec.chunk
    acc = state.dtype
    n_seq, n_const = len(seqs), len(consts)

    def kernel(*refs):
        seq_refs, const_refs = refs[:n_seq], refs[n_seq:n_seq + n_const]
        state_ref, ys_ref, final_ref = refs[n_seq + n_const:n_seq + n_const + 3]
        states_ref = refs[-1] if save_states else None
        const_vals = tuple(r[...] for r in const_refs)

        def body(c, s):
            where, xs = _chunk_slices(rec, seq_refs, c)
            if states_ref is not None:
                states_ref[c] = s
            ys, s = rec.step(s, const_vals, xs)
            ys_ref[where, :] = ys.astype(ys_ref.dtype)
            return s.astype(acc)

        final_ref[...] = jax.lax.fori_loop(jnp.int32(0), jnp.int32(n_chunks), body,
                                           state_ref[...])

    out_shape = [jax.ShapeDtypeStruct((programs, length, rec.out_width), rec.out_dtype or acc),
                 jax.ShapeDtypeStruct(state.shape, acc)]
    out_specs = [_whole(out_shape[0].shape), _whole(state.shape)]
    if save_states:
        out_shape.append(jax.ShapeDtypeStruct((programs, n_chunks, *state.shape[1:]), acc))
        out_specs.append(_whole(out_shape[-1].shape))
    outs = pl.pallas_call(
        kernel, out_shape=out_shape, grid=(programs,),
        in_specs=[*_seq_specs(rec, seqs), *(_whole(c.shape) for c in consts),
                  _whole(state.shape)],
        out_specs=out_specs, interpret=rec.interpret, name=f"{rec.name}_fwd",
        compiler_params=compiler_params(rec.name, rec.interpret, 1, platform=rec.platform),
    )(*seqs, *consts, state)
    return outs[0], outs[1], (outs[2] if save_states else None)


def _backward(rec: Recurrence, seqs, consts, states, d_ys, d_final):
    programs, n_chunks = states.shape[:2]
    acc = states.dtype
    n_seq, n_const = len(seqs), len(consts)

    def kernel(*refs):
        seq_refs, const_refs = refs[:n_seq], refs[n_seq:n_seq + n_const]
        states_ref, d_ys_ref, d_final_ref = refs[n_seq + n_const:n_seq + n_const + 3]
        d_seq_refs = refs[n_seq + n_const + 3:2 * n_seq + n_const + 3]
        d_const_refs, d_state_ref = refs[2 * n_seq + n_const + 3:-1], refs[-1]
        const_vals = tuple(r[...] for r in const_refs)

        def body(i, carry):
            d_s, d_consts = carry
            c = n_chunks - 1 - i
            where, xs = _chunk_slices(rec, seq_refs, c)
            xs = tuple(x.astype(acc) for x in xs)
            _, vjp = jax.vjp(rec.grad_step or rec.step, states_ref[c], const_vals, xs)
            d_s, d_consts_c, d_xs = vjp((d_ys_ref[where, :].astype(acc), d_s))
            for ref, d in zip(d_seq_refs, d_xs):
                ref[where, :] = d.astype(acc)
            return d_s.astype(acc), tuple(a + b for a, b in zip(d_consts, d_consts_c))

        zeros = tuple(jnp.zeros(c.shape, c.dtype) for c in const_vals)
        d_s, d_consts = jax.lax.fori_loop(jnp.int32(0), jnp.int32(n_chunks), body,
                                          (d_final_ref[...], zeros))
        for ref, d in zip(d_const_refs, d_consts):
            ref[...] = d.astype(acc)
        d_state_ref[...] = d_s

    state_shape = (programs, *states.shape[2:])
    out_shape = ([jax.ShapeDtypeStruct((programs, *x.shape[1:]), acc) for x in seqs]
                 + [jax.ShapeDtypeStruct(c.shape, acc) for c in consts]
                 + [jax.ShapeDtypeStruct(state_shape, acc)])
    outs = pl.pallas_call(
        kernel, out_shape=out_shape, grid=(programs,),
        in_specs=[*_seq_specs(rec, seqs), *(_whole(c.shape) for c in consts),
                  _whole(states.shape), _whole(d_ys.shape), _whole(d_final.shape)],
        out_specs=[_whole(s.shape) for s in out_shape], interpret=rec.interpret,
        name=f"{rec.name}_bwd",
        compiler_params=compiler_params(rec.name, rec.interpret, 1, platform=rec.platform),
    )(*seqs, *consts, states, d_ys, d_final)
    return tuple(outs[:n_seq]), tuple(outs[n_seq:n_seq + n_const]), outs[-1]


_RECURRENCE = with_chunk_vjp(_forward, _backward)
