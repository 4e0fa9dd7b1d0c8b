"""Ring attention: causal softmax attention with the length split over a mesh axis ("Sequence
Parallelism: Long Sequence Training from System Perspective"; "Ring Attention with Blockwise
Transformers for Near-Infinite Context").

Each of P devices keeps its query chunk; key/value chunks travel round the ring with
``ppermute``, one hop per step, and each device folds every chunk it receives into an online
softmax (running max, normaliser and weighted sum), so no device ever holds more than two
key/value chunks. Bytes moved per device: (P - 1) chunks of k and v, growing with the length.
Chunks are contiguous, so under a causal mask the last device works P times as long as the
first (zig-zag assignment would balance it; not done here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from jaxlm.parallel.mesh import axis_size, batch_axes
from jaxlm.ops.checks import check_qkv, check_shape
from jaxlm.ops.segments import pad_segments
from jaxlm.parallel.sequence import pad_rows


def _fold(carry, q, k, v, q_pos, k_pos, q_seg, k_seg, scale):
    """One key/value chunk into the online softmax. q [b, m, kvh, g, d]; k, v [b, n, kvh, d]."""
    m_prev, l_prev, acc = carry
    scores = jnp.einsum("bmhgd,bnhd->bhgmn", q, k) * scale
    mask = k_pos[None, :] <= q_pos[:, None]  # [m, n]
    mask = mask[None] & (q_seg[:, :, None] == k_seg[:, None, :])  # [b, m, n]
    scores = jnp.where(mask[:, None, None], scores, -jnp.inf)
    m_new = jnp.maximum(m_prev, jnp.max(scores, axis=-1))
    safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.exp(scores - safe[..., None])
    correction = jnp.exp(jnp.where(jnp.isfinite(m_prev), m_prev, -jnp.inf) - safe)
    l_new = correction * l_prev + jnp.sum(p, axis=-1)
    acc = correction[..., None] * acc + jnp.einsum("bhgmn,bnhd->bhgmd", p, v)
    return m_new, l_new, acc


def ring_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mesh: Mesh,
                   axis: str = "sequence", segment_ids: jax.Array | None = None,
                   scale: float | None = None) -> jax.Array:
    """Causal attention equal to :func:`jaxlm.ops.attention` (``causal=True``), computed with
    the length split over ``mesh`` axis ``axis`` and the batch over (data, fsdp).

    q: [batch, length, heads, d]; k, v: [batch, length, kv_heads, d(v)]; segment_ids:
    [batch, length] or None. Lengths the axis size does not divide are padded at the end (a
    causal mask never lets a real query read a padded key). Returns [batch, length, heads, dv].
    """
    check_qkv("ring_attention", q, k, v)
    if segment_ids is not None:
        check_shape("ring_attention", "segment_ids", segment_ids, q.shape[:2], "[batch, length]")
    n = axis_size(mesh, axis)
    batch, length, heads, d = q.shape
    kv_heads = k.shape[2]
    scale = d ** -0.5 if scale is None else float(scale)
    padded = -(-length // n) * n
    q, k, v = (pad_rows(x, padded) for x in (q, k, v))
    seg = (jnp.zeros((batch, padded), jnp.int32) if segment_ids is None
           else pad_segments(segment_ids, padded))
    chunk = padded // n
    spec = P(batch_axes(mesh), axis)

    def body(q, k, v, seg):
        index = jax.lax.axis_index(axis)
        acc_dtype = jnp.promote_types(q.dtype, jnp.float32)
        b = q.shape[0]
        qg = q.reshape(b, chunk, kv_heads, heads // kv_heads, d).astype(acc_dtype)
        q_pos = index * chunk + jnp.arange(chunk)
        shape = (b, kv_heads, heads // kv_heads, chunk)
        carry = (jnp.full(shape, -jnp.inf, acc_dtype), jnp.zeros(shape, acc_dtype),
                 jnp.zeros(shape + (v.shape[-1],), acc_dtype))
        ring = [(i, (i + 1) % n) for i in range(n)]
        k_c, v_c, seg_c = k, v, seg
        for s in range(n):  # unrolled: n - 1 hops, each visible in the compiled program
            source = (index - s) % n  # whose chunk this device holds at step s
            k_pos = source * chunk + jnp.arange(chunk)
            carry = _fold(carry, qg, k_c.astype(acc_dtype), v_c.astype(acc_dtype), q_pos, k_pos,
                          seg, seg_c, scale)
            if s < n - 1:
                k_c, v_c, seg_c = (jax.lax.ppermute(x, axis, ring) for x in (k_c, v_c, seg_c))
        _, l, acc = carry
        out = acc / jnp.where(l > 0, l, 1.0)[..., None]  # [b, kvh, g, m, dv]
        out = jnp.moveaxis(out, 3, 1).reshape(b, chunk, heads, v.shape[-1])
        return out.astype(q.dtype)

    out = jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec, spec), out_specs=spec,
                        check_vma=False)(q, k, v, seg)
    return out[:, :length]
