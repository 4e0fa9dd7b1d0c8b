"""The chunked (gated) delta rule as Mosaic GPU kernels for Hopper, forward and backward:
DeltaNet ("Parallelizing Linear Transformers with the Delta Rule over Sequence Length") and
Gated DeltaNet ("Gated Delta Networks: Improving Mamba2 with Delta Rule"),

    S_t = e^{a_t} (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,     o_t = q_tᵀ S_t.

The work is split as flash-linear-attention splits it. Per chunk of C = 64 positions, with b
the running log-decay inside the chunk, Γ[t, s] = e^{b_t - b_s} for s <= t in one document (0
elsewhere), γ_t = e^{b_t} while t is in the incoming state's document and the UT transform
T = (I + tril_strict(diag(β) Γ ⊙ K Kᵀ))⁻¹:

1. A chunk-parallel stage that does not read the state, in XLA for every chunk at once
   (:func:`wy_factors`): T in 16 x 16 blocks (forward substitution on the diagonal blocks
   only, then :func:`jaxlm.kernels.blocks.block_series`' product series: batched matrix
   products on the tensor cores), W = T diag(β γ) K and Ũ = T diag(β) V, stored in q's dtype.
2. A sequential Mosaic GPU kernel that walks the chunks in order with the state in float32
   registers. Every equation below is column by column in d_v, so the state is split: one
   thread block (one warpgroup) per batch row, head and TILE = 64 columns of S, [d_k, 64] in
   registers (d_v = 128 gives twice the thread blocks of one per head, at half the registers
   each). The chunk's q, k, w, ũ columns and decay vectors arrive by TMA in a multi-stage
   shared-memory ring with one barrier per stage (the ring of
   :mod:`~jaxlm.kernels.mosaic_gpu.linear_attention`), and every product is a ``wgmma``:

       U  = Ũ - W S
       O  = diag(γ) Q S + (Q Kᵀ ⊙ Γ) U
       S' = c S + Kᵀ diag(kd) U,      kd_s = Γ[C, s] for s in the chunk's last document

   with c = γ_C (0 when a document starts inside the chunk). These are the GLA kernel's
   equations with V replaced by U, and the decay vectors are the same
   (:func:`~jaxlm.kernels.mosaic_gpu.linear_attention.decay_factors`): a log-decay of -inf is
   turned into a document start (it zeroes the state exactly as a reset does) before b is summed.

The backward kernel is the mirror: it walks the chunks in reverse from the chunk-start states
the forward kernel saved, carries its TILE columns of dS in float32 registers, recomputes U,
and returns the gradients of q, k, W, Ũ, b, γ, kd, c and the initial state (the column
blocks' partial sums for q, k, W, b, γ, kd and c added in XLA); JAX differentiates stage 1
(rematerialized, not stored) and the decay vectors (the solve's gradient in closed form,
N̄ = -Tᵀ T̄ Tᵀ, from :func:`jaxlm.ops.delta_rule.with_closed_form_vjp`). The products read S, U, W and Ũ in the
input dtype (as flash-linear-attention does); S, its updates and every accumulator are float32.
Non-finite inputs are not guarded here: the op (:func:`jaxlm.ops.delta_rule.gated_delta_rule`)
zeroes them and restores NaN causally around any kernel.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxlm.kernels import blocks
from jaxlm.kernels.mosaic_gpu import compat
from jaxlm.kernels.mosaic_gpu.compat import plgpu
from jaxlm.kernels.mosaic_gpu.linear_attention import (CHUNK, _check, _decay_matrix, _emit,
                                                        _load_state, _ring, _rows, _walk,
                                                        decay_factors, program_rows)
from jaxlm.ops.delta_rule import forward_substitution, with_closed_form_vjp

_F32 = jnp.float32
_SMEM_LIMIT = 227 * 1024 - 4096  # leave room for barriers and the compiler's own scratch
_BLOCK = 16  # the UT solve's diagonal blocks
TILE = 64  # the columns of the state (of v) one thread block keeps


def _ut_inverse(n: jax.Array) -> jax.Array:
    """(I + N)⁻¹ for strictly lower-triangular N [chunks, C, C] in 16 x 16 blocks: forward
    substitution on the diagonal blocks alone ([chunks · C / 16, 16, 16], 15 steps), then
    :func:`jaxlm.kernels.blocks.block_series` (four C x C products per chunk)."""
    count, size, _ = n.shape
    nb = size // _BLOCK
    diag = jnp.einsum("nbibj->nbij", n.reshape(count, nb, _BLOCK, nb, _BLOCK))
    t_diag = jnp.einsum("nbij,bc->nbicj", forward_substitution(diag),
                        jnp.eye(nb, dtype=n.dtype)).reshape(count, size, size)
    return jax.vmap(functools.partial(blocks.block_series, block=_BLOCK))(n, t_diag)


_ut_inverse_vjp = with_closed_form_vjp(_ut_inverse)


def wy_factors(k: jax.Array, v: jax.Array, beta: jax.Array, b: jax.Array, seg: jax.Array,
               gamma: jax.Array, chunk: int = CHUNK) -> tuple[jax.Array, jax.Array]:
    """The state-independent stage: W = T diag(β γ) K and Ũ = T diag(β) V of every chunk.

    k: [programs, length, d_k], v: [programs, length, d_v] (16-bit); beta, b, seg, gamma:
    float32 [programs, length] (b, seg, gamma = qd as from ``decay_factors``); length a
    multiple of ``chunk``. Returns (w [programs, length, d_k], ũ [programs, length, d_v]) in
    k's dtype. T comes from the blocked solve, differentiated in closed form.
    """
    programs, length, dk = k.shape
    n = length // chunk
    split = lambda x: x.reshape(programs * n, chunk, *x.shape[2:])
    k_c, v_c, beta_c, b_c, seg_c, gamma_c = map(split, (k, v, beta, b, seg, gamma))
    rows, cols = blocks.rows_cols(chunk)
    same = (seg_c[:, :, None] == seg_c[:, None, :]) & (cols < rows)
    decay = jnp.exp(jnp.where(same, b_c[:, :, None] - b_c[:, None, :], 0.0))
    kk = jnp.einsum("ntk,nsk->nts", k_c, k_c, preferred_element_type=_F32)
    # masks by where, not by products with 0: an overflowing k·k of a pair no output reads
    t = _ut_inverse_vjp(jnp.where(same, beta_c[:, :, None] * decay * kk, 0.0))
    w = jnp.einsum("nts,nsk->ntk", t, (beta_c * gamma_c)[..., None] * k_c.astype(_F32))
    u = jnp.einsum("nts,nsv->ntv", t, beta_c[..., None] * v_c.astype(_F32))
    return (w.astype(k.dtype).reshape(programs, length, dk),
            u.astype(k.dtype).reshape(programs, length, -1))


def _smem_bytes(dk, itemsize, stages, backward):
    """Shared memory one thread block of the kernels takes (to pick the deepest ring that
    fits): the block keeps TILE columns of the state, so d_v does not enter."""
    dv = TILE
    vecs = 4 * CHUNK * 4 + dk * 4
    if backward:  # ring: q, k, w, ũ, dO; then S, dS, U / dO γ, dU, the [C, C] scores, out
        ring = (3 * CHUNK * dk + 2 * CHUNK * dv) * itemsize + vecs
        rest = (2 * dk * dv + 2 * CHUNK * dv + CHUNK * CHUNK + CHUNK * dk) * itemsize
        return stages * ring + rest + CHUNK * 4 + dk * 4
    ring = (3 * CHUNK * dk + CHUNK * dv) * itemsize + vecs  # q, k, w, ũ
    return stages * ring + (dk * dv + 3 * CHUNK * dv + CHUNK * CHUNK) * itemsize


def fits(dk: int, itemsize: int) -> bool:
    """Whether both kernels fit in an H100's shared memory with a one-stage ring at key width
    ``dk`` (up to 192 in 16 bits; any d_v, which is split into TILE-wide blocks)."""
    return max(_smem_bytes(dk, itemsize, 1, bw) for bw in (False, True)) <= _SMEM_LIMIT


def _stages(dk, itemsize, want, backward):
    for stages in range(want, 0, -1):
        if _smem_bytes(dk, itemsize, stages, backward) <= _SMEM_LIMIT:
            return stages
    raise ValueError(f"mosaic_gpu.gated_delta_rule: d_k={dk} does not fit in shared memory "
                     "(the backward kernel takes d_k up to 192)")


def _per_chunk(c, dk):
    """c [programs, chunks] broadcast to one d_k vector per chunk (the state's rows)."""
    programs, n = c.shape
    return jnp.broadcast_to(c[..., None], (programs, n, dk)).reshape(programs, n * dk)


def _ring_buffers(stages, mma, dt, widths):
    """The ring's SMEM buffers: one [stages, C, d] per 16-bit input of width d in ``widths``,
    then four [stages, C] vectors (b, seg, qd, kd) and the [stages, d_k] vector c."""
    ring = lambda rows, d, dtype, tr=(): plgpu.SMEM((stages, rows, *d), dtype, transforms=tr)
    return ([ring(CHUNK, (d,), dt, mma) for d in widths] + [ring(CHUNK, (), _F32)] * 4
            + [ring(widths[0], (), _F32)])


def _tiles(state):
    """[programs, d_k, d_v] -> [programs, d_v / TILE, d_k, TILE]: one state slice per block."""
    programs, dk, dv = state.shape
    return state.reshape(programs, dk, dv // TILE, TILE).transpose(0, 2, 1, 3)


def _untiles(state):
    """The inverse of :func:`_tiles`."""
    programs, tiles, dk, _ = state.shape
    return state.transpose(0, 2, 1, 3).reshape(programs, dk, tiles * TILE)


def _forward(q, k, w, u, b, seg, qd, kd, c, state, *, save_states, stages, interpret):
    """The forward kernel on [programs, length, d] inputs, state [programs, d_k, d_v]. Returns
    (o [programs, length, d_v] in q's dtype, final state, chunk-start states
    [programs, d_v / TILE, chunks * d_k, TILE] or None)."""
    programs, length, dk = q.shape
    dv = u.shape[-1]
    dt = q.dtype
    n = length // CHUNK
    stages = min(stages, n)
    mma = compat.mma_transforms(dt)
    wgmma = plgpu.Layout.WGMMA

    def body(q_g, k_g, w_g, u_g, b_g, seg_g, qd_g, kd_g, c_g, s0_g, o_g, final_g, *rest):
        states_g = rest[0] if save_states else None
        (q_r, k_r, w_r, u_r, b_r, seg_r, qd_r, kd_r, c_r, s16, u16, ud16, p16, o_smem,
         bars) = rest[-15:]
        p, j = jax.lax.axis_index("program"), jax.lax.axis_index("tile")
        cols = pl.ds(j * TILE, TILE)
        s = _load_state(s0_g.at[p, j], interpret)
        ins = [(x, rows) for x, rows in ((q_g.at[p], CHUNK), (k_g.at[p], CHUNK),
                                          (w_g.at[p], CHUNK), (u_g.at[p, :, cols], CHUNK),
                                          (b_g.at[p], CHUNK), (seg_g.at[p], CHUNK),
                                          (qd_g.at[p], CHUNK), (kd_g.at[p], CHUNK),
                                          (c_g.at[p], dk))]
        fetch, wait = _ring(ins, (q_r, k_r, w_r, u_r, b_r, seg_r, qd_r, kd_r, c_r), bars,
                            stages, n)

        def step(i, slot, s):
            q_s, k_s, w_s = q_r.at[slot], k_r.at[slot], w_r.at[slot]
            if save_states:
                states_g[p, j, pl.ds(i * dk, dk)] = s
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # o_smem is free again
            s16[...] = s.astype(dt)
            decay = _decay_matrix(b_r.at[slot], seg_r.at[slot], CHUNK, interpret)
            p16[...] = (compat.mma(q_s, compat.T(k_s), (CHUNK, CHUNK), interpret)
                        * decay).astype(dt)
            plgpu.commit_smem()
            upd = (compat.load(u_r.at[slot], wgmma, interpret).astype(_F32)
                   - compat.mma(w_s, s16, (CHUNK, TILE), interpret))  # U = Ũ - W S
            u16[...] = upd.astype(dt)
            ud16[...] = (upd * _rows(kd_r.at[slot], (CHUNK, TILE), interpret)).astype(dt)
            plgpu.commit_smem()
            o = (compat.mma(q_s, s16, (CHUNK, TILE), interpret)
                 * _rows(qd_r.at[slot], (CHUNK, TILE), interpret)
                 + compat.mma(p16, u16, (CHUNK, TILE), interpret))
            o_smem[...] = o.astype(dt)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(o_smem, o_g.at[p, pl.ds(i * CHUNK, CHUNK), cols])
            return (s * _rows(c_r.at[slot], (dk, TILE), interpret)
                    + compat.mma(compat.T(k_s), ud16, (dk, TILE), interpret))

        s = _walk(n, stages, fetch, wait, step, s)
        plgpu.wait_smem_to_gmem(0)
        final_g[p, j] = s

    tiles = dv // TILE
    out_type = [jax.ShapeDtypeStruct((programs, length, dv), dt),
                jax.ShapeDtypeStruct((programs, tiles, dk, TILE), _F32)]
    if save_states:
        out_type.append(jax.ShapeDtypeStruct((programs, tiles, n * dk, TILE), _F32))
    scratch = _ring_buffers(stages, mma, dt, (dk, dk, dk, TILE)) + [
        plgpu.SMEM((dk, TILE), dt, transforms=mma),
        plgpu.SMEM((CHUNK, TILE), dt, transforms=mma),
        plgpu.SMEM((CHUNK, TILE), dt, transforms=mma),
        plgpu.SMEM((CHUNK, CHUNK), dt, transforms=mma),
        plgpu.SMEM((CHUNK, TILE), dt, transforms=mma),
        plgpu.Barrier(num_arrivals=9, num_barriers=stages)]
    outs = compat.kernel(body, out_type=out_type, scratch_types=scratch, grid=(programs, tiles),
                         grid_names=("program", "tile"), interpret=interpret)(
        q, k, w, u, b, seg, qd, kd, _per_chunk(c, dk), _tiles(state))
    return outs[0], _untiles(outs[1]), (outs[2] if save_states else None)


def _backward(q, k, w, u, b, seg, qd, kd, c, states, d_o, d_final, *, stages, interpret):
    """The backward kernel: walks the chunks in reverse from the saved chunk-start states, one
    thread block per program and TILE columns of the state.

    Returns (dq, dk, dw, dũ in q's dtype; db_rows, db_cols, dqd, dkd float32
    [programs, length]; dc float32 [programs, chunks * d_k]; d_state float32
    [programs, d_k, d_v]), where the gradient of b is db_rows - db_cols. The blocks' partial
    sums (all but dũ and d_state, which are per column) are added here, in float32.
    """
    programs, length, dk = q.shape
    dv = u.shape[-1]
    dt = q.dtype
    n = length // CHUNK
    tiles = dv // TILE
    stages = min(stages, n)
    mma = compat.mma_transforms(dt)
    wgmma = plgpu.Layout.WGMMA

    def body(q_g, k_g, w_g, u_g, do_g, b_g, seg_g, qd_g, kd_g, c_g, st_g, dfin_g,
             dq_g, dk_g, dw_g, du_g, dbr_g, dbc_g, dqd_g, dkd_g, dc_g, ds0_g,
             q_r, k_r, w_r, u_r, do_r, b_r, seg_r, qd_r, kd_r, c_r,
             s16, ds16, a16, du16, cc16, out_k, vec_c, vec_k, bars):
        p, j = jax.lax.axis_index("program"), jax.lax.axis_index("tile")
        cols = pl.ds(j * TILE, TILE)
        ds = _load_state(dfin_g.at[p, j], interpret)
        order = lambda i: n - 1 - i
        ins = [(x, rows) for x, rows in ((q_g.at[p], CHUNK), (k_g.at[p], CHUNK),
                                          (w_g.at[p], CHUNK), (u_g.at[p, :, cols], CHUNK),
                                          (do_g.at[p, :, cols], CHUNK), (b_g.at[p], CHUNK),
                                          (seg_g.at[p], CHUNK), (qd_g.at[p], CHUNK),
                                          (kd_g.at[p], CHUNK), (c_g.at[p], dk))]
        fetch, wait = _ring(ins, (q_r, k_r, w_r, u_r, do_r, b_r, seg_r, qd_r, kd_r, c_r),
                            bars, stages, n, order)

        def step(i, slot, ds):
            chunk = order(i)
            rows_c, rows_k = pl.ds(chunk * CHUNK, CHUNK), pl.ds(chunk * dk, dk)
            q_s, k_s, w_s, do_s = q_r.at[slot], k_r.at[slot], w_r.at[slot], do_r.at[slot]
            bc = lambda vec_s, d: _rows(vec_s, (CHUNK, d), interpret)
            s = _load_state(st_g.at[p, j, rows_k], interpret)
            s16[...] = s.astype(dt)
            ds16[...] = ds.astype(dt)
            decay = _decay_matrix(b_r.at[slot], seg_r.at[slot], CHUNK, interpret)
            scores = compat.mma(q_s, compat.T(k_s), (CHUNK, CHUNK), interpret) * decay
            cc16[...] = scores.astype(dt)
            plgpu.commit_smem()
            _emit(jnp.sum(s * ds, axis=1), vec_k, dc_g.at[p, j, rows_k])
            upd = (compat.load(u_r.at[slot], wgmma, interpret).astype(_F32)
                   - compat.mma(w_s, s16, (CHUNK, TILE), interpret))  # U = Ũ - W S
            z = compat.mma(k_s, ds16, (CHUNK, TILE), interpret)  # K dS'
            _emit(jnp.sum(upd * z, axis=1), vec_c, dkd_g.at[p, j, rows_c])
            a16[...] = upd.astype(dt)
            d_u = (compat.mma(compat.T(cc16), do_s, (CHUNK, TILE), interpret)
                   + z * bc(kd_r.at[slot], TILE))
            du16[...] = d_u.astype(dt)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(du16, du_g.at[p, rows_c, cols])  # dŨ = dU
            d_scores = compat.mma(do_s, compat.T(a16), (CHUNK, CHUNK), interpret)  # dO Uᵀ
            grad = d_scores * scores  # dΓ ⊙ Γ: the gradient of each b_t - b_s
            _emit(jnp.sum(grad, axis=1), vec_c, dbr_g.at[p, j, rows_c])
            _emit(jnp.sum(grad, axis=0), vec_c, dbc_g.at[p, j, rows_c])
            cc16[...] = (d_scores * decay).astype(dt)
            plgpu.commit_smem()
            x = compat.mma(do_s, compat.T(s16), (CHUNK, dk), interpret)  # dO Sᵀ
            q_reg = compat.load(q_s, wgmma, interpret).astype(_F32)
            _emit(jnp.sum(x * q_reg, axis=1), vec_c, dqd_g.at[p, j, rows_c])
            d_q = compat.mma(cc16, k_s, (CHUNK, dk), interpret) + x * bc(qd_r.at[slot], dk)
            _emit(d_q.astype(dt), out_k, dq_g.at[p, j, rows_c])
            d_k = (compat.mma(compat.T(cc16), q_s, (CHUNK, dk), interpret)
                   + compat.mma(a16, compat.T(ds16), (CHUNK, dk), interpret)
                   * bc(kd_r.at[slot], dk))  # diag(kd) U dS'ᵀ
            _emit(d_k.astype(dt), out_k, dk_g.at[p, j, rows_c])
            d_w = -compat.mma(du16, compat.T(s16), (CHUNK, dk), interpret)
            _emit(d_w.astype(dt), out_k, dw_g.at[p, j, rows_c])
            do_reg = compat.load(do_s, wgmma, interpret).astype(_F32)
            a16[...] = (do_reg * bc(qd_r.at[slot], TILE)).astype(dt)  # diag(γ) dO
            plgpu.commit_smem()
            return (ds * _rows(c_r.at[slot], (dk, TILE), interpret)
                    + compat.mma(compat.T(q_s), a16, (dk, TILE), interpret)
                    - compat.mma(compat.T(w_s), du16, (dk, TILE), interpret))

        ds = _walk(n, stages, fetch, wait, step, ds)
        plgpu.wait_smem_to_gmem(0)
        ds0_g[p, j] = ds

    part = lambda *shape, dtype=_F32: jax.ShapeDtypeStruct((programs, tiles, *shape), dtype)
    out_type = [part(length, dk, dtype=dt)] * 3 + [jax.ShapeDtypeStruct(u.shape, dt)] + [
        part(length)] * 4 + [part(n * dk), part(dk, TILE)]
    scratch = _ring_buffers(stages, mma, dt, (dk, dk, dk, TILE, TILE)) + [
        plgpu.SMEM((dk, TILE), dt, transforms=mma), plgpu.SMEM((dk, TILE), dt, transforms=mma),
        plgpu.SMEM((CHUNK, TILE), dt, transforms=mma),
        plgpu.SMEM((CHUNK, TILE), dt, transforms=mma),
        plgpu.SMEM((CHUNK, CHUNK), dt, transforms=mma),
        plgpu.SMEM((CHUNK, dk), dt, transforms=mma),
        plgpu.SMEM((CHUNK,), _F32), plgpu.SMEM((dk,), _F32),
        plgpu.Barrier(num_arrivals=10, num_barriers=stages)]
    outs = compat.kernel(body, out_type=out_type, scratch_types=scratch, grid=(programs, tiles),
                         grid_names=("program", "tile"), interpret=interpret)(
        q, k, w, u, d_o, b, seg, qd, kd, _per_chunk(c, dk), states, _tiles(d_final))
    dq, dk_, dw, du, *vecs, ds0 = outs
    total = lambda x: x.astype(_F32).sum(1)
    return (total(dq).astype(dt), total(dk_).astype(dt), total(dw).astype(dt), du,
            *map(total, vecs), _untiles(ds0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(10, 11))
def _delta(q, k, w, u, b, seg, qd, kd, c, state, stages, interpret):
    o, final, _ = _forward(q, k, w, u, b, seg, qd, kd, c, state, save_states=False,
                           stages=stages[0], interpret=interpret)
    return o, final


def _delta_fwd(q, k, w, u, b, seg, qd, kd, c, state, stages, interpret):
    o, final, states = _forward(q, k, w, u, b, seg, qd, kd, c, state, save_states=True,
                                stages=stages[0], interpret=interpret)
    return (o, final), (q, k, w, u, b, seg, qd, kd, c, states)


def _delta_bwd(stages, interpret, residuals, cotangents):
    q, k, w, u, b, seg, qd, kd, c, states = residuals
    d_o, d_final = cotangents
    dq, dk, dw, du, dbr, dbc, dqd, dkd, dc, ds0 = _backward(
        q, k, w, u, b, seg, qd, kd, c, states, d_o.astype(q.dtype), d_final.astype(_F32),
        stages=stages[1], interpret=interpret)
    dc = dc.reshape(c.shape + (-1,)).sum(-1)  # c was broadcast over the state's rows
    return dq, dk, dw, du, dbr - dbc, jnp.zeros_like(seg), dqd, dkd, dc, ds0


_delta.defvjp(_delta_fwd, _delta_bwd)


@functools.partial(jax.jit, static_argnames=("chunk", "stages", "interpret"))
def gated_delta_rule(q: jax.Array, k: jax.Array, v: jax.Array, beta: jax.Array,
                     log_a: jax.Array, starts: jax.Array, state: jax.Array, *,
                     chunk: int = CHUNK, stages: int = 2, interpret: bool = False
                     ) -> tuple[jax.Array, jax.Array]:
    """The gated delta rule, S_t = e^{log_a_t} (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,
    o_t = q_tᵀ S_t, as Mosaic GPU kernels (Hopper), differentiable (custom VJP).

    q (already scaled), k: [batch, heads, length, d_k]; v: [batch, heads, length, d_v], all
    bfloat16 or all float16, d_k and d_v multiples of 64 (DeltaNet L2-normalises k, which keeps
    the solve well conditioned); beta, log_a: [batch, heads, length] (log_a in [-inf, 0], -inf
    a full reset; zeros for the plain delta rule); starts: bool [batch, length], True where a
    packed document starts; state: [batch, heads, d_k, d_v] float32 (the initial state, of the
    row's first document). Any length (padded to a multiple of ``chunk`` = 64 with β = 0
    positions, which leave the state unchanged). ``stages``: depth of the TMA ring (lowered
    where shared memory is short); ``interpret``: run in Mosaic GPU's interpreter (any
    backend). Returns (o [batch, heads, length, d_v] in q's dtype, final state float32).
    Raises ValueError for other dtypes, widths or shapes, or widths whose buffers do not fit
    in shared memory. Non-finite inputs are the caller's to guard (the op does).
    """
    name = "mosaic_gpu.gated_delta_rule"
    _check(name, q, k, v, state, chunk)
    batch, heads, length, dk = q.shape
    for arg, x in (("beta", beta), ("log_a", log_a)):
        if x.shape != (batch, heads, length):
            raise ValueError(f"{name}: {arg} must have shape [batch, heads, length] = "
                             f"{(batch, heads, length)}, got {tuple(x.shape)}")
    flat, row_starts = program_rows(name, starts, batch, heads, length)
    dv = v.shape[-1]
    programs = batch * heads
    b, seg, qd, kd, c = decay_factors(flat(log_a.astype(_F32)), row_starts, CHUNK)
    k_f = flat(k)
    # recomputed in the backward pass rather than storing its [C, C] intermediates per chunk
    w, u = jax.checkpoint(wy_factors)(k_f, flat(v), flat(beta.astype(_F32)), b, seg, qd)
    itemsize = jnp.dtype(q.dtype).itemsize
    depth = (_stages(dk, itemsize, stages, False), _stages(dk, itemsize, stages, True))
    o, final = _delta(flat(q), k_f, w, u, b, seg, qd, kd, c, state.reshape(programs, dk, dv),
                      depth, compat.interpret_params() if interpret else None)
    return o[:, :length].reshape(batch, heads, length, dv), final.reshape(state.shape)
