"""Mamba's selective scan ("Mamba: Linear-Time Sequence Modeling with Selective State Spaces")
as a Pallas kernel.

One program per batch row and block of channels; the state h [d_state, channels] stays on chip
along the whole sequence, chunk by chunk, each chunk's positions stepped in order:

    h_t = exp(Δ_t A) ⊙ h_{t-1} + B_t (Δ_t u_t)ᵀ,   y_t = C_tᵀ h_t

The backward kernel walks the chunks in reverse from saved chunk-start states, recomputing each
chunk's states (the recomputation Mamba's CUDA kernel does).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlm.kernels import chunked
from jaxlm.kernels.chunked import Recurrence


def selective_chunk(state, consts, xs):
    """One chunk: xs = (u [C, D], dt [C, D], B [C, N], C [C, N], starts [C, 1]);
    consts = (Aᵀ [N, D],); state hᵀ [N, D]. Returns (y [C, D], new state)."""
    (a_t,) = consts
    u, dt, b, c, starts = (x.astype(state.dtype) for x in xs)
    size = u.shape[0]
    x = dt * u  # [C, D]
    b_t, c_t = b.T, c.T  # [N, C]
    rows = jax.lax.broadcasted_iota(jnp.int32, u.shape, 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, b_t.shape, 1)
    # Row / column t picked by masked sums: Triton lowers no static slices of values.
    row = lambda m, t: jnp.sum(jnp.where(rows == t, m, 0), axis=0, keepdims=True)  # [1, D]
    col = lambda m, t: jnp.sum(jnp.where(cols == t, m, 0), axis=1, keepdims=True)  # [N, 1]
    positions = jax.lax.broadcasted_iota(jnp.int32, starts.shape, 0)
    y = jnp.zeros(u.shape, state.dtype)
    for t in range(size):  # unrolled: t is static
        reset = jnp.sum(jnp.where(positions == t, starts, 0), axis=0, keepdims=True)  # [1, 1]
        state = jnp.where(reset > 0, 0.0, state)
        state = jnp.exp(row(dt, t) * a_t) * state + col(b_t, t) * row(x, t)
        y = jnp.where(rows == t, jnp.sum(state * col(c_t, t), axis=0, keepdims=True), y)
    return y, state


@functools.partial(jax.jit, static_argnames=("chunk", "block_d", "interpret", "platform"))
def selective_scan(u: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array,
                   starts: jax.Array, state: jax.Array, *, chunk: int = 16,
                   block_d: int = 128, interpret: bool = False, platform: str | None = None
                   ) -> tuple[jax.Array, jax.Array]:
    """The selective scan without its D and z terms.

    u, dt: [batch, length, d_inner] (dt already positive); A: [d_inner, d_state];
    B, C: [batch, length, d_state] (one group); starts: bool [batch, length], True where a packed
    document starts (the state resets); state: [batch, d_inner, d_state], float32 or wider.
    Channels go to programs in blocks of ``block_d`` (d_inner is padded to a multiple). Any
    length works (padded with Δ = 0, which leaves the state unchanged).
    ``platform``: the backend to compile for (default: JAX's default; see
    :mod:`jaxlm.kernels.backend`); on a GPU the Mosaic GPU (Hopper) kernel takes the call
    where it can (:func:`_mosaic_gpu_takes`; it walks 64 channels per thread block whatever
    ``block_d``), else this kernel runs through the Triton lowering.
    Returns (y [batch, length, d_inner], final state), in the state's dtype.
    """
    if _mosaic_gpu_takes(u, dt, A, state, chunk, interpret, platform):
        from jaxlm.kernels.mosaic_gpu import selective_scan as mosaic_gpu

        return mosaic_gpu.selective_scan(u, dt, A, B, C, starts, state)
    batch, length, d_inner = u.shape
    d_state = A.shape[1]
    acc = state.dtype
    block_d = min(block_d, d_inner)
    n_blocks = -(-d_inner // block_d)
    padded, wide = -(-length // chunk) * chunk, n_blocks * block_d

    def per_block(x):  # [batch, length, d_inner] -> [batch * n_blocks, padded, block_d]
        x = jnp.pad(x.astype(acc), ((0, 0), (0, padded - length), (0, wide - d_inner)))
        x = x.reshape(batch, padded, n_blocks, block_d)
        return jnp.moveaxis(x, 2, 1).reshape(batch * n_blocks, padded, block_d)

    pad = lambda x: jnp.pad(x.astype(acc), ((0, 0), (0, padded - length), (0, 0)))
    seqs = (per_block(u), per_block(dt), pad(B), pad(C), pad(starts[..., None]))
    a_t = jnp.pad(A.astype(acc), ((0, wide - d_inner), (0, 0))).reshape(n_blocks, block_d, -1)
    a_t = jnp.tile(jnp.swapaxes(a_t, 1, 2), (batch, 1, 1))  # [batch * n_blocks, N, block_d]
    h = jnp.pad(state, ((0, 0), (0, wide - d_inner), (0, 0))).reshape(
        batch, n_blocks, block_d, d_state)
    h = jnp.swapaxes(h, 2, 3).reshape(batch * n_blocks, d_state, block_d)
    rec = Recurrence(selective_chunk, chunk, (1, 1, n_blocks, n_blocks, n_blocks), block_d,
                     "selective_scan", interpret, platform)
    y, h = chunked.run(rec, seqs, (a_t,), h)
    y = jnp.moveaxis(y.reshape(batch, n_blocks, padded, block_d), 1, 2)
    y = y.reshape(batch, padded, wide)[:, :length, :d_inner]
    h = jnp.swapaxes(h.reshape(batch, n_blocks, d_state, block_d), 2, 3)
    return y, h.reshape(batch, wide, d_state)[:, :d_inner]


def _mosaic_gpu_takes(u, dt, A, state, chunk, interpret, platform) -> bool:
    """Whether a call goes to the Mosaic GPU (Hopper) kernel
    (:func:`jaxlm.kernels.mosaic_gpu.selective_scan.selective_scan`): compiled (not
    interpreted) for a GPU by a JAX with Mosaic GPU, chunks of 16 (this kernel's default, the
    Mosaic GPU kernel's spacing of saved states), d_inner a multiple of 64, d_state a multiple
    of 8 up to 32, u and Δ in bfloat16, float16 or float32 and a float32 state. The q/k/v
    conditions of :func:`backend.mosaic_gpu_takes` do not apply: no matrix products here."""
    from jaxlm.kernels import backend

    if interpret or backend.target_platform(platform, interpret) != "gpu" or chunk != 16:
        return False
    from jaxlm.kernels.mosaic_gpu import selective_scan as mosaic_gpu

    return mosaic_gpu.takes(u, dt, A, state) and backend.mosaic_gpu_available()
