"""Every public op takes NumPy arrays as JAX's own functions do: its result from NumPy inputs
is a JAX array equal to its result from the same values as JAX arrays (to 1e-6: the NumPy
values enter the compiled program as constants, which XLA may fold), for each of its forms
(reference, xla)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import ops

B, L, H, D = 1, 5, 2, 2  # batch, length, heads, head dim: shapes as small as the ops allow


def rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def cplx(seed, *shape):
    return rand(seed, *shape) + 1j * rand(seed + 100, *shape)


QKV = (rand(0, B, L, H, D), rand(1, B, L, H, D), rand(2, B, L, H, D))
SEG = np.array([[0, 0, 1, 1, 1]])
LOG_G = -np.abs(rand(3, B, L, H, D))
BETA = 1 / (1 + np.exp(-rand(4, B, L, H)))
STATE = rand(5, B, H, D, D)
DT = np.array([0.1, 0.5])
A_DIAG = -np.exp(rand(6, 2, 3)) + 1j * rand(7, 2, 3)
LEGS_A, LEGS_B = ops.hippo_legs(4)
NPLR = (DT, -0.5 + 1j * rand(8, 2, 2), cplx(9, 2, 2), cplx(10, 2, 2), cplx(11, 2, 2))
A_BAR, B_BAR = (np.asarray(x) for x in ops.bilinear_lower(jnp.asarray(DT), LEGS_A, LEGS_B))
U = rand(12, B, L, 2)
LEGT = tuple(np.asarray(x) for x in ops.legt_zoh(3, 4.0))

# name -> (op, positional NumPy arguments, keyword arguments, impls); impls None: no impl=.
CASES = {
    "attention": (ops.attention, QKV, dict(segment_ids=SEG), ("reference", "xla")),
    "attention_mask": (ops.attention_mask, (np.arange(L), np.arange(L)),
                       dict(causal=True, window=None, q_segment=SEG, k_segment=SEG), None),
    "masked_attention": (ops.masked_attention, (*QKV, np.tril(np.ones((B, L, L), bool)), 0.5), {},
                         None),
    "apply_rope": (ops.apply_rope, (QKV[0], np.arange(L)[None]), {}, None),
    "causal_conv1d": (ops.causal_conv1d, (rand(13, B, L, 3), rand(14, 4, 3), rand(15, 3)),
                      dict(segment_ids=SEG), None),
    "causal_conv1d_step": (ops.causal_conv1d_step, (rand(16, B, 3, 3), rand(17, B, 3),
                                                    rand(14, 4, 3)), {}, None),
    "linear_attention": (ops.linear_attention, QKV, dict(chunk_size=2, segment_ids=SEG),
                         ("reference", "xla")),
    "gated_linear_attention": (ops.gated_linear_attention, (*QKV, LOG_G),
                               dict(chunk_size=2, segment_ids=SEG, initial_state=STATE),
                               ("reference", "xla")),
    "gated_linear_attention_step": (ops.gated_linear_attention_step,
                                    (STATE, *(x[:, 0] for x in QKV), LOG_G[:, 0]), {}, None),
    "delta_rule": (ops.delta_rule, (*QKV, BETA), dict(chunk_size=2, segment_ids=SEG),
                   ("reference", "xla")),
    "gated_delta_rule": (ops.gated_delta_rule, (*QKV, BETA, LOG_G[..., 0]),
                         dict(chunk_size=2, initial_state=STATE), ("reference", "xla")),
    "gated_delta_rule_step": (ops.gated_delta_rule_step,
                              (STATE, *(x[:, 0] for x in QKV), BETA[:, 0], LOG_G[:, 0, :, 0]),
                              {}, None),
    "selective_scan": (ops.selective_scan, (U, np.exp(rand(18, B, L, 2)) * 0.1,
                                            -np.exp(rand(19, 2, 3)), rand(20, B, L, 3),
                                            rand(21, B, L, 3), rand(22, 2)),
                       dict(segment_ids=SEG, chunk_size=2), ("reference", "xla")),
    "selective_scan_step": (ops.selective_scan_step,
                            (rand(23, B, 2, 3), U[:, 0], np.full((B, 2), 0.1),
                             -np.exp(rand(19, 2, 3)), rand(20, B, 1, 3), rand(21, B, 1, 3)), {},
                            None),
    "ssd": (ops.ssd, (QKV[0], np.full((B, L, H), 0.1), -np.ones(H), rand(24, B, L, 1, 3),
                      rand(25, B, L, 1, 3)), dict(chunk_size=2, D=np.ones(H), segment_ids=SEG),
            ("reference", "xla")),
    "diagonal_ssm": (ops.diagonal_ssm, (U, DT, A_DIAG, np.ones((2, 3)), cplx(26, 2, 3)), {},
                     ("reference", "xla")),
    "diagonal_ssm_step": (ops.diagonal_ssm_step, (np.zeros((B, 2, 3), complex), U[:, 0], DT,
                                                  A_DIAG, np.ones((2, 3)), cplx(26, 2, 3)), {},
                          None),
    "zoh": (ops.zoh, (DT, A_DIAG, np.ones((2, 3))), {}, None),
    "bilinear": (ops.bilinear, (DT, A_DIAG, np.ones((2, 3))), {}, None),
    "fft_causal_conv": (ops.fft_causal_conv, (U, rand(27, L, 2)), {}, None),
    "bilinear_lower": (ops.bilinear_lower, (DT, LEGS_A, LEGS_B), {}, None),
    "bilinear_nplr": (ops.bilinear_nplr, (DT, *NPLR[1:4]), {}, None),
    "krylov_kernel": (ops.krylov_kernel, (A_BAR, B_BAR, rand(28, 2, 4), L), {}, None),
    "s4_kernel": (ops.s4_kernel, (*NPLR, L), {}, None),
    "s4_ssm": (ops.s4_ssm, (U, *NPLR), dict(segment_ids=SEG), ("reference", "xla")),
    "dense_ssm": (ops.dense_ssm, (U, A_BAR, B_BAR, rand(28, 2, 4)), {}, ("reference", "xla")),
    "dense_ssm_step": (ops.dense_ssm_step, (np.zeros((B, 2, 4)), U[:, 0], A_BAR, B_BAR,
                                            rand(28, 2, 4)), {}, None),
    "block_sparse_attention": (ops.block_sparse_attention,
                               (*QKV, np.tril(np.ones((1, 1, 3, 3), bool))),
                               dict(block_size=2), ("reference", "xla")),
    "select_blocks": (ops.select_blocks, QKV[:2], dict(block_size=2, top_k=1), None),
    "lambda_attention": (ops.lambda_attention, QKV, dict(window=2, sink_tokens=1, block_size=2),
                         ("reference", "xla")),
    "routing_attention": (ops.routing_attention, (*QKV, rand(29, H, 2, D)),
                          dict(segment_ids=SEG), None),
    "update_centroids": (ops.update_centroids, (rand(29, H, 2, D), *QKV[:2]),
                         dict(decay=0.9), None),
    "context_matches": (ops.context_matches, (np.array([[1, 2, 1, 2, 3]]), 2),
                        dict(segment_ids=SEG), None),
    "pointer_sentinel_log_probs": (ops.pointer_sentinel_log_probs,
                                   (rand(30, B, L, 4), rand(31, B, L, L), rand(32, B, L),
                                    np.array([[0, 1, 2, 3, 0]]), np.tril(np.ones((B, L, L), bool))),
                                   {}, None),
    "segment_positions": (ops.segment_positions, (SEG,), {}, None),
    "cudnn_attention": (ops.cudnn_attention, QKV, dict(implementation="xla"), None),
    "lmu_memory": (ops.lmu_memory, (U, *LEGT), dict(segment_ids=SEG), ("reference", "xla")),
    "lmu_memory_step": (ops.lmu_memory_step, (rand(33, B, 2, 3), U[:, 0], *LEGT), {}, None),
    "rnn": (ops.rnn, ("lstm", rand(34, B, L, H, 4, D), rand(35, H, 4, D, D) * 0.3,
                      rand(36, H, 4, D)), dict(segment_ids=SEG), ("reference", "xla")),
    "rnn_step": (ops.rnn_step, ("gru", {"h": rand(37, B, H, D)}, rand(38, B, H, 3, D),
                                rand(39, H, 3, D, D) * 0.3), {}, None),
    "segment_starts": (ops.segment_starts, (SEG, B, L), {}, None),
    "document_ids": (ops.document_ids, (np.array([[0, 1, 0, 0, 2]]),), {}, None),
    "multi_granularity_pooling": (ops.multi_granularity_pooling, (*QKV, *QKV),
                                  dict(segment_size=2, segment_ids=SEG), ("reference", "xla")),
    "multi_granularity_pooling_step": (
        ops.multi_granularity_pooling_step,
        (jax.tree.map(np.asarray, ops.multi_granularity_pooling_state(B, H, D)),
         *(x[:, 0] for x in QKV + QKV)), dict(segment_size=2), None),
    "select_recycled_keys": (ops.select_recycled_keys,
                             (QKV[0][:, 0], QKV[1], np.arange(L), np.ones((B, L), bool), 0.5, 2),
                             {}, None),
    "dense_causal_conv1d": (ops.dense_causal_conv1d, (U, rand(40, 3, 2, 4)),
                            dict(segment_ids=SEG), None),
    "dense_causal_conv1d_step": (ops.dense_causal_conv1d_step,
                                 (rand(41, B, 2, 2), U[:, 0], rand(40, 3, 2, 4)), {}, None),
    "nearest_code": (ops.nearest_code, (QKV[0][:, :, 0], rand(42, 3, D)), {}, None),
    "quantize": (ops.quantize, (QKV[0][:, :, 0], rand(42, 3, D)), {}, None),
    "commitment_loss": (ops.commitment_loss, (QKV[0][:, :, 0], rand(42, 3, D)), {}, None),
    "codebook_ema_update": (ops.codebook_ema_update,
                            (np.ones(3), rand(42, 3, D), QKV[1][:, :, 0]), dict(decay=0.9), None),
    "vq_attention": (ops.vq_attention, (*(x[:, :, 0] for x in QKV), rand(42, 3, D), rand(43, 2)),
                     dict(segment_ids=SEG), ("reference", "xla")),
    "vq_attention_step": (
        ops.vq_attention_step,
        (jax.tree.map(np.asarray, ops.vq_attention_init_state(B, 2, 3, D, D)),
         *(x[:, 0, 0] for x in QKV), rand(42, 3, D), rand(43, 2)), {}, None),
    "recycled_attention": (ops.recycled_attention,
                           (QKV[0][:, 0], QKV[1], QKV[2], np.arange(L),
                            np.array([[[0, 3], [1, 4]]]), np.array(4), 0.5), {}, None),
    "landmark_attention": (ops.landmark_attention, QKV, dict(block_size=1, top_k=1,
                                                             segment_ids=SEG),
                           ("reference", "xla")),
    "insert_landmarks": (ops.insert_landmarks, (U, 2, np.ones(2)), {}, None),
    "remove_landmarks": (ops.remove_landmarks, (U, 2), {}, None),
    "infllm_attention": (ops.infllm_attention, QKV, dict(window=1, block_size=1, top_k=1,
                                                         n_repr=1, chunk_size=2),
                         ("reference", "xla")),
    "infllm_step": (ops.infllm_step, (*(x[:, 0] for x in QKV), {
        "k": QKV[1], "v": QKV[2], "scores": rand(40, B, L, H), "pos": np.array(3, np.int32)}),
        dict(window=1, block_size=1, top_k=1, n_repr=1), None),
    "combiner_attention": (ops.combiner_attention, QKV, dict(block_size=2, segment_ids=SEG),
                           ("reference", "xla")),
    "combiner_step": (ops.combiner_step, (*(x[:, 0] for x in QKV), jax.tree.map(
        np.asarray, ops.combiner_state(B, H, H, D, D, block_size=2, max_length=L))), {}, None),
    "core_context_attention": (ops.core_context_attention, QKV,
                               dict(group_size=2, window=2, segment_ids=SEG),
                               ("reference", "xla")),
    "core_context_step": (ops.core_context_step, (*(x[:, 0] for x in QKV), jax.tree.map(
        np.asarray, ops.core_context_state(B, H, H, D, D, group_size=2, window=2,
                                           max_length=L))),
        dict(group_size=2, window=2), None),
    "tensor_attention": (ops.tensor_attention, (*QKV, *QKV[1:]), dict(segment_ids=SEG),
                         ("reference", "xla")),
    "tensor_attention_step": (ops.tensor_attention_step,
                              (QKV[0][:, 0], *QKV[1:], *QKV[1:], np.ones((B, L), bool)), {},
                              None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_numpy_inputs_equal_jax_inputs(name):
    """Under one jit (one compile per op): the op on the NumPy arrays (closed over, so they
    reach the op as NumPy arrays) and on the same values as JAX arrays (the jit's arguments);
    sizes and flags stay Python values. A NumPy result would mean the op computed in NumPy."""
    op, args, kwargs, impls = CASES[name]
    calls = [dict(kwargs, **({} if impl is None else {"impl": impl})) for impl in impls or (None,)]
    leaves, treedef = jax.tree.flatten((args, calls))
    arrays = [i for i, x in enumerate(leaves) if isinstance(x, np.ndarray)]

    @jax.jit
    def both(values):
        swapped = list(leaves)
        for i, value in zip(arrays, values):
            swapped[i] = value
        jax_args, jax_calls = jax.tree.unflatten(treedef, swapped)
        outs = []
        for options, jax_options in zip(calls, jax_calls):
            from_numpy = op(*args, **options)
            assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(from_numpy)), name
            outs.append((from_numpy, op(*jax_args, **jax_options)))
        return outs

    for (from_numpy, from_jax), options in zip(both([jnp.asarray(leaves[i]) for i in arrays]),
                                               calls):
        for a, b in zip(jax.tree.leaves(from_numpy), jax.tree.leaves(from_jax)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=f"{name} {options}")


def test_every_public_op_is_covered():
    """Every op of jaxlm.ops that takes arrays is in CASES; the others take sizes only, and
    splash_attention's kernel (interpreted on CPU) needs length >= 128, too slow here."""
    sizes_only = {"hippo_legs", "hippo_legt", "nplr_legs", "lambda_mask", "legt_zoh",
                  "attention_plan", "rnn_initial_state", "multi_granularity_pooling_state",
                  "vq_attention_init_state", "infllm_cache", "combiner_state",
                  "core_context_state"}
    public = set(ops.__all__) - {"Impl", "splash_attention"} - sizes_only
    assert public == set(CASES)
