"""Pure functions on arrays: no parameters, no Flax. Each op offers ``impl=`` forms."""

from jaxlm.ops.attention import attention, attention_mask, masked_attention
from jaxlm.ops.attention_backends import attention_plan, cudnn_attention, splash_attention
from jaxlm.ops.checks import Impl
from jaxlm.ops.combiner import combiner_attention, combiner_state, combiner_step
from jaxlm.ops.conv import (causal_conv1d, causal_conv1d_step, dense_causal_conv1d,
                             dense_causal_conv1d_step)
from jaxlm.ops.core_context import (core_context_attention, core_context_state,
                                   core_context_step)
from jaxlm.ops.delta_rule import delta_rule, gated_delta_rule, gated_delta_rule_step
from jaxlm.ops.linear_attention import (gated_linear_attention, gated_linear_attention_step,
                                       linear_attention)
from jaxlm.ops.ngram import context_matches
from jaxlm.ops.pointer import pointer_sentinel_log_probs
from jaxlm.ops.rope import apply_rope
from jaxlm.ops.segments import document_ids, segment_positions, segment_starts
from jaxlm.ops.selective import selective_scan, selective_scan_step, ssd
from jaxlm.ops.infllm import infllm_attention, infllm_cache, infllm_step
from jaxlm.ops.landmark_attention import (insert_landmarks, landmark_attention,
                                          remove_landmarks)
from jaxlm.ops.hippo import hippo_legs, hippo_legt, nplr_legs
from jaxlm.ops.lmu import legt_zoh, lmu_memory, lmu_memory_step
from jaxlm.ops.pooling import (multi_granularity_pooling, multi_granularity_pooling_state,
                               multi_granularity_pooling_step)
from jaxlm.ops.recycled_attention import recycled_attention, select_recycled_keys
from jaxlm.ops.rnn import rnn, rnn_initial_state, rnn_step
from jaxlm.ops.routing_attention import routing_attention, update_centroids
from jaxlm.ops.s4 import (bilinear_lower, bilinear_nplr, dense_ssm, dense_ssm_step, krylov_kernel,
                          s4_kernel, s4_ssm)
from jaxlm.ops.sparse_attention import (block_sparse_attention, lambda_attention, lambda_mask,
                                        select_blocks)
from jaxlm.ops.tensor_attention import tensor_attention, tensor_attention_step
from jaxlm.ops.ssm import bilinear, diagonal_ssm, diagonal_ssm_step, fft_causal_conv, zoh
from jaxlm.ops.vq_attention import (codebook_ema_update, commitment_loss, nearest_code, quantize,
                                   vq_attention, vq_attention_init_state, vq_attention_step)

__all__ = [
    "Impl", "apply_rope", "attention", "attention_mask", "attention_plan", "bilinear",
    "bilinear_lower", "bilinear_nplr", "block_sparse_attention", "causal_conv1d",
    "causal_conv1d_step", "codebook_ema_update", "combiner_attention", "combiner_state",
    "combiner_step", "commitment_loss", "context_matches", "core_context_attention",
    "core_context_state", "core_context_step", "cudnn_attention", "delta_rule",
    "dense_causal_conv1d", "dense_causal_conv1d_step", "dense_ssm", "dense_ssm_step",
    "diagonal_ssm", "diagonal_ssm_step", "document_ids", "fft_causal_conv", "gated_delta_rule",
    "gated_delta_rule_step", "gated_linear_attention", "gated_linear_attention_step",
    "hippo_legs", "hippo_legt", "infllm_attention", "infllm_cache", "infllm_step",
    "insert_landmarks", "krylov_kernel", "lambda_attention", "lambda_mask",
    "landmark_attention", "legt_zoh", "linear_attention", "lmu_memory", "lmu_memory_step",
    "masked_attention", "multi_granularity_pooling", "multi_granularity_pooling_state",
    "multi_granularity_pooling_step", "nearest_code", "nplr_legs",
    "pointer_sentinel_log_probs", "quantize", "recycled_attention", "remove_landmarks", "rnn",
    "rnn_initial_state", "rnn_step", "routing_attention", "s4_kernel", "s4_ssm",
    "segment_positions", "segment_starts", "select_blocks", "select_recycled_keys",
    "selective_scan", "selective_scan_step", "splash_attention", "ssd", "tensor_attention",
    "tensor_attention_step", "update_centroids", "vq_attention", "vq_attention_init_state",
    "vq_attention_step", "zoh",
]
