"""Ring attention: causal softmax attention with the length split over a mesh axis ("Sequence
Parallelism: Long Sequence Training from System Perspective"; "Ring Attention with Blockwise
Transformers for Near-Infinite Context"; zig-zag balancing as in "TokenRing").

Each of P devices keeps its query chunk; key/value chunks travel round the ring with
``ppermute``, one hop per step, and each device folds every chunk it receives into an online
softmax (running max, normaliser and weighted sum), so no device ever holds more than two
key/value chunks. Bytes moved per device: (P - 1) chunks of k and v, growing with the length.
With a sliding window of w tokens only ceil((w - 1) / chunk) hops are needed, and when w - 1
keys fit in one chunk the single hop carries just the last w - 1 keys: a constant number of
bytes, however long the sequence.

A device's chunk is two halves, and a (query half, key half) block whose every pair is masked
is skipped (``lax.cond``), so the work follows the mask. With ``layout="contiguous"`` device i
holds positions [i·c, (i+1)·c) and, under a causal mask, device i computes 4i + 3 blocks: the
last one (4P - 1) / 3 times as many as the first. With ``layout="zigzag"`` the length is cut in 2P pieces and device i holds pieces
i and 2P-1-i: every device then computes the same number of blocks, for the price of moving
each device's q, k, v and output once more (two half-chunk ``ppermute``s each, in and out).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from jaxlm.parallel.mesh import axis_size, batch_axes
from jaxlm.ops.checks import check_qkv, check_shape
from jaxlm.ops.segments import document_ids, pad_segments
from jaxlm.parallel.sequence import pad_rows

LAYOUTS = ("contiguous", "zigzag")


def _fold(carry, q, k, v, q_pos, k_pos, q_seg, k_seg, scale, window):
    """One key/value block into the online softmax. q [b, m, kvh, g, d]; k, v [b, n, kvh, d]."""
    m_prev, l_prev, acc = carry
    scores = jnp.einsum("bmhgd,bnhd->bhgmn", q, k) * scale
    mask = k_pos[None, :] <= q_pos[:, None]  # [m, n]
    if window is not None:
        mask &= q_pos[:, None] - k_pos[None, :] < window
    mask = mask[None] & (q_seg[:, :, None] == k_seg[:, None, :])  # [b, m, n]
    scores = jnp.where(mask[:, None, None], scores, -jnp.inf)
    m_new = jnp.maximum(m_prev, jnp.max(scores, axis=-1))
    safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.exp(scores - safe[..., None])
    correction = jnp.exp(jnp.where(jnp.isfinite(m_prev), m_prev, -jnp.inf) - safe)
    l_new = correction * l_prev + jnp.sum(p, axis=-1)
    acc = correction[..., None] * acc + jnp.einsum("bhgmn,bnhd->bhgmd", p, v)
    return m_new, l_new, acc


def half_starts(device, n: int, half: int, layout: str):
    """First positions of the two halves that ``device`` (of ``n``) holds, each ``half`` long.
    Works on Python ints and on traced indices alike."""
    if layout == "contiguous":
        return device * 2 * half, device * 2 * half + half
    return device * half, (2 * n - 1 - device) * half


def block_visible(q_start, k_start, half: int, window: int | None, k_len: int | None = None):
    """Whether any query of the half starting at ``q_start`` may read any of the ``k_len``
    (default ``half``) keys from ``k_start`` (causal, and within ``window`` when given)."""
    k_len = half if k_len is None else k_len
    visible = k_start <= q_start + half - 1
    if window is not None:
        visible = visible & (q_start - (k_start + k_len - 1) < window)
    return visible


def ring_hops(n: int, chunk: int, window: int | None, layout: str) -> int:
    """Hops a key/value chunk makes: n - 1, or fewer when a window makes far chunks unread."""
    if window is None or layout != "contiguous":
        return n - 1
    return min(n - 1, -(-(window - 1) // chunk))


def window_tail(n: int, chunk: int, window: int | None, layout: str) -> int | None:
    """When a window reaches back into the previous device's chunk only, the number of its last
    keys that are ever read (window - 1): the one hop sends just those, whatever the length.
    None otherwise (whole chunks travel)."""
    if layout == "contiguous" and window is not None and n > 1 and 1 < window <= chunk + 1:
        return window - 1
    return None


def key_blocks(source, hop: int, n: int, half: int, layout: str, tail: int | None):
    """The key blocks folded at ``hop`` from ``source``'s chunk: (first position, length,
    slice of what arrived)."""
    if tail is not None and hop > 0:
        return [((source + 1) * 2 * half - tail, tail, slice(None))]
    starts = half_starts(source, n, half, layout)
    return [(starts[0], half, slice(0, half)), (starts[1], half, slice(half, 2 * half))]


def blocks_per_device(n: int, half: int, window: int | None = None,
                      layout: str = "contiguous") -> list[int]:
    """How many (query half, key block) pairs each device computes: the work balance."""
    tail = window_tail(n, 2 * half, window, layout)
    counts = []
    for device in range(n):
        count = 0
        for s in range(ring_hops(n, 2 * half, window, layout) + 1):
            count += sum(bool(block_visible(qs, ks, half, window, k_len))
                         for qs in half_starts(device, n, half, layout)
                         for ks, k_len, _ in key_blocks((device - s) % n, s, n, half, layout,
                                                        tail))
        counts.append(count)
    return counts


def _zigzag_moves(n: int) -> tuple[list, list]:
    """(source, destination) device pairs that send each device's first half (piece 2i) and
    its second half (piece 2i+1) to the device that holds that piece in the zig-zag layout."""
    holder = lambda piece: piece if piece < n else 2 * n - 1 - piece
    return ([(i, holder(2 * i)) for i in range(n)], [(i, holder(2 * i + 1)) for i in range(n)])


def _to_zigzag(x: jax.Array, axis: str, n: int, index) -> jax.Array:
    """Inside shard_map: this device's contiguous chunk [b, chunk, ...] -> its zig-zag chunk.
    Two ppermutes of half a chunk each; of the two pieces a device receives (i and 2n-1-i)
    exactly one is even."""
    half = x.shape[1] // 2
    firsts, seconds = _zigzag_moves(n)
    even = jax.lax.ppermute(x[:, :half], axis, firsts)
    odd = jax.lax.ppermute(x[:, half:], axis, seconds)
    even_first = index % 2 == 0  # piece i, this device's first, is even
    return jnp.concatenate([jnp.where(even_first, even, odd), jnp.where(even_first, odd, even)],
                           1)


def _from_zigzag(x: jax.Array, axis: str, n: int, index) -> jax.Array:
    """The inverse of :func:`_to_zigzag`."""
    half = x.shape[1] // 2
    firsts, seconds = _zigzag_moves(n)
    even_first = index % 2 == 0
    even = jnp.where(even_first, x[:, :half], x[:, half:])
    odd = jnp.where(even_first, x[:, half:], x[:, :half])
    back = lambda moves: [(dst, src) for src, dst in moves]
    return jnp.concatenate([jax.lax.ppermute(even, axis, back(firsts)),
                            jax.lax.ppermute(odd, axis, back(seconds))], 1)


def ring_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mesh: Mesh,
                   axis: str = "sequence", segment_ids: jax.Array | None = None,
                   scale: float | None = None, window: int | None = None,
                   layout: str = "contiguous") -> jax.Array:
    """Causal attention equal to :func:`jaxlm.ops.attention` (``causal=True``, same ``window``),
    computed with the length split over ``mesh`` axis ``axis`` and the batch over (data, fsdp).

    q: [batch, length, heads, d]; k, v: [batch, length, kv_heads, d(v)]; segment_ids:
    [batch, length] or None (a document is a maximal run of equal ids, numbered over the whole
    row before the split); layout: "contiguous" or "zigzag" (see the module docstring).
    Lengths that 2 x the axis size does not divide are padded at the end (a causal mask never
    lets a real query read a padded key). Returns [batch, length, heads, dv].
    """
    check_qkv("ring_attention", q, k, v)
    if segment_ids is not None:
        check_shape("ring_attention", "segment_ids", segment_ids, q.shape[:2], "[batch, length]")
    if layout not in LAYOUTS:
        raise ValueError(f"ring_attention: layout={layout!r}; expected one of {LAYOUTS}")
    if window is not None and window < 1:
        raise ValueError(f"ring_attention: window={window}; expected a positive int or None")
    n = axis_size(mesh, axis)
    batch, length, heads, d = q.shape
    kv_heads = k.shape[2]
    scale = d ** -0.5 if scale is None else float(scale)
    padded = -(-length // (2 * n)) * 2 * n
    q, k, v = (pad_rows(x, padded) for x in (q, k, v))
    seg = (jnp.zeros((batch, padded), jnp.int32) if segment_ids is None  # whole-row numbering
           else pad_segments(document_ids(segment_ids), padded))
    chunk = padded // n
    half = chunk // 2
    hops = ring_hops(n, chunk, window, layout)
    tail = window_tail(n, chunk, window, layout)
    spec = P(batch_axes(mesh), axis)

    def body(q, k, v, seg):
        index = jax.lax.axis_index(axis)
        if layout == "zigzag":
            q, k, v, seg = (_to_zigzag(x, axis, n, index) for x in (q, k, v, seg))
        acc_dtype = jnp.promote_types(q.dtype, jnp.float32)
        b = q.shape[0]
        qg = q.reshape(b, 2, half, kv_heads, heads // kv_heads, d).astype(acc_dtype)
        q_starts = half_starts(index, n, half, layout)
        shape = (b, kv_heads, heads // kv_heads, half)
        carries = [(jnp.full(shape, -jnp.inf, acc_dtype), jnp.zeros(shape, acc_dtype),
                    jnp.zeros(shape + (v.shape[-1],), acc_dtype)) for _ in range(2)]
        ring = [(i, (i + 1) % n) for i in range(n)]
        q_seg = seg.reshape(b, 2, half)
        k_c, v_c, seg_c = k, v, seg
        for s in range(hops + 1):  # unrolled: each hop visible in the compiled program
            for k_start, k_len, part in key_blocks((index - s) % n, s, n, half, layout, tail):
                for a in range(2):
                    fold = functools.partial(
                        _fold, q=qg[:, a], k=k_c[:, part].astype(acc_dtype),
                        v=v_c[:, part].astype(acc_dtype), q_pos=q_starts[a] + jnp.arange(half),
                        k_pos=k_start + jnp.arange(k_len), q_seg=q_seg[:, a],
                        k_seg=seg_c[:, part], scale=scale, window=window)
                    carries[a] = jax.lax.cond(
                        block_visible(q_starts[a], k_start, half, window, k_len),
                        lambda carry: fold(carry), lambda carry: carry, carries[a])
            if s < hops:
                send = (k_c, v_c, seg_c) if tail is None else (k[:, -tail:], v[:, -tail:],
                                                                  seg[:, -tail:])
                k_c, v_c, seg_c = (jax.lax.ppermute(x, axis, ring) for x in send)
        outs = []
        for _, l, acc in carries:
            out = acc / jnp.where(l > 0, l, 1.0)[..., None]  # [b, kvh, g, half, dv]
            outs.append(jnp.moveaxis(out, 3, 1).reshape(b, half, heads, v.shape[-1]))
        out = jnp.concatenate(outs, 1).astype(q.dtype)
        return _from_zigzag(out, axis, n, index) if layout == "zigzag" else out

    out = jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec, spec), out_specs=spec,
                        check_vma=False)(q, k, v, seg)
    return out[:, :length]
