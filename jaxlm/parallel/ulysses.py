"""Head-split sequence parallelism for softmax attention ("DeepSpeed Ulysses: System
Optimizations for Enabling Training of Extreme Long Sequence Transformer Models").

The length is split over the mesh axis ``axis`` (P devices). An all-to-all turns each device's
[length / P, heads] share of q, k and v into [length, heads / P]: whole sequences for a slice of
the heads. Each device runs ordinary attention (any ``impl`` of :func:`jaxlm.ops.attention`) on
its heads, and a second all-to-all turns the output back. Bytes moved per device: about
4 · length · heads · d / P (q, k, v and the output, each (P - 1) / P of its share): they grow
with the length but shrink with P, unlike ring attention's, which do not shrink. The head count
(the key/value head count, else the keys are repeated to one per query head) must be a multiple
of P.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from jaxlm.ops.attention import attention
from jaxlm.ops.checks import check_qkv, check_shape
from jaxlm.ops.segments import document_ids, pad_segments
from jaxlm.parallel.mesh import axis_size, batch_axes
from jaxlm.parallel.sequence import pad_rows


def ulysses_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mesh: Mesh,
                      axis: str = "sequence", segment_ids: jax.Array | None = None,
                      scale: float | None = None, window: int | None = None,
                      impl: str = "auto") -> jax.Array:
    """Causal attention equal to :func:`jaxlm.ops.attention` (``causal=True``, same ``window``
    and ``impl``), with the length split over ``mesh`` axis ``axis`` and the batch over
    (data, fsdp).

    q: [batch, length, heads, d]; k, v: [batch, length, kv_heads, d(v)]; segment_ids:
    [batch, length] or None (a document is a maximal run of equal ids). Lengths the axis size does not divide are padded at the end.
    Returns [batch, length, heads, dv].
    """
    check_qkv("ulysses_attention", q, k, v)
    if segment_ids is not None:
        check_shape("ulysses_attention", "segment_ids", segment_ids, q.shape[:2],
                    "[batch, length]")
    n = axis_size(mesh, axis)
    batch, length, heads, _ = q.shape
    if heads % n:
        raise ValueError(f"ulysses_attention: heads={heads} must be a multiple of the {axis!r} "
                         f"axis size {n}; use ring attention or change the head count")
    if k.shape[2] % n:  # grouped keys that do not split: one key/value head per query head
        k, v = (jnp.repeat(x, heads // k.shape[2], axis=2) for x in (k, v))
    padded = -(-length // n) * n
    q, k, v = (pad_rows(x, padded) for x in (q, k, v))
    seg = document_ids(segment_ids)  # numbered over the whole row before the split
    seg = None if seg is None else pad_segments(seg, padded)
    spec = P(batch_axes(mesh), axis)

    def to_heads(x):  # [b, L/P, h, d] -> [b, L, h/P, d]
        return jax.lax.all_to_all(x, axis, split_axis=2, concat_axis=1, tiled=True)

    def body(q, k, v, seg):
        if seg is not None:
            seg = jax.lax.all_gather(seg, axis, axis=1, tiled=True)
        out = attention(to_heads(q), to_heads(k), to_heads(v), causal=True, window=window,
                        segment_ids=seg, scale=scale, impl=impl)
        return jax.lax.all_to_all(out, axis, split_axis=1, concat_axis=2, tiled=True)

    out = jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec, None if seg is None else spec),
                        out_specs=spec, check_vma=False)(q, k, v, seg)
    return out[:, :length]
