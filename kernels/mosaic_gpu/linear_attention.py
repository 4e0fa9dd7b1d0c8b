"""Chunked gated linear attention with one decay per head (Mamba-2's SSD, RetNet, lightning
attention; "Transformers are SSMs", "Gated Linear Attention Transformers with
Hardware-Efficient Training") as Mosaic GPU kernels for Hopper, forward and backward.

One thread block (one warpgroup) per batch row and head walks the chunks in order. TMA copies
bring each chunk's q, k, v [C, d] and its per-position decay vectors into a multi-stage
shared-memory ring with one barrier per stage (:func:`_ring`; written by hand because the
Mosaic GPU interpreter does not run ``plgpu.emit_pipeline``'s predicated output copies),
``wgmma`` computes the products, and the state S [d_k, d_v] stays in registers in float32
from chunk to chunk. Per chunk, with b_t the
running log-decay inside the chunk and D[t, s] = e^{b_t - b_s} for s <= t in one document
(0 elsewhere):

    O  = (Q Kᵀ ⊙ D) V + diag(qd) Q S,        qd_t = e^{b_t} while t is in S's document
    S' = c S + Kᵀ diag(kd) V,                 kd_s = e^{b_C - b_s} for s in the last document

c = e^{b_C} when no document starts in the chunk (0 otherwise). The decay vectors, which need a
cumulative sum, are computed in XLA around the kernel (O(length) work); the kernel forms D
from b by masked exponentials of differences, never e^{-inf - (-inf)}: a log-gate of -inf is
turned into a document start (it zeroes the state exactly as a reset does) before b is summed.
The products with S read it in the input dtype (as flash-linear-attention does); S itself,
its updates and every accumulator are float32.

The backward kernel walks the chunks in reverse from the chunk-start states the forward kernel
saved, with the gradients of the state carried in registers, and returns the gradients of q, k,
v, b, qd, kd and c; XLA carries them back to the log-gates.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxlm.kernels.mosaic_gpu import compat
from jaxlm.kernels.mosaic_gpu.compat import plgpu

CHUNK = 64  # the M of a warpgroup's wgmma
_F32 = jnp.float32


def decay_factors(log_g: jax.Array, starts: jax.Array, chunk: int):
    """The per-position decay vectors of the chunked form, computed in XLA.

    log_g: [programs, length] log-gates <= 0 (-inf allowed); starts: bool [programs, length]
    (True where a document starts; the incoming state belongs to the first document);
    length a multiple of ``chunk``. Returns float32 [programs, length] arrays (b, seg, qd, kd)
    and the per-chunk state decay c [programs, length // chunk]: b the running log-decay
    inside each chunk, seg the number of resets (starts or -inf gates) up to each position in
    its chunk.
    """
    programs, length = log_g.shape
    n = length // chunk
    dead = jnp.isneginf(log_g)
    g = jnp.where(dead, 0.0, log_g).astype(_F32).reshape(programs, n, chunk)
    resets = (starts | dead).reshape(programs, n, chunk)
    b = jnp.cumsum(g, axis=-1)
    seg = jnp.cumsum(resets.astype(jnp.int32), axis=-1)
    first = seg == 0
    last = seg == seg[..., -1:]
    qd = jnp.where(first, jnp.exp(jnp.where(first, b, 0.0)), 0.0)
    gap = b[..., -1:] - b
    kd = jnp.where(last, jnp.exp(jnp.where(last, gap, 0.0)), 0.0)
    c = qd[..., -1]
    flat = lambda x: x.reshape(programs, length).astype(_F32)
    return flat(b), flat(seg), flat(qd), flat(kd), c.astype(_F32)


def _decay_matrix(b_s, seg_s, size, interpret, transposed=False):
    """D (or Dᵀ) [size, size] in WGMMA layout from the chunk's b and seg in SMEM."""
    row, col = compat.row_layout(), compat.col_layout()
    b_r, b_c = compat.load(b_s, row, interpret), compat.load(b_s, col, interpret)
    seg_r, seg_c = compat.load(seg_s, row, interpret), compat.load(seg_s, col, interpret)
    shape = (size, size)
    bcast = lambda x, dim: jax.lax.broadcast_in_dim(x, shape, [dim])
    rows, cols = compat.iota(shape, 0, interpret), compat.iota(shape, 1, interpret)
    if transposed:  # [s, t]: row index s, column index t
        mask = (rows <= cols) & (bcast(seg_r, 0) == bcast(seg_c, 1))
        gap = bcast(b_c, 1) - bcast(b_r, 0)
    else:
        mask = (cols <= rows) & (bcast(seg_r, 0) == bcast(seg_c, 1))
        gap = bcast(b_r, 0) - bcast(b_c, 1)
    return jnp.where(mask, jnp.exp(jnp.where(mask, gap, 0.0)), 0.0)


def _rows(vec_s, shape, interpret):
    """A [m] vector in SMEM broadcast along the columns of a WGMMA-layout [m, n] array."""
    return jax.lax.broadcast_in_dim(compat.load(vec_s, compat.row_layout(), interpret), shape,
                                    [0])


def _check(name, q, k, v, state, chunk):
    compat.check_available(name)
    if q.dtype not in (jnp.bfloat16, jnp.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{name}: q, k, v must share a 16-bit dtype (bfloat16 or float16), "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    dk, dv = q.shape[-1], v.shape[-1]
    if dk % 64 or dv % 64 or dk > 256 or dv > 256:
        raise ValueError(f"{name}: d_k and d_v must be multiples of 64 up to 256 for wgmma, "
                         f"got d_k={dk}, d_v={dv}")
    if chunk != CHUNK:
        raise ValueError(f"{name}: chunk must be {CHUNK}, got {chunk}")
    if state.dtype != _F32:
        raise ValueError(f"{name}: state must be float32, got {state.dtype}")


def _ring(inputs, smem, barriers, stages, n, order=lambda i: i):
    """A TMA ring over chunks: ``inputs`` are (GMEM ref [n * rows, ...], rows) pairs,
    ``smem`` their [stages, rows, ...] buffers, ``barriers`` one per stage (arrivals: one per
    input). Returns (fetch(step, slot), wait(slot)); step i reads chunk ``order(i)``."""
    def fetch(step, slot):
        chunk = order(step)
        for (ref, rows), buf in zip(inputs, smem):
            plgpu.copy_gmem_to_smem(ref.at[pl.ds(chunk * rows, rows)], buf.at[slot],
                                    barriers.at[slot])

    def wait(slot):
        plgpu.barrier_wait(barriers.at[slot])

    for i in range(min(stages, n)):  # the prologue: the first stages in flight
        fetch(i, i)
    return fetch, wait


def _walk(n, stages, fetch, wait, step, carry):
    """Runs ``step(i, slot, carry) -> carry`` over n chunks, refilling each slot with chunk
    i + stages once step i is done with it."""
    def body(i, carry):
        slot = jax.lax.rem(i, jnp.int32(stages))
        wait(slot)
        carry = step(i, slot, carry)
        plgpu.commit_smem()  # every thread's reads of the slot precede the TMA overwrite

        @pl.when(i + stages < n)
        def _():
            fetch(i + stages, slot)

        return carry

    return jax.lax.fori_loop(jnp.int32(0), jnp.int32(n), body, carry)


def _emit(value, smem, gmem):
    """Registers -> SMEM -> GMEM inside a kernel, the SMEM buffer free again on return."""
    smem[...] = value
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(smem, gmem)
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def _load_state(gmem, interpret):
    """A float32 [d_k, d_v] state straight from GMEM into WGMMA-layout registers."""
    return compat.load(gmem, plgpu.Layout.WGMMA, interpret, optimized=False)


def _forward(q, k, v, b, seg, qd, kd, c, state, *, save_states, stages, interpret):
    """The forward kernel on [programs, length, d] inputs. Returns (o [programs, length, d_v]
    in q's dtype, final state, chunk-start states [programs, chunks * d_k, d_v] or None)."""
    programs, length, dk = q.shape
    dv = v.shape[-1]
    dt = q.dtype
    n = length // CHUNK
    stages = min(stages, n)
    mma = compat.mma_transforms(dt)
    # c is [programs, chunks]; broadcast to a d_k vector per chunk (the state's rows).
    c = jnp.broadcast_to(c[..., None], (programs, n, dk)).reshape(programs, n * dk)

    def body(q_g, k_g, v_g, b_g, seg_g, qd_g, kd_g, c_g, s0_g, o_g, final_g, *rest):
        states_g = rest[0] if save_states else None
        (q_r, k_r, v_r, b_r, seg_r, qd_r, kd_r, c_r, s16_smem, vd_smem, p_smem, o_smem,
         bars) = rest[-13:]
        p = jax.lax.axis_index("program")
        s = _load_state(s0_g.at[p], interpret)
        ins = [(x.at[p], rows) for x, rows in ((q_g, CHUNK), (k_g, CHUNK), (v_g, CHUNK),
                                                (b_g, CHUNK), (seg_g, CHUNK), (qd_g, CHUNK),
                                                (kd_g, CHUNK), (c_g, dk))]
        fetch, wait = _ring(ins, (q_r, k_r, v_r, b_r, seg_r, qd_r, kd_r, c_r), bars, stages, n)

        def step(i, slot, s):
            q_s, k_s, v_s = q_r.at[slot], k_r.at[slot], v_r.at[slot]
            if save_states:
                states_g[p, pl.ds(i * dk, dk)] = s
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # o_smem is free again
            s16_smem[...] = s.astype(dt)
            plgpu.commit_smem()
            decay = _decay_matrix(b_r.at[slot], seg_r.at[slot], CHUNK, interpret)
            p_smem[...] = (compat.mma(q_s, compat.T(k_s), (CHUNK, CHUNK), interpret)
                           * decay).astype(dt)
            o = (compat.mma(q_s, s16_smem, (CHUNK, dv), interpret)
                 * _rows(qd_r.at[slot], (CHUNK, dv), interpret))
            v_reg = compat.load(v_s, plgpu.Layout.WGMMA, interpret).astype(_F32)
            vd_smem[...] = (v_reg * _rows(kd_r.at[slot], (CHUNK, dv), interpret)).astype(dt)
            plgpu.commit_smem()
            o = o + compat.mma(p_smem, v_s, (CHUNK, dv), interpret)
            o_smem[...] = o.astype(dt)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(o_smem, o_g.at[p, pl.ds(i * CHUNK, CHUNK)])
            return (s * _rows(c_r.at[slot], (dk, dv), interpret)
                    + compat.mma(compat.T(k_s), vd_smem, (dk, dv), interpret))

        s = _walk(n, stages, fetch, wait, step, s)
        plgpu.wait_smem_to_gmem(0)
        final_g[p] = s

    out_type = [jax.ShapeDtypeStruct((programs, length, dv), dt),
                jax.ShapeDtypeStruct((programs, dk, dv), _F32)]
    if save_states:
        out_type.append(jax.ShapeDtypeStruct((programs, n * dk, dv), _F32))
    ring = lambda rows, d, dtype, tr=(): plgpu.SMEM((stages, rows, *d), dtype, transforms=tr)
    scratch = [ring(CHUNK, (dk,), dt, mma), ring(CHUNK, (dk,), dt, mma),
               ring(CHUNK, (dv,), dt, mma), ring(CHUNK, (), _F32), ring(CHUNK, (), _F32),
               ring(CHUNK, (), _F32), ring(CHUNK, (), _F32), ring(dk, (), _F32),
               plgpu.SMEM((dk, dv), dt, transforms=mma),
               plgpu.SMEM((CHUNK, dv), dt, transforms=mma),
               plgpu.SMEM((CHUNK, CHUNK), dt, transforms=mma),
               plgpu.SMEM((CHUNK, dv), dt, transforms=mma),
               plgpu.Barrier(num_arrivals=8, num_barriers=stages)]
    outs = compat.kernel(body, out_type=out_type, scratch_types=scratch, grid=(programs,),
                         grid_names=("program",), interpret=interpret)(
        q, k, v, b, seg, qd, kd, c, state)
    return outs[0], outs[1], (outs[2] if save_states else None)


def _smem_bytes(dk, dv, itemsize, stages, backward):
    """Shared memory the kernels take (to pick the deepest ring that fits in 227 KiB)."""
    vecs = 4 * CHUNK * 4 + dk * 4
    if backward:
        ring = stages * ((3 * CHUNK * dk + 2 * CHUNK * dv) * itemsize // 1 + vecs)
        rest = (2 * dk * dv + 2 * CHUNK * CHUNK + CHUNK * dv + CHUNK * max(dk, dv)) * itemsize
        return ring + rest + 3 * CHUNK * 4 + dk * 4
    ring = stages * ((2 * CHUNK * dk + CHUNK * dv) * itemsize + vecs)
    return ring + (dk * dv + 2 * CHUNK * dv + CHUNK * CHUNK) * itemsize


def _stages(dk, dv, itemsize, want, backward):
    limit = 227 * 1024 - 4096  # leave room for barriers and the compiler's own scratch
    for stages in range(want, 0, -1):
        if _smem_bytes(dk, dv, itemsize, stages, backward) <= limit:
            return stages
    raise ValueError(f"gated_linear_attention: d_k={dk}, d_v={dv} do not fit in shared memory")


def _backward(q, k, v, b, seg, qd, kd, c, states, d_o, d_final, *, stages, interpret):
    """The backward kernel: walks the chunks in reverse from the saved chunk-start states.

    Returns (dq, dk, dv in q's dtype; db_rows, db_cols, dqd, dkd float32 [programs, length];
    dc float32 [programs, chunks * d_k]; d_state float32 [programs, d_k, d_v]), where the
    gradient of b is db_rows - db_cols (the two ends of each decay e^{b_t - b_s}).
    """
    programs, length, dk = q.shape
    dv = v.shape[-1]
    dt = q.dtype
    n = length // CHUNK
    stages = min(stages, n)
    mma = compat.mma_transforms(dt)
    c = jnp.broadcast_to(c[..., None], (programs, n, dk)).reshape(programs, n * dk)
    row = plgpu.Layout.WGMMA

    def body(q_g, k_g, v_g, do_g, b_g, seg_g, qd_g, kd_g, c_g, st_g, dfin_g,
             dq_g, dk_g, dv_g, dbr_g, dbc_g, dqd_g, dkd_g, dc_g, ds0_g,
             q_r, k_r, v_r, do_r, b_r, seg_r, qd_r, kd_r, c_r,
             s16, ds16, da16, p16, doq16, out_c, vec_c, vec_k, bars):
        p = jax.lax.axis_index("program")
        ds = _load_state(dfin_g.at[p], interpret)
        order = lambda i: n - 1 - i
        ins = [(x.at[p], rows) for x, rows in ((q_g, CHUNK), (k_g, CHUNK), (v_g, CHUNK),
                                                (do_g, CHUNK), (b_g, CHUNK), (seg_g, CHUNK),
                                                (qd_g, CHUNK), (kd_g, CHUNK), (c_g, dk))]
        fetch, wait = _ring(ins, (q_r, k_r, v_r, do_r, b_r, seg_r, qd_r, kd_r, c_r), bars,
                            stages, n, order)

        def step(i, slot, ds):
            chunk = order(i)
            rows_c, rows_k = pl.ds(chunk * CHUNK, CHUNK), pl.ds(chunk * dk, dk)
            q_s, k_s, v_s, do_s = q_r.at[slot], k_r.at[slot], v_r.at[slot], do_r.at[slot]
            s = _load_state(st_g.at[p, rows_k], interpret)
            qd_rows = compat.load(qd_r.at[slot], compat.row_layout(), interpret)
            kd_rows = compat.load(kd_r.at[slot], compat.row_layout(), interpret)
            bc = lambda x, d: jax.lax.broadcast_in_dim(x, (CHUNK, d), [0])
            do_reg = compat.load(do_s, row, interpret).astype(_F32)
            s16[...] = s.astype(dt)
            ds16[...] = ds.astype(dt)
            doq16[...] = (do_reg * bc(qd_rows, dv)).astype(dt)
            decay = _decay_matrix(b_r.at[slot], seg_r.at[slot], CHUNK, interpret)
            scores = compat.mma(q_s, compat.T(k_s), (CHUNK, CHUNK), interpret) * decay
            d_scores = compat.mma(do_s, compat.T(v_s), (CHUNK, CHUNK), interpret)
            p16[...] = scores.astype(dt)
            da16[...] = (d_scores * decay).astype(dt)
            plgpu.commit_smem()
            grad = d_scores * scores  # dD ⊙ D: the gradient of each b_t - b_s
            _emit(jnp.sum(grad, axis=1), vec_c, dbr_g.at[p, rows_c])
            _emit(jnp.sum(grad, axis=0), vec_c, dbc_g.at[p, rows_c])
            x = compat.mma(do_s, compat.T(s16), (CHUNK, dk), interpret)  # dO Sᵀ
            q_reg = compat.load(q_s, row, interpret).astype(_F32)
            _emit(jnp.sum(x * q_reg, axis=1), vec_c, dqd_g.at[p, rows_c])
            d_q = compat.mma(da16, k_s, (CHUNK, dk), interpret) + x * bc(qd_rows, dk)
            _emit(d_q.astype(dt), out_c, dq_g.at[p, rows_c])
            y = compat.mma(v_s, compat.T(ds16), (CHUNK, dk), interpret)  # V dS'ᵀ
            k_reg = compat.load(k_s, row, interpret).astype(_F32)
            _emit(jnp.sum(y * k_reg, axis=1), vec_c, dkd_g.at[p, rows_c])
            d_k = compat.mma(compat.T(da16), q_s, (CHUNK, dk), interpret) + y * bc(kd_rows, dk)
            _emit(d_k.astype(dt), out_c.at[:, pl.ds(0, dk)] if dk != out_c.shape[1] else out_c,
                  dk_g.at[p, rows_c])
            z = compat.mma(k_s, ds16, (CHUNK, dv), interpret)  # K dS'
            d_v = compat.mma(compat.T(p16), do_s, (CHUNK, dv), interpret) + z * bc(kd_rows, dv)
            _emit(d_v.astype(dt), out_c.at[:, pl.ds(0, dv)] if dv != out_c.shape[1] else out_c,
                  dv_g.at[p, rows_c])
            _emit(jnp.sum(s * ds, axis=1), vec_k, dc_g.at[p, rows_k])
            c_rows = _rows(c_r.at[slot], (dk, dv), interpret)
            return ds * c_rows + compat.mma(compat.T(q_s), doq16, (dk, dv), interpret)

        ds = _walk(n, stages, fetch, wait, step, ds)
        ds0_g[p] = ds

    vec = jax.ShapeDtypeStruct((programs, length), _F32)
    out_type = [jax.ShapeDtypeStruct(x.shape, dt) for x in (q, k, v)] + [vec] * 4 + [
        jax.ShapeDtypeStruct((programs, n * dk), _F32),
        jax.ShapeDtypeStruct((programs, dk, dv), _F32)]
    ring = lambda rows, d, dtype, tr=(): plgpu.SMEM((stages, rows, *d), dtype, transforms=tr)
    scratch = [ring(CHUNK, (dk,), dt, mma), ring(CHUNK, (dk,), dt, mma),
               ring(CHUNK, (dv,), dt, mma), ring(CHUNK, (dv,), dt, mma)]
    scratch += [ring(CHUNK, (), _F32)] * 4 + [ring(dk, (), _F32)]
    scratch += [plgpu.SMEM((dk, dv), dt, transforms=mma), plgpu.SMEM((dk, dv), dt, transforms=mma),
                plgpu.SMEM((CHUNK, CHUNK), dt, transforms=mma),
                plgpu.SMEM((CHUNK, CHUNK), dt, transforms=mma),
                plgpu.SMEM((CHUNK, dv), dt, transforms=mma),
                plgpu.SMEM((CHUNK, max(dk, dv)), dt, transforms=mma),
                plgpu.SMEM((CHUNK,), _F32), plgpu.SMEM((dk,), _F32),
                plgpu.Barrier(num_arrivals=9, num_barriers=stages)]
    return compat.kernel(body, out_type=out_type, scratch_types=scratch, grid=(programs,),
                         grid_names=("program",), interpret=interpret)(
        q, k, v, d_o, b, seg, qd, kd, c, states, d_final)


def program_rows(name: str, starts: jax.Array, batch: int, heads: int, length: int):
    """The entry points' shared layout: checks ``starts`` (bool [batch, length]) and returns
    (flat, row_starts): ``flat`` takes [batch, heads, length, ...] to [batch * heads, padded,
    ...], zero-padded to whole chunks (positions that leave the state unchanged), and
    row_starts is bool [batch * heads, padded]."""
    if starts.shape != (batch, length):
        raise ValueError(f"{name}: starts must have shape [batch, length] = "
                         f"{(batch, length)}, got {tuple(starts.shape)}")
    padded = -(-length // CHUNK) * CHUNK
    programs = batch * heads
    pad = lambda x: jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2))
    flat = lambda x: pad(x.reshape(programs, length, *x.shape[3:]))
    row_starts = pad(jnp.broadcast_to(starts.astype(bool)[:, None], (batch, heads, length))
                     .reshape(programs, length))
    return flat, row_starts


@functools.partial(jax.custom_vjp, nondiff_argnums=(9, 10))
def _gla(q, k, v, b, seg, qd, kd, c, state, stages, interpret):
    o, final, _ = _forward(q, k, v, b, seg, qd, kd, c, state, save_states=False,
                           stages=stages[0], interpret=interpret)
    return o, final


def _gla_fwd(q, k, v, b, seg, qd, kd, c, state, stages, interpret):
    o, final, states = _forward(q, k, v, b, seg, qd, kd, c, state, save_states=True,
                                stages=stages[0], interpret=interpret)
    return (o, final), (q, k, v, b, seg, qd, kd, c, states)


def _gla_bwd(stages, interpret, residuals, cotangents):
    q, k, v, b, seg, qd, kd, c, states = residuals
    d_o, d_final = cotangents
    dq, dk, dv, dbr, dbc, dqd, dkd, dc, ds0 = _backward(
        q, k, v, b, seg, qd, kd, c, states, d_o.astype(q.dtype), d_final.astype(_F32),
        stages=stages[1], interpret=interpret)
    dc = dc.reshape(c.shape + (-1,)).sum(-1)  # c was broadcast over the state's rows
    return dq, dk, dv, dbr - dbc, jnp.zeros_like(seg), dqd, dkd, dc, ds0


_gla.defvjp(_gla_fwd, _gla_bwd)


@functools.partial(jax.jit, static_argnames=("chunk", "stages", "interpret"))
def gated_linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, log_g: jax.Array,
                           starts: jax.Array, state: jax.Array, *, chunk: int = CHUNK,
                           stages: int = 2, interpret: bool = False
                           ) -> tuple[jax.Array, jax.Array]:
    """Gated linear attention with one decay per head, S_t = e^{log_g_t} S_{t-1} + k_t v_tᵀ,
    o_t = q_tᵀ S_t, as Mosaic GPU kernels (Hopper), differentiable (custom VJP).

    q (already scaled), k: [batch, heads, length, d_k]; v: [batch, heads, length, d_v], all
    bfloat16 or all float16, d_k and d_v multiples of 64; log_g: [batch, heads, length, 1]
    log-gates <= 0 (-inf allowed: it resets the state); starts: bool [batch, length], True
    where a packed document starts; state: [batch, heads, d_k, d_v] float32 (the initial
    state, of the row's first document). Any length (padded to a multiple of ``chunk`` = 64
    with positions that leave the state unchanged). ``stages``: depth of the TMA ring (lowered
    where shared memory is short); ``interpret``: run in Mosaic GPU's interpreter (any
    backend). Returns (o [batch, heads, length, d_v] in q's dtype, final state float32).
    Raises ValueError for other dtypes or widths, and for per-channel gates (their kernel is
    :func:`jaxlm.kernels.mosaic_gpu.gla_per_channel.gated_linear_attention`).
    """
    name = "mosaic_gpu.gated_linear_attention"
    _check(name, q, k, v, state, chunk)
    batch, heads, length, dk = q.shape
    if log_g.shape != (batch, heads, length, 1):
        raise ValueError(f"{name}: log_g must have shape [batch, heads, length, 1] = "
                         f"{(batch, heads, length, 1)} (one decay per head), got "
                         f"{tuple(log_g.shape)}; for per-channel decay use "
                         "mosaic_gpu.gla_per_channel.gated_linear_attention")
    flat, row_starts = program_rows(name, starts, batch, heads, length)
    dv = v.shape[-1]
    programs = batch * heads
    g = flat(log_g[..., 0])
    b, seg, qd, kd, c = decay_factors(g, row_starts, CHUNK)
    itemsize = jnp.dtype(q.dtype).itemsize
    depth = (_stages(dk, dv, itemsize, stages, False), _stages(dk, dv, itemsize, stages, True))
    o, final = _gla(flat(q), flat(k), flat(v), b, seg, qd, kd, c,
                    state.reshape(programs, dk, dv), depth,
                    compat.interpret_params() if interpret else None)
    return o[:, :length].reshape(batch, heads, length, dv), final.reshape(state.shape)
