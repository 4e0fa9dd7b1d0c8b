"""The LMU mixer: a fixed Legendre (LegT) memory of a few projected channels (LMUFormer)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.layers.registry import register_mixer
from jaxlm.ops.checks import check_positive_fields
from jaxlm.ops.conv import dense_causal_conv1d, dense_causal_conv1d_step
from jaxlm.ops.lmu import legt_zoh, lmu_memory, lmu_memory_step

EMBED_WIDTH = 3  # LMUFormer's patch-embedding kernel


@dataclasses.dataclass(frozen=True)
class LMUConfig:
    """Options of the ``lmu`` mixer: ``n_inputs`` channels u each remembered by ``order``
    Legendre coefficients of a window of ``theta`` tokens; LMUFormer's convolutional patch
    embedding (``conv_embed`` causal convolution layers, the paper's 4; 0: none) and its
    convolutional channel mixer (``conv_mixer``, hidden width ``mixer_ratio`` x d_model)."""
    n_inputs: int = 4
    order: int = 32
    theta: float = 64.0
    impl: str = "auto"
    conv_embed: int = 0
    conv_mixer: bool = False
    mixer_ratio: int = 4

    def __post_init__(self):
        check_positive_fields("lmu", self, ("n_inputs", "order", "mixer_ratio"))
        if self.conv_embed < 0:
            raise ValueError(f"lmu.conv_embed must be >= 0 (convolution layers of the patch "
                             f"embedding; 0: none), got {self.conv_embed}")
        if not self.theta > 0:
            raise ValueError(f"lmu.theta must be > 0 (the memory window in tokens), "
                             f"got {self.theta!r}")


class LMU(nnx.Module):
    """The parallelisable LMU of LMUFormer ("LMUFormer: Low Complexity Yet Powerful Spiking
    Model With Legendre Memory Units"; the memory from "Legendre Memory Units: Continuous-Time
    Representation in Recurrent Neural Networks"), as a sequence mixer:

        u_t = ReLU(W_u x_t + b_u)                          (n_inputs channels)
        m_t = Ā m_{t-1} + B̄ u_t                            (per channel, order coefficients)
        y_t = ReLU(W_h [vec(m_t); x_t] + b_h)

    with the LegT (Ā, B̄) fixed (zero-order hold of θ ṁ = A m + B u, window ``theta`` tokens;
    :mod:`jaxlm.ops.lmu`). The memory has no feedback from y, so it is linear time-invariant:
    its parallel form is an FFT convolution with the impulse response Ā^l B̄, its ``step`` the
    streaming recurrence. x: [batch, length, d_model] -> same.

    LMUFormer's options (its non-spiking model, ``lmu_rnn_conv1d`` of the paper's code):

    - ``conv_embed = n > 0``, the convolutional patch embedding before the memory: n layers
      e <- Norm(ReLU(Conv_3(e))) from e = x, then the relative position embedding
      e <- e + Conv_3(e); Conv_3 a full convolution over 3 tokens without bias, made causal
      here (left padding only, :func:`jaxlm.ops.dense_causal_conv1d`) so the LM never reads a
      future token. The memory and the read-out then take e in place of x.
    - ``conv_mixer``, the LMU block's 1x1-convolution projection and the convolutional channel
      mixer: a = Norm(Conv_1(y)), then the mixer returns a + FFN(x + a) with
      FFN(z) = ReLU(Norm(Conv_1(GELU(Norm(Conv_1(z)))))), hidden width ``mixer_ratio`` x
      d_model, so that the block's residual x + mixer(x) is LMUFormer's block
      (x + a) + FFN(x + a). A 1x1 convolution is a linear map of each token.

    Norm is LayerNorm over the channels where the paper has BatchNorm: BatchNorm's training
    statistics pool the whole sequence, which would let a language model see the future. The
    ``step`` state is {"memory": [batch, n_inputs, order], "embed": the last 2 inputs of each
    patch-embedding convolution}, so the patch embedding streams too.
    """

    def __init__(self, d_model: int, *, n_inputs: int = 4, order: int = 32,
                 theta: float = 64.0, impl: str = "auto", conv_embed: int = 0,
                 conv_mixer: bool = False, mixer_ratio: int = 4, rngs: nnx.Rngs):
        LMUConfig(n_inputs, order, theta, impl, conv_embed, conv_mixer, mixer_ratio)
        self.n_inputs, self.order, self.theta, self.impl = n_inputs, order, float(theta), impl
        self.d_model, self.conv_embed, self.conv_mixer = d_model, conv_embed, conv_mixer
        self.in_proj = nnx.Linear(d_model, n_inputs, rngs=rngs)
        self.out_proj = nnx.Linear(n_inputs * order + d_model, d_model, rngs=rngs)
        init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        # conv_embed layers, then the relative-position convolution
        self.embed_weights = nnx.List([
            nnx.Param(init(rngs.params(), (EMBED_WIDTH, d_model, d_model)))
            for _ in range(conv_embed + 1 if conv_embed else 0)])
        self.embed_norms = nnx.List([nnx.LayerNorm(d_model, rngs=rngs)
                                     for _ in range(conv_embed)])
        if conv_mixer:
            hidden = mixer_ratio * d_model
            self.proj = nnx.Linear(d_model, d_model, rngs=rngs)
            self.fc1 = nnx.Linear(d_model, hidden, rngs=rngs)
            self.fc2 = nnx.Linear(hidden, d_model, rngs=rngs)
            self.norms = nnx.List([nnx.LayerNorm(n, rngs=rngs)
                                   for n in (d_model, hidden, d_model)])

    def _embed(self, x, segment_ids):
        if not self.conv_embed:
            return x
        for weight, norm in zip(self.embed_weights, self.embed_norms):
            x = norm(nnx.relu(dense_causal_conv1d(x, weight[...].astype(x.dtype),
                                                  segment_ids=segment_ids)))
        return x + dense_causal_conv1d(x, self.embed_weights[-1][...].astype(x.dtype),
                                       segment_ids=segment_ids)

    def _embed_step(self, x_t, windows):
        if not self.conv_embed:
            return x_t, windows
        new = []
        for weight, norm, window in zip(self.embed_weights, self.embed_norms, windows):
            y, window = dense_causal_conv1d_step(window, x_t, weight[...].astype(x_t.dtype))
            x_t = norm(nnx.relu(y))
            new.append(window)
        y, window = dense_causal_conv1d_step(windows[-1], x_t,
                                             self.embed_weights[-1][...].astype(x_t.dtype))
        return x_t + y, (*new, window)

    def _mix(self, x, y):
        """LMUFormer's projection and channel mixer on the memory's read-out y (see above)."""
        if not self.conv_mixer:
            return y
        a = self.norms[0](self.proj(y))
        z = x + a
        h = nnx.gelu(self.norms[1](self.fc1(z)), approximate=False)
        return a + nnx.relu(self.norms[2](self.fc2(h)))

    def _system(self, dtype):
        a_bar, b_bar = legt_zoh(self.order, self.theta)
        return jnp.asarray(a_bar, dtype), jnp.asarray(b_bar, dtype)

    def _output(self, x, memory):
        flat = memory.reshape(*memory.shape[:-2], -1).astype(x.dtype)
        return nnx.relu(self.out_proj(jnp.concatenate([flat, x], axis=-1)))

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None) -> jax.Array:
        e = self._embed(x, segment_ids)
        u = nnx.relu(self.in_proj(e))
        memory = lmu_memory(u, *self._system(u.dtype), segment_ids=segment_ids, impl=self.impl)
        return self._mix(x, self._output(e, memory))

    def init_state(self, batch_size: int, dtype: Any = jnp.float32, *,
                   max_length: int | None = None) -> dict[str, Any]:
        windows = tuple(jnp.zeros((batch_size, EMBED_WIDTH - 1, self.d_model), dtype)
                        for _ in self.embed_weights)
        return {"memory": jnp.zeros((batch_size, self.n_inputs, self.order),
                                    jnp.promote_types(dtype, jnp.float32)),
                "embed": windows}

    def step(self, x_t: jax.Array, state: dict[str, Any]) -> tuple[jax.Array, dict[str, Any]]:
        e_t, windows = self._embed_step(x_t, state["embed"])
        u_t = nnx.relu(self.in_proj(e_t))
        memory = lmu_memory_step(state["memory"], u_t, *self._system(state["memory"].dtype))
        return (self._mix(x_t, self._output(e_t, memory)),
                {"memory": memory, "embed": windows})


register_mixer("lmu", LMUConfig, LMU)
