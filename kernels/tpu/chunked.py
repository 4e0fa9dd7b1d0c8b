"""The chunked-recurrence driver for TPU: the grid is (programs, chunks), the chunk axis
sequential, and the recurrent state lives in a VMEM scratch buffer carried from chunk to chunk.

Every sequence input and output has a BlockSpec of one chunk, so Pallas double-buffers the
HBM <-> VMEM copies of the next chunk behind the work on this one, and the on-chip footprint
of a program is a few chunks plus the state: the same at 1K and at 64K tokens
(:func:`jaxlm.kernels.vmem.vmem_bytes` counts it). The step functions are the same ones the
portable driver (:mod:`jaxlm.kernels.chunked`) runs, so both drivers compute one function.

The backward kernel walks the chunks in reverse (its index maps read chunk ``n - 1 - c`` at
grid step ``c``) from the chunk-start states the forward kernel saved, with the state's
cotangent in scratch and the per-program constants' gradients accumulated in scratch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxlm.kernels.chunked import Recurrence, with_chunk_vjp


def chunked_recurrence(rec: Recurrence, seqs: tuple[jax.Array, ...],
                       consts: tuple[jax.Array, ...], state: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
    """Runs ``rec.step`` over every chunk of every program on TPU (or in TPU interpret mode).

    seqs: arrays [programs // repeat, length, width] (length a multiple of ``rec.chunk``), any
    float dtype; consts: [programs, ...]; state: [programs, ...] float32 or wider. Returns
    (ys [programs, length, out_width] in ``rec.out_dtype`` (default: the state's dtype), final
    state).
    """
    return _RECURRENCE(rec, seqs, consts, state)




def interpret_params(interpret):
    """``interpret`` as ``pallas_call`` takes it for a TPU kernel: True means TPU interpret
    mode (simulated VMEM, DMAs and semaphores), an ``InterpretParams`` is used as given."""
    if interpret is True:
        return pltpu.InterpretParams()
    return interpret or False


def _params(semantics):
    return pltpu.CompilerParams(dimension_semantics=semantics)


def _per_program(shape):
    """BlockSpec of program g's slice of [programs, ...] (the same block at every chunk)."""
    rest = len(shape) - 1
    return pl.BlockSpec((None, *shape[1:]), lambda g, c: (g,) + (0,) * rest)


def _chunk_spec(rec, width, row, chunk_of):
    """BlockSpec of one chunk [chunk, width] of row ``row(g)``, chunk ``chunk_of(c)``."""
    return pl.BlockSpec((None, rec.chunk, width), lambda g, c: (row(g), chunk_of(c), 0))


def _shared_row(repeat):
    # lax.div, not //: floor division lowers through sign, which Mosaic cannot lower off-device.
    return lambda g: jax.lax.div(g, jnp.asarray(repeat, g.dtype))


def _forward(rec: Recurrence, seqs, consts, state, *, save_states: bool):
    programs, length = state.shape[0], seqs[0].shape[1]
    n_chunks = length // rec.chunk
    acc = state.dtype
    n_seq, n_const = len(seqs), len(consts)

    def kernel(*refs):
        seq_refs, const_refs = refs[:n_seq], refs[n_seq:n_seq + n_const]
        state_ref, ys_ref, final_ref = refs[n_seq + n_const:n_seq + n_const + 3]
        states_ref = refs[n_seq + n_const + 3] if save_states else None
        s_ref = refs[-1]
        c = pl.program_id(1)

        @pl.when(c == 0)
        def _():
            s_ref[...] = state_ref[...]

        s = s_ref[...]
        if states_ref is not None:
            states_ref[...] = s
        ys, s = rec.step(s, tuple(r[...] for r in const_refs), tuple(r[...] for r in seq_refs))
        ys_ref[...] = ys.astype(ys_ref.dtype)
        s_ref[...] = s.astype(acc)

        @pl.when(c == n_chunks - 1)
        def _():
            final_ref[...] = s.astype(acc)

    this = lambda c: c
    in_specs = ([_chunk_spec(rec, x.shape[-1], _shared_row(r), this)
                 for x, r in zip(seqs, rec.repeats)]
                + [_per_program(x.shape) for x in (*consts, state)])
    out_shape = [jax.ShapeDtypeStruct((programs, length, rec.out_width), rec.out_dtype or acc),
                 jax.ShapeDtypeStruct(state.shape, acc)]
    out_specs = [_chunk_spec(rec, rec.out_width, lambda g: g, this), _per_program(state.shape)]
    if save_states:
        out_shape.append(jax.ShapeDtypeStruct((programs, n_chunks, *state.shape[1:]), acc))
        rest = state.ndim - 1
        out_specs.append(pl.BlockSpec((None, None, *state.shape[1:]),
                                      lambda g, c: (g, c) + (0,) * rest))
    outs = pl.pallas_call(
        kernel, out_shape=out_shape, grid=(programs, n_chunks), in_specs=in_specs,
        out_specs=out_specs, scratch_shapes=[pltpu.VMEM(state.shape[1:], acc)],
        compiler_params=_params(("parallel", "arbitrary")),
        interpret=interpret_params(rec.interpret), name=f"{rec.name}_fwd",
    )(*seqs, *consts, state)
    return outs[0], outs[1], (outs[2] if save_states else None)


def _backward(rec: Recurrence, seqs, consts, states, d_ys, d_final):
    programs, n_chunks = states.shape[:2]
    acc = states.dtype
    n_seq, n_const = len(seqs), len(consts)
    state_shape = (programs, *states.shape[2:])

    def kernel(*refs):
        seq_refs, const_refs = refs[:n_seq], refs[n_seq:n_seq + n_const]
        states_ref, d_ys_ref, d_final_ref = refs[n_seq + n_const:n_seq + n_const + 3]
        outs = refs[n_seq + n_const + 3:]
        d_seq_refs, d_const_refs = outs[:n_seq], outs[n_seq:n_seq + n_const]
        d_state_ref = outs[n_seq + n_const]
        d_s_ref, d_c_refs = outs[n_seq + n_const + 1], outs[n_seq + n_const + 2:]
        c = pl.program_id(1)

        @pl.when(c == 0)
        def _():
            d_s_ref[...] = d_final_ref[...]
            for ref in d_c_refs:
                ref[...] = jnp.zeros(ref.shape, ref.dtype)

        xs = tuple(r[...].astype(acc) for r in seq_refs)
        const_vals = tuple(r[...] for r in const_refs)
        _, vjp = jax.vjp(rec.grad_step or rec.step, states_ref[...], const_vals, xs)
        d_s, d_consts, d_xs = vjp((d_ys_ref[...].astype(acc), d_s_ref[...]))
        for ref, d in zip(d_seq_refs, d_xs):
            ref[...] = d.astype(ref.dtype)
        d_s_ref[...] = d_s.astype(acc)
        for ref, d in zip(d_c_refs, d_consts):
            ref[...] += d.astype(acc)

        @pl.when(c == n_chunks - 1)
        def _():
            d_state_ref[...] = d_s.astype(acc)
            for out, ref in zip(d_const_refs, d_c_refs):
                out[...] = ref[...]

    back = lambda c: n_chunks - 1 - c
    rest = len(state_shape) - 1
    in_specs = ([_chunk_spec(rec, x.shape[-1], _shared_row(r), back)
                 for x, r in zip(seqs, rec.repeats)]
                + [_per_program(x.shape) for x in consts]
                + [pl.BlockSpec((None, None, *states.shape[2:]),
                                lambda g, c: (g, back(c)) + (0,) * rest),
                   _chunk_spec(rec, d_ys.shape[-1], lambda g: g, back),
                   _per_program(d_final.shape)])
    out_shape = ([jax.ShapeDtypeStruct((programs, *x.shape[1:]), acc) for x in seqs]
                 + [jax.ShapeDtypeStruct(x.shape, acc) for x in consts]
                 + [jax.ShapeDtypeStruct(state_shape, acc)])
    out_specs = ([_chunk_spec(rec, x.shape[-1], lambda g: g, back) for x in seqs]
                 + [_per_program(x.shape) for x in (*consts, d_final)])
    scratch = [pltpu.VMEM(state_shape[1:], acc)] + [pltpu.VMEM(x.shape[1:], acc)
                                                     for x in consts]
    outs = pl.pallas_call(
        kernel, out_shape=out_shape, grid=(programs, n_chunks), in_specs=in_specs,
        out_specs=out_specs, scratch_shapes=scratch,
        compiler_params=_params(("parallel", "arbitrary")),
        interpret=interpret_params(rec.interpret), name=f"{rec.name}_bwd",
    )(*seqs, *consts, states, d_ys, d_final)
    return tuple(outs[:n_seq]), tuple(outs[n_seq:n_seq + n_const]), outs[-1]


_RECURRENCE = with_chunk_vjp(_forward, _backward)
