"""The LongVQ mixer: MEGA's gated attention beside an SSM, its keys vector-quantised to a
codebook so that attention is linear in length ("LongVQ: Long Sequence Modeling with Vector
Quantization on Structured Memory")."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.registry import register_mixer
from jaxlm.layers.ssm import DiagonalSSM
from jaxlm.ops.checks import check_positive_fields
from jaxlm.ops.vq_attention import (codebook_ema_update, commitment_loss, vq_attention,
                                    vq_attention_init_state, vq_attention_step)


@dataclasses.dataclass(frozen=True)
class LongVQConfig:
    """Options of the ``longvq`` mixer: shared query/key width ``qk_dim``, value width
    ``v_dim`` (0: d_model), ``codebook_size`` codewords updated by moving averages of decay
    ``codebook_decay``, a local ``window`` of tokens read with exact quantised keys and a
    relative bias, the commitment loss weight ``commitment`` and the SSM's ``d_state``."""
    qk_dim: int = 32
    v_dim: int = 0
    codebook_size: int = 64
    window: int = 8
    codebook_decay: float = 0.99
    commitment: float = 1e-4
    d_state: int = 16
    impl: str = "auto"

    def __post_init__(self):
        check_positive_fields("longvq", self, ("qk_dim", "codebook_size", "d_state"))
        if self.v_dim < 0 or self.window < 0 or self.commitment < 0:
            raise ValueError(f"longvq.v_dim, window and commitment must be >= 0, got "
                             f"{self.v_dim}, {self.window} and {self.commitment}")
        if not 0.0 <= self.codebook_decay < 1.0:
            raise ValueError(f"longvq.codebook_decay must be in [0, 1), got "
                             f"{self.codebook_decay}")


class Codebook(nnx.Variable):
    """LongVQ's codewords and their moving-average statistics: state updated in training,
    not a trained parameter (the optimizer never sees it)."""


class LongVQ(nnx.Module):
    """MEGA's single-head gated attention ("Mega: Moving Average Equipped Gated Attention") with
    vector-quantised keys, as LongVQ defines its token mixer. x: [batch, length, d_model]:

        x' = SiLU(SSM(x) + D ⊙ x)                 (S4D diagonal SSM: the structured memory)
        z = SiLU(W_z x'),  q = γ_q ⊙ z + β_q,  k = γ_k ⊙ z + β_k        ([qk_dim])
        v = SiLU(W_v x)                                                    ([v_dim])
        o = VQAttention(q / √qk_dim, k, v)        (:func:`jaxlm.ops.vq_attention`)
        r = SiLU(W_r x'),  h = SiLU(W_h x' + U_h (r ⊙ o)),  φ = σ(W_φ x')
        y = φ ⊙ h + (1 − φ) ⊙ x

    VQAttention quantises k to the nearest of ``codebook_size`` codewords (straight-through),
    reads the last ``window`` tokens exactly with a learned relative bias and every earlier one
    through the codebook's per-code summed values, so the cost is linear in length. In training
    mode (``model.train()``: ``deterministic=False``) each call moves the codebook one
    moving-average step toward the keys (:func:`jaxlm.ops.codebook_ema_update`) and sows the
    commitment loss ``commitment`` · mean ||k − sg(c_z)||² as an ``nnx.Intermediate``
    ``aux_loss`` (the decoder LM adds it to the training loss). The ``step`` state holds the
    SSM state, the per-code sums and counts and the window: O(codebook_size · v_dim) memory
    whatever the length.
    """

    sows_aux_loss = True  # the decoder LM collects the commitment loss in training

    def __init__(self, d_model: int, *, qk_dim: int = 32, v_dim: int = 0,
                 codebook_size: int = 64, window: int = 8, codebook_decay: float = 0.99,
                 commitment: float = 1e-4, d_state: int = 16, impl: str = "auto",
                 rngs: nnx.Rngs):
        LongVQConfig(qk_dim, v_dim, codebook_size, window, codebook_decay, commitment, d_state,
                     impl)
        v_dim = v_dim or d_model
        self.d_model, self.qk_dim, self.v_dim, self.window = d_model, qk_dim, v_dim, window
        self.codebook_decay, self.commitment, self.impl = codebook_decay, commitment, impl
        self.deterministic = True  # False (model.train()): the codebook learns
        self.ssm = DiagonalSSM(d_model, d_state, rngs=rngs)
        self.skip = nnx.Param(jnp.ones((d_model,)))
        self.z_proj = nnx.Linear(d_model, qk_dim, rngs=rngs)
        key = rngs.params()
        self.qk_scale = nnx.Param(1.0 + 0.02 * jax.random.normal(key, (2, qk_dim)))
        self.qk_offset = nnx.Param(jnp.zeros((2, qk_dim)))
        self.v_proj = nnx.Linear(d_model, v_dim, rngs=rngs)
        self.r_proj = nnx.Linear(d_model, v_dim, rngs=rngs)
        self.h_proj = nnx.Linear(d_model, d_model, rngs=rngs)
        self.o_proj = nnx.Linear(v_dim, d_model, use_bias=False, rngs=rngs)
        self.gate = nnx.Linear(d_model, d_model, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((window,)))
        codebook = jax.random.normal(jax.random.fold_in(key, 1), (codebook_size, qk_dim))
        self.counts = Codebook(jnp.ones((codebook_size,)))
        self.sums = Codebook(codebook)
        self.codebook = Codebook(jnp.array(codebook, copy=True))  # its own buffer (donated)

    def _projections(self, x, x_mem):
        """q (scaled), k, v, r from x and the SSM branch x'."""
        z = nnx.silu(self.z_proj(x_mem))
        scale, offset = self.qk_scale[...].astype(z.dtype), self.qk_offset[...].astype(z.dtype)
        q = (z * scale[0] + offset[0]) / math.sqrt(self.qk_dim)
        k = z * scale[1] + offset[1]
        return q, k, nnx.silu(self.v_proj(x)), nnx.silu(self.r_proj(x_mem))

    def _output(self, x, x_mem, r, o):
        h = nnx.silu(self.h_proj(x_mem) + self.o_proj(r * o))
        phi = nnx.sigmoid(self.gate(x_mem))
        return phi * h + (1 - phi) * x

    def _memory(self, x, ssm_out):
        return nnx.silu(ssm_out.astype(x.dtype) + self.skip[...].astype(x.dtype) * x)

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        x_mem = self._memory(x, self.ssm(x, segment_ids=segment_ids))
        q, k, v, r = self._projections(x, x_mem)
        codebook = self.codebook[...].astype(x.dtype)
        o = vq_attention(q, k, v, codebook, self.bias[...].astype(x.dtype),
                         segment_ids=segment_ids, impl=self.impl)
        if not self.deterministic:
            if self.commitment:
                self.sow(nnx.Intermediate, "aux_loss",
                         self.commitment * commitment_loss(k, codebook))
            counts, sums, new = codebook_ema_update(self.counts[...], self.sums[...], k,
                                                    decay=self.codebook_decay)
            self.counts[...], self.sums[...], self.codebook[...] = counts, sums, new
        return self._output(x, x_mem, r, o)

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, Any]:
        return {"ssm": self.ssm.init_state(batch_size, dtype),
                "attention": vq_attention_init_state(batch_size, self.window,
                                                     self.codebook[...].shape[0], self.qk_dim,
                                                     self.v_dim, dtype)}

    def step(self, x_t: jax.Array, state: dict[str, Any]) -> tuple[jax.Array, dict[str, Any]]:
        ssm_out, ssm_state = self.ssm.step(x_t, state["ssm"])
        x_mem = self._memory(x_t, ssm_out)
        q, k, v, r = self._projections(x_t, x_mem)
        o, attention = vq_attention_step(state["attention"], q, k, v,
                                         self.codebook[...].astype(x_t.dtype),
                                         self.bias[...].astype(x_t.dtype))
        return self._output(x_t, x_mem, r, o), {"ssm": ssm_state, "attention": attention}


register_mixer("longvq", LongVQConfig, LongVQ)
