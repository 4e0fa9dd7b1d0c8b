"""Mamba's selective scan ("Mamba: Linear-Time Sequence Modeling with Selective State Spaces")
as Mosaic GPU kernels for Hopper, forward and backward: the contract of the portable kernel
:func:`jaxlm.kernels.selective_scan.selective_scan` (no D or z term; those are the op's).

    h_t = k_t exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_tᵀ,    y_t = h_t C_t

with h_t [d_inner, d_state] and k_t = 0 where a packed document starts (the state resets), 1
elsewhere. A is diagonal per channel, so there is no matrix product per step and no ``wgmma``:
the kernel is the form of Mamba's CUDA kernel, a sequential walk on the CUDA cores.

Design:

* Grid (batch, channel blocks of 64): one thread block (one warpgroup) per batch row and block
  of 64 channels keeps its state h [64, d_state] in float32 registers (WGMMA register layout:
  8 values a thread at d_state 16) along the whole row.
* A TMA ring (:func:`~jaxlm.kernels.mosaic_gpu.linear_attention._ring`, one barrier per stage)
  streams chunks of C = 16 positions: u, Δ [C, 64] (the block's channels, straight from the
  channels-last [batch, length, d_inner] arrays: no transposes in XLA) and B, C, k [C, d_state]
  (float32; k is the reset flag broadcast over d_state, so a reset is one multiply). Inside a
  chunk a ``fori_loop`` steps the positions in order, reading one row of each from shared
  memory (u, Δ in the row layout of h, B, C, k in its column layout); y_t = Σ_n h ⊙ C_t is a
  row sum, written as one row of a [C, 64] float32 buffer that a TMA copy stores per chunk.
* Backward: the forward saves the chunk-start states (every C = 16 positions, float32
  [batch, chunks, d_inner, d_state]); the backward kernel walks the chunks in reverse, first
  recomputing the chunk's C + 1 states into shared memory (17 x 64 x d_state float32: 68 KiB
  at d_state 16), then stepping back through them with the gradient of the state in
  registers (g = dh + dy_t C_tᵀ; dh ← k_t exp(Δ_t A) ⊙ g), emitting du, dΔ ([C, 64] rows,
  TMA-stored), dB, dC (the block's partial sums over its channels, [C, d_state] rows; XLA sums
  the blocks) and accumulating dA in registers (summed over batch rows in XLA). The gradient
  of the initial state is the final dh.

y and the gradients are float32 (the portable kernel's contract: outputs in the state's
dtype); u and Δ come in as they are (bfloat16, float16 or float32), B and C are cast to
float32 in XLA (O(length · d_state) bytes). Conditions (:func:`takes`): d_inner a multiple of
64, d_state a multiple of 8 up to 32 (the backward's shared memory), float32 state.

Untested on a device so far (only in Mosaic GPU's interpreter and through the CUDA lowering on
a CPU host): its speed against the XLA form is unknown.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxlm.kernels.mosaic_gpu import compat
from jaxlm.kernels.mosaic_gpu.compat import plgpu
from jaxlm.kernels.mosaic_gpu.gla_per_channel import _zeros
from jaxlm.kernels.mosaic_gpu.linear_attention import _ring, _walk
from jaxlm.ops.selective import finite_rate

CHUNK = 16  # positions a TMA copy brings; the saved states' spacing
BLOCK_D = 64  # channels per thread block (the rows of one WGMMA-layout tile)
MAX_D_STATE = 32
_F32 = jnp.float32
_INPUT_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)


def takes(u, dt, A, state) -> bool:
    """Whether these kernels take a call of these shapes and dtypes (not where it runs)."""
    d_inner, d_state = A.shape
    return (d_inner % BLOCK_D == 0 and d_state % 8 == 0 and d_state <= MAX_D_STATE
            and state.dtype == _F32 and u.dtype in _INPUT_DTYPES and dt.dtype in _INPUT_DTYPES)


def _row(ref, layout, interpret):
    """A row of a [C, n] SMEM ref (or [n] ref) in ``layout``, as float32."""
    return compat.load(ref, layout, interpret, optimized=False).astype(_F32)


def _bcast(vec, shape, dim):
    return jax.lax.broadcast_in_dim(vec, shape, [dim])


class _Step:
    """One position's operands from the ring's slot: rows of u, Δ (row layout: one value per
    channel) and B, C, k (column layout: one value per state index), broadcast to h's shape."""

    def __init__(self, refs, slot, t, shape, interpret):
        u_r, dt_r, b_r, c_r, k_r = refs
        rows, cols = compat.row_layout(), compat.col_layout()
        self.u = _row(u_r.at[slot, t], rows, interpret)
        self.dt = _row(dt_r.at[slot, t], rows, interpret)
        col = lambda r: _bcast(_row(r.at[slot, t], cols, interpret), shape, 1)
        self.b, self.c, self.keep = col(b_r), col(c_r), col(k_r)
        self.shape = shape

    def decay(self, a):
        """k_t exp(Δ_t A) [64, d_state]."""
        return self.keep * jnp.exp(_bcast(self.dt, self.shape, 0) * a)

    def x(self):
        return self.dt * self.u  # [64]


def _forward(u, dt, a, b, c, keep, state, *, save_states, stages, interpret):
    """u, dt: [batch, length, d_inner]; a: [d_inner, d_state] float32; b, c, keep:
    [batch, length, d_state] float32; length a multiple of CHUNK. Returns (y float32
    [batch, length, d_inner], final state, chunk-start states [batch, chunks, d_inner,
    d_state] or None)."""
    batch, length, d_inner = u.shape
    d_state = a.shape[1]
    n = length // CHUNK
    stages = min(stages, n)
    shape = (BLOCK_D, d_state)
    wg = plgpu.Layout.WGMMA

    def body(u_g, dt_g, a_g, b_g, c_g, k_g, s0_g, y_g, final_g, *rest):
        states_g = rest[0] if save_states else None
        u_r, dt_r, b_r, c_r, k_r, y_s, bars = rest[-7:]
        bi, blk = jax.lax.axis_index("batch"), jax.lax.axis_index("block")
        chans = pl.ds(blk * BLOCK_D, BLOCK_D)
        h = compat.load(s0_g.at[bi, chans], wg, interpret, optimized=False)
        a_blk = compat.load(a_g.at[chans], wg, interpret, optimized=False)
        ins = [(u_g.at[bi, :, chans], CHUNK), (dt_g.at[bi, :, chans], CHUNK),
               (b_g.at[bi], CHUNK), (c_g.at[bi], CHUNK), (k_g.at[bi], CHUNK)]
        refs = (u_r, dt_r, b_r, c_r, k_r)
        fetch, wait = _ring(ins, refs, bars, stages, n)

        def step(i, slot, h):
            if save_states:
                compat.store(states_g.at[bi, i, chans], h, interpret, optimized=False)
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # y_s is free again

            def position(t, h):
                s = _Step(refs, slot, t, shape, interpret)
                h = s.decay(a_blk) * h + _bcast(s.x(), shape, 0) * s.b
                compat.store(y_s.at[t], jnp.sum(h * s.c, axis=1), interpret, optimized=False)
                return h

            h = jax.lax.fori_loop(jnp.int32(0), jnp.int32(CHUNK), position, h)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(y_s, y_g.at[bi, pl.ds(i * CHUNK, CHUNK), chans])
            return h

        h = _walk(n, stages, fetch, wait, step, h)
        plgpu.wait_smem_to_gmem(0)
        compat.store(final_g.at[bi, chans], h, interpret, optimized=False)

    out_type = [jax.ShapeDtypeStruct((batch, length, d_inner), _F32),
                jax.ShapeDtypeStruct((batch, d_inner, d_state), _F32)]
    if save_states:
        out_type.append(jax.ShapeDtypeStruct((batch, n, d_inner, d_state), _F32))
    ring = lambda d, dtype: plgpu.SMEM((stages, CHUNK, d), dtype)
    scratch = [ring(BLOCK_D, u.dtype), ring(BLOCK_D, dt.dtype), ring(d_state, _F32),
               ring(d_state, _F32), ring(d_state, _F32), plgpu.SMEM((CHUNK, BLOCK_D), _F32),
               plgpu.Barrier(num_arrivals=5, num_barriers=stages)]
    outs = compat.kernel(body, out_type=out_type, scratch_types=scratch,
                         grid=(batch, d_inner // BLOCK_D), grid_names=("batch", "block"),
                         interpret=interpret)(u, dt, a, b, c, keep, state)
    return outs[0], outs[1], (outs[2] if save_states else None)


def _backward(u, dt, a, b, c, keep, states, d_y, d_final, *, stages, interpret):
    """The backward kernel: walks the chunks in reverse from the saved chunk-start states.

    Returns (du, dΔ float32 [batch, length, d_inner]; dA float32 [batch, d_inner, d_state];
    dB, dC float32 [batch, blocks, length, d_state] (partial sums over each block's channels);
    d_state float32 [batch, d_inner, d_state])."""
    batch, length, d_inner = u.shape
    d_state = a.shape[1]
    n = length // CHUNK
    blocks = d_inner // BLOCK_D
    stages = min(stages, n)
    shape = (BLOCK_D, d_state)
    wg = plgpu.Layout.WGMMA

    def body(u_g, dt_g, a_g, b_g, c_g, k_g, dy_g, st_g, dfin_g,
             du_g, ddt_g, da_g, db_g, dc_g, ds0_g,
             u_r, dt_r, b_r, c_r, k_r, dy_r, hs, du_s, ddt_s, db_s, dc_s, bars):
        bi, blk = jax.lax.axis_index("batch"), jax.lax.axis_index("block")
        chans = pl.ds(blk * BLOCK_D, BLOCK_D)
        dh = compat.load(dfin_g.at[bi, chans], wg, interpret, optimized=False)
        a_blk = compat.load(a_g.at[chans], wg, interpret, optimized=False)
        order = lambda i: n - 1 - i
        ins = [(u_g.at[bi, :, chans], CHUNK), (dt_g.at[bi, :, chans], CHUNK),
               (b_g.at[bi], CHUNK), (c_g.at[bi], CHUNK), (k_g.at[bi], CHUNK),
               (dy_g.at[bi, :, chans], CHUNK)]
        refs = (u_r, dt_r, b_r, c_r, k_r)
        fetch, wait = _ring(ins, refs + (dy_r,), bars, stages, n, order)
        state_at = lambda t: compat.load(hs.at[t], wg, interpret, optimized=False)

        def step(i, slot, carry):
            dh, da = carry
            chunk = order(i)
            rows = pl.ds(chunk * CHUNK, CHUNK)
            h = compat.load(st_g.at[bi, chunk, chans], wg, interpret, optimized=False)
            compat.store(hs.at[0], h, interpret, optimized=False)

            def recompute(t, h):
                s = _Step(refs, slot, t, shape, interpret)
                h = s.decay(a_blk) * h + _bcast(s.x(), shape, 0) * s.b
                compat.store(hs.at[t + 1], h, interpret, optimized=False)
                return h

            jax.lax.fori_loop(jnp.int32(0), jnp.int32(CHUNK), recompute, h)
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the output rows are free
            plgpu.commit_smem()

            def back(j, carry):
                dh, da = carry
                t = CHUNK - 1 - j
                s = _Step(refs, slot, t, shape, interpret)
                dy = _row(dy_r.at[slot, t], compat.row_layout(), interpret)
                g = dh + _bcast(dy, shape, 0) * s.c  # dL/dh_t
                h_t, h_prev = state_at(t + 1), state_at(t)
                x = s.x()
                dx = jnp.sum(g * s.b, axis=1)
                ga = g * s.decay(a_blk)  # dL/dh_{t-1}; also dL/d(ΔA) over h_{t-1}
                d_dta = ga * h_prev
                compat.store(dc_s.at[t], jnp.sum(h_t * _bcast(dy, shape, 0), axis=0),
                             interpret, optimized=False)
                compat.store(db_s.at[t], jnp.sum(g * _bcast(x, shape, 0), axis=0),
                             interpret, optimized=False)
                compat.store(du_s.at[t], dx * s.dt, interpret, optimized=False)
                compat.store(ddt_s.at[t], dx * s.u + jnp.sum(d_dta * a_blk, axis=1),
                             interpret, optimized=False)
                return ga, da + d_dta * _bcast(s.dt, shape, 0)

            dh, da = jax.lax.fori_loop(jnp.int32(0), jnp.int32(CHUNK), back, (dh, da))
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(du_s, du_g.at[bi, rows, chans])
            plgpu.copy_smem_to_gmem(ddt_s, ddt_g.at[bi, rows, chans])
            plgpu.copy_smem_to_gmem(db_s, db_g.at[bi, blk, rows])
            plgpu.copy_smem_to_gmem(dc_s, dc_g.at[bi, blk, rows])
            return dh, da

        dh, da = _walk(n, stages, fetch, wait, step, (dh, _zeros(shape, interpret)))
        plgpu.wait_smem_to_gmem(0)
        compat.store(da_g.at[bi, chans], da, interpret, optimized=False)
        compat.store(ds0_g.at[bi, chans], dh, interpret, optimized=False)

    spec = lambda *s: jax.ShapeDtypeStruct(s, _F32)
    out_type = [spec(batch, length, d_inner), spec(batch, length, d_inner),
                spec(batch, d_inner, d_state), spec(batch, blocks, length, d_state),
                spec(batch, blocks, length, d_state), spec(batch, d_inner, d_state)]
    ring = lambda d, dtype: plgpu.SMEM((stages, CHUNK, d), dtype)
    scratch = [ring(BLOCK_D, u.dtype), ring(BLOCK_D, dt.dtype), ring(d_state, _F32),
               ring(d_state, _F32), ring(d_state, _F32), ring(BLOCK_D, _F32),
               plgpu.SMEM((CHUNK + 1, BLOCK_D, d_state), _F32),
               plgpu.SMEM((CHUNK, BLOCK_D), _F32), plgpu.SMEM((CHUNK, BLOCK_D), _F32),
               plgpu.SMEM((CHUNK, d_state), _F32), plgpu.SMEM((CHUNK, d_state), _F32),
               plgpu.Barrier(num_arrivals=6, num_barriers=stages)]
    return compat.kernel(body, out_type=out_type, scratch_types=scratch,
                         grid=(batch, blocks), grid_names=("batch", "block"),
                         interpret=interpret)(u, dt, a, b, c, keep, d_y, states, d_final)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _scan(u, dt, a, b, c, keep, state, stages, interpret):
    y, final, _ = _forward(u, dt, a, b, c, keep, state, save_states=False, stages=stages,
                           interpret=interpret)
    return y, final


def _scan_fwd(u, dt, a, b, c, keep, state, stages, interpret):
    y, final, states = _forward(u, dt, a, b, c, keep, state, save_states=True, stages=stages,
                                interpret=interpret)
    return (y, final), (u, dt, a, b, c, keep, states)


def _scan_bwd(stages, interpret, residuals, cotangents):
    u, dt, a, b, c, keep, states = residuals
    d_y, d_final = cotangents
    du, ddt, da, db, dc, ds0 = _backward(u, dt, a, b, c, keep, states, d_y.astype(_F32),
                                         d_final.astype(_F32), stages=stages,
                                         interpret=interpret)
    return (du.astype(u.dtype), ddt.astype(dt.dtype), da.sum(0), db.sum(1), dc.sum(1),
            jnp.zeros_like(keep), ds0)


_scan.defvjp(_scan_fwd, _scan_bwd)


@functools.partial(jax.jit, static_argnames=("stages", "interpret", "detect_races"))
def selective_scan(u: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                   starts: jax.Array, state: jax.Array, *, stages: int = 3,
                   interpret: bool = False, detect_races: bool = False
                   ) -> tuple[jax.Array, jax.Array]:
    """The selective scan without its D and z terms, as Mosaic GPU kernels (Hopper),
    differentiable (custom VJP).

    u, dt: [batch, length, d_inner], bfloat16, float16 or float32 (dt already positive);
    A: [d_inner, d_state]; B, C: [batch, length, d_state] (one group); starts: bool
    [batch, length], True where a packed document starts (the state resets); state:
    [batch, d_inner, d_state] float32 (the initial state). d_inner a multiple of 64, d_state a
    multiple of 8 up to 32. Any length (padded to a multiple of 16 with Δ = 0, which leaves
    the state unchanged). ``stages``: depth of the TMA ring; ``interpret``: run in Mosaic GPU's
    interpreter (any backend), ``detect_races`` there checking every shared-memory access.
    Returns (y [batch, length, d_inner] float32, final state float32). Raises ValueError for
    other shapes or dtypes.
    """
    name = "mosaic_gpu.selective_scan"
    compat.check_available(name)
    batch, length, d_inner = u.shape
    if A.ndim != 2 or A.shape[0] != d_inner:
        raise ValueError(f"{name}: A must have shape [d_inner, d_state] with d_inner="
                         f"{d_inner}, got {tuple(A.shape)}")
    d_state = A.shape[1]
    for arg, x, want in (("dt", dt, u.shape), ("B", B, (batch, length, d_state)),
                         ("C", C, (batch, length, d_state)), ("starts", starts, (batch, length)),
                         ("state", state, (batch, d_inner, d_state))):
        if x.shape != want:
            raise ValueError(f"{name}: {arg} must have shape {want}, got {tuple(x.shape)}")
    if not takes(u, dt, A, state):
        raise ValueError(
            f"{name}: needs d_inner a multiple of {BLOCK_D}, d_state a multiple of 8 up to "
            f"{MAX_D_STATE}, u and dt of bfloat16, float16 or float32 and a float32 state; got "
            f"d_inner={d_inner}, d_state={d_state}, u {u.dtype}, dt {dt.dtype}, state "
            f"{state.dtype}")
    padded = -(-length // CHUNK) * CHUNK
    pad = lambda x: jnp.pad(x, ((0, 0), (0, padded - length), (0, 0)))
    keep = jnp.broadcast_to(jnp.logical_not(starts)[..., None], (batch, length, d_state))
    # A = -inf (a reset at every step) stays a reset, and the padding's Δ = 0 gives exp(0) = 1.
    y, final = _scan(pad(u), pad(dt), finite_rate(A, _F32), pad(B.astype(_F32)),
                     pad(C.astype(_F32)), jnp.pad(keep.astype(_F32), (
                         (0, 0), (0, padded - length), (0, 0)), constant_values=1.0),
                     state, stages, compat.interpret_params(detect_races) if interpret else None)
    return y[:, :length], final
