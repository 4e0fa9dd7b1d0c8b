"""Chunked gated linear attention with one decay per channel (GLA, "Gated Linear Attention
Transformers with Hardware-Efficient Training") as Mosaic GPU kernels for Hopper, forward and
backward.

The layout of :mod:`~jaxlm.kernels.mosaic_gpu.linear_attention` (one thread block, one
warpgroup, per batch row and head; a TMA ring over chunks of C = 64 with one barrier per
stage; ``wgmma`` for the products; the state S [d_k, d_v] in float32 registers from chunk to
chunk), with the decay now a matrix: b [C, d_k] is the running log-decay of each channel inside
the chunk, computed in XLA with the resets (document starts, and gates below
:func:`~jaxlm.kernels.blocks.gate_floor` down to -inf, each resetting only its channel) as
per-channel segment counts ``seg`` [C, d_k]. The weight of key s in output t, channel c, is
w[t, s, c] = e^{b_tc - b_sc} for s <= t with seg_tc = seg_sc (no reset of channel c, no document
start, in (s, t]), 0 otherwise, and

    O  = A V + (Q ⊙ qd) S,          A[t, s] = Σ_c q_tc k_sc w[t, s, c]
    S' = diag(c) S + (K ⊙ kd)ᵀ V,   qd_tc = e^{b_tc} [seg_tc = 0]
                                     kd_tc = e^{b_Cc - b_tc} [seg_tc = seg_Cc]

with c = qd_C ([x] is 1 where x holds, else 0). Every factor here is <= 1 (b is
non-increasing), so nothing overflows.

A is exact in the sense of the portable kernel (every weight is a product of exponentials of
non-positive differences, so a weight is lost only where it is itself below float32's range;
the operands of ``wgmma`` are rounded to the input dtype, as q and k themselves are):

* Off the diagonal of 16 x 16 sub-chunks (t in sub-chunk i > j, s in sub-chunk j), with r the
  row b at the end of sub-chunk j: q̃_t = q_t ⊙ e^{b_t - r} and k̃_s = k_s ⊙ e^{r - b_s} are
  both <= 1, and A = Σ_{j<3} Q̃_j K̃_jᵀ: three ``wgmma`` of [C, d_k] x [d_k, C], each with the
  rows of Q̃_j outside sub-chunks > j and of K̃_j outside sub-chunk j zero (channels reset
  between s and t are zeroed in the factor on the reset's side of r).
* On the diagonal sub-chunks, exactly in float32 on the CUDA cores: for each offset
  j = 0..15, every row t takes the key s = 16 ⌊t / 16⌋ + j of its own sub-chunk, and
  A[t, s] = Σ_c q_tc k_sc e^{b_tc - b_sc} is a row sum of a [C, d_k] array (the [16, 16, d_k]
  form in 16 passes over [C, d_k]; the key rows come from shared memory).

The backward kernel walks the chunks in reverse from the chunk-start states the forward kernel
saved and computes the same blocks for dA = dO Vᵀ: dq_A = Σ_j e^{b - r_j} ⊙ (dA K̃_j) plus the
diagonal passes, dk_A likewise from dAᵀ = V dOᵀ, and the gradient of b in closed form,
db = q ⊙ dq_A - k ⊙ dk_A + (the terms of qd and kd); XLA carries db and the gradient of c back
to the log-gates. Non-finite inputs are the op's business (:func:`jaxlm.ops.chunking.
guard_nonfinite` zeroes them and puts the NaNs back); this kernel assumes finite q, k, v and
state, with gates in [-inf, 0].

Shared memory bounds the ring: at d_k = d_v = 128 in bfloat16 one stage fits (b alone is
32 KiB a chunk), at 64 up to three; :func:`_stages` picks the deepest that fits. Outputs go
from registers straight to GMEM (no SMEM staging). Untested on a device so far: at d = 128 one
warpgroup holds the float32 state (128 registers a thread) beside [C, d_k] float32 operands,
so expect register spills; splitting d_v across thread blocks is the known remedy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxlm.kernels import blocks
from jaxlm.kernels.mosaic_gpu import compat
from jaxlm.kernels.mosaic_gpu.compat import plgpu
from jaxlm.kernels.mosaic_gpu.linear_attention import (CHUNK, _check, _load_state, _ring,
                                                        _walk, program_rows)

SUB = 16  # the sub-chunk: off-diagonal blocks on wgmma, diagonal ones exactly
_F32 = jnp.float32
_SEG = jnp.bfloat16  # segment counts (< 256, exact) in half the bytes of float32


def channel_factors(log_g: jax.Array, starts: jax.Array, chunk: int):
    """The per-channel decay inputs of the kernels, computed in XLA (differentiable).

    log_g: [programs, length, d_k] log-gates <= 0 (-inf allowed); starts: bool
    [programs, length]; length a multiple of ``chunk``. A gate below
    :func:`~jaxlm.kernels.blocks.gate_floor` (float32) resets its channel. Returns b float32
    [programs, length, d_k] (running log-decay inside each chunk), seg [programs, length, d_k]
    (resets of each channel up to each position in its chunk, document starts counting for
    every channel; bfloat16, exact) and c float32 [programs, chunks * d_k] (each chunk's decay
    of the incoming state's rows, 0 for a reset row).
    """
    programs, length, dk = log_g.shape
    n = length // chunk
    g, hard = blocks.split_gates(log_g.astype(_F32).reshape(programs, n, chunk, dk))
    resets = hard + starts.reshape(programs, n, chunk, 1).astype(_F32)
    b = jnp.cumsum(g, axis=2)
    seg = jnp.cumsum(resets, axis=2)
    whole = seg[:, :, -1] == 0
    c = jnp.where(whole, jnp.exp(jnp.where(whole, b[:, :, -1], 0.0)), 0.0)
    return (b.reshape(programs, length, dk), seg.reshape(programs, length, dk).astype(_SEG),
            c.reshape(programs, n * dk))


class _Chunk:
    """One chunk's operands in registers (WGMMA layout, float32) and the refs they came from.

    q, k, b, seg: [C, d_k]; base: int32 [C, d_k], the first row of each row's sub-chunk;
    offset: each row's position in its sub-chunk."""

    def __init__(self, q_s, k_s, b_s, seg_s, interpret):
        wg = plgpu.Layout.WGMMA
        self.b_s, self.seg_s, self.interpret = b_s, seg_s, interpret
        load = lambda ref, opt=True: compat.load(ref, wg, interpret, optimized=opt).astype(_F32)
        self.q, self.k = load(q_s), load(k_s)
        self.b, self.seg = load(b_s, False), load(seg_s, False)
        self.shape = self.q.shape
        rows = compat.iota(self.shape, 0, interpret)
        self.offset = jax.lax.rem(rows, jnp.int32(SUB))
        self.base = rows - self.offset

    def row(self, ref, index):
        """Row ``index`` of a [C, d_k] SMEM ref, broadcast to every row: [C, d_k] float32."""
        vec = compat.load(ref.at[index], compat.col_layout(), self.interpret, optimized=False)
        return jax.lax.broadcast_in_dim(vec.astype(_F32), self.shape, [1])

    def gathered(self, ref, j):
        """[C, d_k]: row t holds row 16 ⌊t / 16⌋ + j of the [C, d_k] SMEM ``ref``."""
        out = self.row(ref, j)
        for m in range(1, CHUNK // SUB):
            out = jnp.where(self.base == m * SUB, self.row(ref, m * SUB + j), out)
        return out

    def across(self, j):
        """The factors of the off-diagonal block pairs with keys in sub-chunk j (a Python
        int): (F [C, d_k] = e^{b_t - r} on rows of later sub-chunks, G = e^{r - b_s} on rows
        of sub-chunk j), r the row of b at the end of sub-chunk j; 0 across a reset."""
        end = SUB * j + SUB - 1
        r, seg_r = self.row(self.b_s, end), self.row(self.seg_s, end)
        same = self.seg == seg_r
        f = _masked_exp(same & (self.base > SUB * j), self.b - r)
        g = _masked_exp(same & (self.base == SUB * j), r - self.b)
        return f, g

    def within(self, j, keys_later):
        """e^{±(b_t - b_s)} [C, d_k] for the pairs of one sub-chunk at offset j (dynamic):
        keys_later=False pairs row t with key s = 16 ⌊t / 16⌋ + j <= t (e^{b_t - b_s});
        True pairs row s with query t = 16 ⌊s / 16⌋ + j >= s (e^{b_t - b_s} too)."""
        b_j, seg_j = self.gathered(self.b_s, j), self.gathered(self.seg_s, j)
        same = self.seg == seg_j
        if keys_later:
            return _masked_exp(same & (self.offset <= j), b_j - self.b)
        return _masked_exp(same & (self.offset >= j), self.b - b_j)


def _masked_exp(mask, x):
    """e^x where ``mask``, else 0, never evaluating e^x off the mask."""
    return jnp.where(mask, jnp.exp(jnp.where(mask, x, 0.0)), 0.0)


def _pick(matrix, j, interpret):
    """[C]: row t's entry in column 16 ⌊t / 16⌋ + j of a [C, C] WGMMA-layout ``matrix``."""
    shape = matrix.shape
    rows, cols = compat.iota(shape, 0, interpret), compat.iota(shape, 1, interpret)
    hit = cols == rows - jax.lax.rem(rows, jnp.int32(SUB)) + j
    return jnp.sum(jnp.where(hit, matrix, 0.0), axis=1)


def _put(matrix, j, column, interpret):
    """``matrix`` with column 16 ⌊t / 16⌋ + j of each row t set to ``column`` [C]."""
    shape = matrix.shape
    rows, cols = compat.iota(shape, 0, interpret), compat.iota(shape, 1, interpret)
    hit = cols == rows - jax.lax.rem(rows, jnp.int32(SUB)) + j
    return jnp.where(hit, jax.lax.broadcast_in_dim(column, shape, [0]), matrix)


def _zeros(shape, interpret):
    """float32 zeros in WGMMA layout (a loop carry must enter in the layout it leaves in)."""
    return compat.iota(shape, 0, interpret).astype(_F32) * 0.0


def _rows(vec, shape):
    """A [m] row-layout vector broadcast along the columns of an [m, n] array."""
    return jax.lax.broadcast_in_dim(vec, shape, [0])


def _decays(ch: _Chunk):
    """(qd, kd) [C, d_k]: the decays of the inter-chunk terms (see the module docstring)."""
    last = CHUNK - 1
    qd = _masked_exp(ch.seg == 0, ch.b)
    kd = _masked_exp(ch.seg == ch.row(ch.seg_s, last), ch.row(ch.b_s, last) - ch.b)
    return qd, kd


def _scores_within(ch: _Chunk, raw, d_a=None):
    """The diagonal sub-chunk blocks of A [C, C] (and, given dA [C, C], their part of dq
    [C, d_k]); ``raw``: k in an untransformed SMEM buffer (rows are read from it)."""
    interpret = ch.interpret

    def body(j, carry):
        a, dq = carry if d_a is not None else (carry, None)
        decay = ch.within(j, keys_later=False)
        kw = ch.gathered(raw, j) * decay
        a = _put(a, j, jnp.sum(ch.q * kw, axis=1), interpret)
        if d_a is None:
            return a
        return a, dq + _rows(_pick(d_a, j, interpret), ch.shape) * kw

    init = _zeros((CHUNK, CHUNK), interpret)
    if d_a is not None:
        init = (init, _zeros(ch.shape, interpret))
    return jax.lax.fori_loop(jnp.int32(0), jnp.int32(SUB), body, init)


def _gmem(interpret):
    """Stores a WGMMA-layout array straight into a GMEM ref (no SMEM staging: shared memory
    is spent on the ring)."""
    return lambda ref, value: compat.store(ref, value, interpret, optimized=False)


def _forward(q, k, v, b, seg, c, state, *, save_states, stages, interpret):
    """The forward kernel on [programs, length, d] inputs. Returns (o [programs, length, d_v]
    in q's dtype, final state, chunk-start states [programs, chunks * d_k, d_v] or None)."""
    programs, length, dk = q.shape
    dv = v.shape[-1]
    dt = q.dtype
    n = length // CHUNK
    stages = min(stages, n)
    mma = compat.mma_transforms(dt)
    gmem = _gmem(interpret)

    def body(q_g, k_g, v_g, b_g, seg_g, c_g, s0_g, o_g, final_g, *rest):
        states_g = rest[0] if save_states else None
        q_r, k_r, v_r, b_r, seg_r, c_r, s16, qt16, kt16, a16, raw, bars = rest[-12:]
        p = jax.lax.axis_index("program")
        s = _load_state(s0_g.at[p], interpret)
        ins = [(x.at[p], rows) for x, rows in ((q_g, CHUNK), (k_g, CHUNK), (v_g, CHUNK),
                                                (b_g, CHUNK), (seg_g, CHUNK), (c_g, dk))]
        fetch, wait = _ring(ins, (q_r, k_r, v_r, b_r, seg_r, c_r), bars, stages, n)

        def step(i, slot, s):
            q_s, k_s, v_s = q_r.at[slot], k_r.at[slot], v_r.at[slot]
            if save_states:
                states_g[p, pl.ds(i * dk, dk)] = s
            ch = _Chunk(q_s, k_s, b_r.at[slot], seg_r.at[slot], interpret)
            s16[...] = s.astype(dt)
            compat.store(raw, ch.k.astype(dt), interpret, optimized=False)
            a = jnp.zeros((CHUNK, CHUNK), _F32)
            for j in range(CHUNK // SUB - 1):
                f, g = ch.across(j)
                qt16[...] = (ch.q * f).astype(dt)
                kt16[...] = (ch.k * g).astype(dt)
                plgpu.commit_smem()
                a = a + compat.mma(qt16, compat.T(kt16), (CHUNK, CHUNK), interpret)
                plgpu.commit_smem()  # the wgmma's reads precede the next writes
            within = _scores_within(ch, raw)
            qd, kd = _decays(ch)
            a16[...] = (a + within).astype(dt)
            qt16[...] = (ch.q * qd).astype(dt)
            kt16[...] = (ch.k * kd).astype(dt)
            plgpu.commit_smem()
            o = (compat.mma(qt16, s16, (CHUNK, dv), interpret)
                 + compat.mma(a16, v_s, (CHUNK, dv), interpret))
            gmem(o_g.at[p, pl.ds(i * CHUNK, CHUNK)], o.astype(dt))
            c_rows = _rows(compat.load(c_r.at[slot], compat.row_layout(), interpret), (dk, dv))
            s = s * c_rows + compat.mma(compat.T(kt16), v_s, (dk, dv), interpret)
            plgpu.commit_smem()  # every read of the step's buffers precedes the next step
            return s

        s = _walk(n, stages, fetch, wait, step, s)
        final_g[p] = s

    out_type = [jax.ShapeDtypeStruct((programs, length, dv), dt),
                jax.ShapeDtypeStruct((programs, dk, dv), _F32)]
    if save_states:
        out_type.append(jax.ShapeDtypeStruct((programs, n * dk, dv), _F32))
    ring = lambda rows, d, dtype, tr=(): plgpu.SMEM((stages, rows, *d), dtype, transforms=tr)
    scratch = [ring(CHUNK, (dk,), dt, mma), ring(CHUNK, (dk,), dt, mma),
               ring(CHUNK, (dv,), dt, mma), ring(CHUNK, (dk,), _F32), ring(CHUNK, (dk,), _SEG),
               ring(dk, (), _F32),
               plgpu.SMEM((dk, dv), dt, transforms=mma),
               plgpu.SMEM((CHUNK, dk), dt, transforms=mma),
               plgpu.SMEM((CHUNK, dk), dt, transforms=mma),
               plgpu.SMEM((CHUNK, CHUNK), dt, transforms=mma),
               plgpu.SMEM((CHUNK, dk), dt),
               plgpu.Barrier(num_arrivals=6, num_barriers=stages)]
    outs = compat.kernel(body, out_type=out_type, scratch_types=scratch, grid=(programs,),
                         grid_names=("program",), interpret=interpret)(
        q, k, v, b, seg, c, state)
    return outs[0], outs[1], (outs[2] if save_states else None)


def _backward(q, k, v, b, seg, c, states, d_o, d_final, *, stages, interpret):
    """The backward kernel: walks the chunks in reverse from the saved chunk-start states.

    Returns (dq, dk, dv in q's dtype; db float32 [programs, length, d_k]; dc float32
    [programs, chunks * d_k]; d_state float32 [programs, d_k, d_v])."""
    programs, length, dk = q.shape
    dv = v.shape[-1]
    dt = q.dtype
    n = length // CHUNK
    stages = min(stages, n)
    mma = compat.mma_transforms(dt)
    gmem = _gmem(interpret)

    def body(q_g, k_g, v_g, do_g, b_g, seg_g, c_g, st_g, dfin_g,
             dq_g, dk_g, dv_g, db_g, dc_g, ds0_g,
             q_r, k_r, v_r, do_r, b_r, seg_r, c_r, sd16, p16, qt16, kt16, raw, vec_k, bars):
        p = jax.lax.axis_index("program")
        ds = _load_state(dfin_g.at[p], interpret)
        order = lambda i: n - 1 - i
        ins = [(x.at[p], rows) for x, rows in ((q_g, CHUNK), (k_g, CHUNK), (v_g, CHUNK),
                                                (do_g, CHUNK), (b_g, CHUNK), (seg_g, CHUNK),
                                                (c_g, dk))]
        fetch, wait = _ring(ins, (q_r, k_r, v_r, do_r, b_r, seg_r, c_r), bars, stages, n,
                            order)

        def step(i, slot, ds):
            chunk = order(i)
            rows_c, rows_k = pl.ds(chunk * CHUNK, CHUNK), pl.ds(chunk * dk, dk)
            q_s, k_s, v_s, do_s = q_r.at[slot], k_r.at[slot], v_r.at[slot], do_r.at[slot]
            s = _load_state(st_g.at[p, rows_k], interpret)
            ch = _Chunk(q_s, k_s, b_r.at[slot], seg_r.at[slot], interpret)
            # The inter-chunk terms' gradients: d(q ⊙ qd) = dO S16ᵀ, d(k ⊙ kd) = V dS'ᵀ, and
            # dc = the row sums of S ⊙ dS' (S is not needed after this).
            sd16[...] = s.astype(dt)
            compat.store(raw, ch.k.astype(dt), interpret, optimized=False)
            vec_k[...] = jnp.sum(s * ds, axis=1)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(vec_k, dc_g.at[p, rows_k])
            d_qq = compat.mma(do_s, compat.T(sd16), (CHUNK, dk), interpret)
            plgpu.commit_smem()
            sd16[...] = ds.astype(dt)
            plgpu.commit_smem()
            d_kk = compat.mma(v_s, compat.T(sd16), (CHUNK, dk), interpret)
            d_a = compat.mma(do_s, compat.T(v_s), (CHUNK, CHUNK), interpret)
            d_at = compat.mma(v_s, compat.T(do_s), (CHUNK, CHUNK), interpret)
            p16[...] = d_a.astype(dt)
            a = jnp.zeros((CHUNK, CHUNK), _F32)
            dq_a = jnp.zeros(ch.shape, _F32)
            dk_a = jnp.zeros(ch.shape, _F32)
            for j in range(CHUNK // SUB - 1):  # off-diagonal blocks, keys in sub-chunk j
                f, g = ch.across(j)
                qt16[...] = (ch.q * f).astype(dt)
                kt16[...] = (ch.k * g).astype(dt)
                plgpu.commit_smem()
                a = a + compat.mma(qt16, compat.T(kt16), (CHUNK, CHUNK), interpret)
                dq_a = dq_a + f * compat.mma(p16, kt16, (CHUNK, dk), interpret)
                dk_a = dk_a + g * compat.mma(compat.T(p16), qt16, (CHUNK, dk), interpret)
                plgpu.commit_smem()
            within, dq_w = _scores_within(ch, raw, d_a)
            a, dq_a = a + within, dq_a + dq_w
            plgpu.commit_smem()  # every warp's reads of k in raw precede the overwrite
            compat.store(raw, ch.q.astype(dt), interpret, optimized=False)
            plgpu.commit_smem()

            def keys(j, dk_a):  # the diagonal blocks' part of dk, one query offset at a time
                qw = ch.gathered(raw, j) * ch.within(j, keys_later=True)
                return dk_a + _rows(_pick(d_at, j, interpret), ch.shape) * qw

            dk_a = jax.lax.fori_loop(jnp.int32(0), jnp.int32(SUB), keys, dk_a)
            qd, kd = _decays(ch)
            p16[...] = a.astype(dt)
            qt16[...] = (ch.q * qd).astype(dt)
            kt16[...] = (ch.k * kd).astype(dt)
            plgpu.commit_smem()
            d_v = (compat.mma(compat.T(p16), do_s, (CHUNK, dv), interpret)
                   + compat.mma(kt16, sd16, (CHUNK, dv), interpret))
            kk_grad = ch.k * kd * d_kk
            last = compat.iota(ch.shape, 0, interpret) == CHUNK - 1
            d_b = (ch.q * (dq_a + qd * d_qq) - ch.k * dk_a - kk_grad
                   + jnp.where(last, jax.lax.broadcast_in_dim(jnp.sum(kk_grad, axis=0),
                                                              ch.shape, [1]), 0.0))
            gmem(dq_g.at[p, rows_c], (dq_a + d_qq * qd).astype(dt))
            gmem(dk_g.at[p, rows_c], (dk_a + d_kk * kd).astype(dt))
            gmem(dv_g.at[p, rows_c], d_v.astype(dt))
            gmem(db_g.at[p, rows_c], d_b)
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # vec_k is free again
            c_rows = _rows(compat.load(c_r.at[slot], compat.row_layout(), interpret), (dk, dv))
            ds = ds * c_rows + compat.mma(compat.T(qt16), do_s, (dk, dv), interpret)
            plgpu.commit_smem()
            return ds

        ds = _walk(n, stages, fetch, wait, step, ds)
        ds0_g[p] = ds

    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
    out_type = [spec(x.shape, dt) for x in (q, k, v)] + [
        spec((programs, length, dk), _F32), spec((programs, n * dk), _F32),
        spec((programs, dk, dv), _F32)]
    ring = lambda rows, d, dtype, tr=(): plgpu.SMEM((stages, rows, *d), dtype, transforms=tr)
    scratch = [ring(CHUNK, (dk,), dt, mma), ring(CHUNK, (dk,), dt, mma),
               ring(CHUNK, (dv,), dt, mma), ring(CHUNK, (dv,), dt, mma),
               ring(CHUNK, (dk,), _F32), ring(CHUNK, (dk,), _SEG), ring(dk, (), _F32),
               plgpu.SMEM((dk, dv), dt, transforms=mma),
               plgpu.SMEM((CHUNK, CHUNK), dt, transforms=mma),
               plgpu.SMEM((CHUNK, dk), dt, transforms=mma),
               plgpu.SMEM((CHUNK, dk), dt, transforms=mma),
               plgpu.SMEM((CHUNK, dk), dt), plgpu.SMEM((dk,), _F32),
               plgpu.Barrier(num_arrivals=7, num_barriers=stages)]
    return compat.kernel(body, out_type=out_type, scratch_types=scratch, grid=(programs,),
                         grid_names=("program",), interpret=interpret)(
        q, k, v, d_o, b, seg, c, states, d_final)


def _smem_bytes(dk, dv, itemsize, stages, backward):
    """Shared memory the kernels take (to pick the deepest ring that fits in 227 KiB)."""
    seg = jnp.dtype(_SEG).itemsize
    ring = (2 * dk + (2 if backward else 1) * dv) * CHUNK * itemsize
    ring += CHUNK * dk * (4 + seg) + dk * 4
    rest = (dk * dv + CHUNK * CHUNK + 3 * CHUNK * dk) * itemsize
    return stages * ring + rest + (dk * 4 if backward else 0)


def _stages(dk, dv, itemsize, want, backward):
    limit = 227 * 1024 - 4096  # leave room for barriers and the compiler's own scratch
    for stages in range(want, 0, -1):
        if _smem_bytes(dk, dv, itemsize, stages, backward) <= limit:
            return stages
    raise ValueError(f"gated_linear_attention (per channel): d_k={dk}, d_v={dv} do not fit "
                     "in shared memory")


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _gla(q, k, v, b, seg, c, state, stages, interpret):
    o, final, _ = _forward(q, k, v, b, seg, c, state, save_states=False, stages=stages[0],
                           interpret=interpret)
    return o, final


def _gla_fwd(q, k, v, b, seg, c, state, stages, interpret):
    o, final, states = _forward(q, k, v, b, seg, c, state, save_states=True,
                                stages=stages[0], interpret=interpret)
    return (o, final), (q, k, v, b, seg, c, states)


def _gla_bwd(stages, interpret, residuals, cotangents):
    q, k, v, b, seg, c, states = residuals
    d_o, d_final = cotangents
    dq, dk, dv, db, dc, ds0 = _backward(q, k, v, b, seg, c, states, d_o.astype(q.dtype),
                                        d_final.astype(_F32), stages=stages[1],
                                        interpret=interpret)
    return dq, dk, dv, db, jnp.zeros_like(seg), dc, ds0


_gla.defvjp(_gla_fwd, _gla_bwd)


@functools.partial(jax.jit, static_argnames=("chunk", "stages", "interpret", "detect_races"))
def gated_linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, log_g: jax.Array,
                           starts: jax.Array, state: jax.Array, *, chunk: int = CHUNK,
                           stages: int = 2, interpret: bool = False,
                           detect_races: bool = False) -> tuple[jax.Array, jax.Array]:
    """Gated linear attention with one decay per channel (GLA),
    S_t = diag(e^{log_g_t}) S_{t-1} + k_t v_tᵀ, o_t = q_tᵀ S_t, as Mosaic GPU kernels (Hopper),
    differentiable (custom VJP).

    q (already scaled), k: [batch, heads, length, d_k]; v: [batch, heads, length, d_v], all
    bfloat16 or all float16, d_k and d_v multiples of 64 up to 256; log_g: [batch, heads,
    length, d_k] log-gates <= 0 (-inf, or anything below float32's
    :func:`~jaxlm.kernels.blocks.gate_floor`, resets its channel only); starts: bool
    [batch, length], True where a packed document starts (every channel resets); state:
    [batch, heads, d_k, d_v] float32 (the initial state, of the row's first document). Any
    length (padded to a multiple of ``chunk`` = 64 with positions that leave the state
    unchanged). ``stages``: the deepest TMA ring wanted (lowered to what shared memory
    holds); ``interpret``: run in Mosaic GPU's interpreter (any backend), ``detect_races``
    there checking every shared-memory access (:func:`compat.races_found`). Returns
    (o [batch, heads, length, d_v] in q's dtype, final state float32). Raises ValueError for
    other dtypes, widths or shapes. Inputs must be finite apart from -inf gates (the op's
    :func:`~jaxlm.ops.chunking.guard_nonfinite` sees to that).
    """
    name = "mosaic_gpu.gated_linear_attention"
    _check(name, q, k, v, state, chunk)
    batch, heads, length, dk = q.shape
    if log_g.shape != (batch, heads, length, dk):
        raise ValueError(f"{name}: per-channel log_g must have shape [batch, heads, length, "
                         f"d_k] = {(batch, heads, length, dk)}, got {tuple(log_g.shape)}")
    flat, row_starts = program_rows(name, starts, batch, heads, length)
    dv = v.shape[-1]
    programs = batch * heads
    b, seg, c = channel_factors(flat(log_g), row_starts, CHUNK)
    itemsize = jnp.dtype(q.dtype).itemsize
    depth = (_stages(dk, dv, itemsize, stages, False), _stages(dk, dv, itemsize, stages, True))
    o, final = _gla(flat(q), flat(k), flat(v), b, seg, c, state.reshape(programs, dk, dv),
                    depth, compat.interpret_params(detect_races) if interpret else None)
    return o[:, :length].reshape(batch, heads, length, dv), final.reshape(state.shape)
