"""Which earlier contexts match the current one, by token equality: the pattern of the
hard-wired n-gram heads of "In-Context Language Learning: Architectures and Algorithms"
(Akyürek, Wang, Kim, Andreas), used by ``jaxlm.layers.NgramHeads`` and by the pointer head's
n-gram features (``jaxlm.layers.PointerSentinel``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.ops.checks import accepts_numpy
from jaxlm.ops.segments import document_ids



@accepts_numpy
def context_matches(tokens: jax.Array, orders: int, *, query_positions: jax.Array | None = None,
                    segment_ids: jax.Array | None = None) -> jax.Array:
    """Which earlier contexts match each query's last n tokens, stated for a pointer (pointing
    at position j reads what token j says: the token that followed the matched context).

    tokens: [batch, length] int; query_positions: [q_len] positions of the queries (default
    every position); segment_ids: [batch, length] ids of a packed row (a document is a
    maximal run of equal ids: [0, 1, 0] are three documents), or None.
    Returns bool [batch, orders, q_len, length]: entry (b, n - 1, q, j) is True when the n
    tokens ending at query position q equal the n tokens ending at position j - 1, all of them
    inside the document of q (respectively j). So a match of order n implies every lower
    order, and j = 0 (or a document start) matches nothing. It depends on token ids only
    through equality, so it keeps a model lexinvariant.
    """
    if tokens.ndim != 2:
        raise ValueError(f"context_matches: tokens must have shape [batch, length], "
                         f"got {tuple(tokens.shape)}")
    if orders < 1:
        raise ValueError(f"context_matches: orders must be >= 1, got {orders}")
    segment_ids = document_ids(segment_ids)
    length = tokens.shape[1]
    keys = jnp.arange(length)
    queries = keys if query_positions is None else query_positions

    def back(positions: jax.Array, shift: int, missing: int) -> jax.Array:
        """The token ``shift`` places before each position, ``missing`` where that falls
        before the row or the position's document: [batch, len(positions)]."""
        source = positions - shift
        valid = source >= 0
        source = jnp.maximum(source, 0)
        if segment_ids is not None:
            valid = valid & (segment_ids[:, source] == segment_ids[:, positions])
        return jnp.where(valid, tokens[:, source], missing)

    matched, out = None, []
    for n in range(orders):  # -1 and -2 never equal each other or a token id
        same = back(queries, n, -1)[:, :, None] == back(keys, n + 1, -2)[:, None, :]
        matched = same if matched is None else matched & same
        out.append(matched)
    return jnp.stack(out, axis=1)
