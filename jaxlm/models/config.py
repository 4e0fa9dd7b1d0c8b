"""Configuration of the decoder language model."""

from __future__ import annotations

import dataclasses

from jaxlm.layers import (MIXERS, AttentionConfig, DeltaNetConfig, GatedDeltaNetConfig,
                          GLAConfig, H3Config, JRTConfig, LinearAttentionConfig, LSSLConfig,
                          Mamba2Config, MambaConfig, MoMConfig, S4Config, S4DConfig,
                          SparseAttentionConfig, WindowAttentionConfig)
from jaxlm.ops.checks import check_positive_fields


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder LM: ``n_layers`` blocks whose mixers follow ``pattern`` cyclically.

    ``pattern`` is a comma-separated list of registered mixer names, e.g. ``"attention"`` or
    ``"mamba,mamba,attention"``; ``n_layers`` must be a multiple of its length. Each mixer's
    options live in the field of the same name (``attention``, ``attention_window``, ...).
    ``d_ff=0`` leaves out the MLP (as in Zoology's MQAR models).
    """
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    pattern: str = "attention"
    d_ff: int = 0
    tie_embeddings: bool = True
    learned_positions: bool = False  # add a learned absolute position embedding
    max_length: int = 2048  # longest sequence the learned positions cover
    norm_eps: float = 1e-6
    attention: AttentionConfig = AttentionConfig()
    attention_window: WindowAttentionConfig = WindowAttentionConfig()
    sparse_attention: SparseAttentionConfig = SparseAttentionConfig()
    linear_attention: LinearAttentionConfig = LinearAttentionConfig()
    gla: GLAConfig = GLAConfig()
    deltanet: DeltaNetConfig = DeltaNetConfig()
    gated_deltanet: GatedDeltaNetConfig = GatedDeltaNetConfig()
    mom: MoMConfig = MoMConfig()
    jrt: JRTConfig = JRTConfig()
    mamba: MambaConfig = MambaConfig()
    mamba2: Mamba2Config = Mamba2Config()
    s4: S4Config = S4Config()
    s4d: S4DConfig = S4DConfig()
    lssl: LSSLConfig = LSSLConfig()
    h3: H3Config = H3Config()

    def __post_init__(self):
        check_positive_fields("model", self,
                              ("vocab_size", "d_model", "n_layers", "max_length"))
        if not isinstance(self.d_ff, int) or self.d_ff < 0:
            raise ValueError(f"model.d_ff must be a non-negative integer (0: no MLP), "
                             f"got {self.d_ff!r}")
        names = self.mixer_names()
        unknown = [n for n in names if n not in MIXERS]
        if unknown:
            raise ValueError(f"model.pattern={self.pattern!r} names unknown mixers {unknown}; "
                             f"registered mixers: {sorted(MIXERS)}")
        for name in names:
            self.mixer_config(name)
        if self.n_layers % len(names):
            raise ValueError(f"model.n_layers={self.n_layers} must be a multiple of the length "
                             f"of model.pattern={self.pattern!r} ({len(names)})")

    def mixer_names(self) -> list[str]:
        return [name.strip() for name in self.pattern.split(",")]

    def layer_mixers(self) -> list[str]:
        """The mixer name of every layer, in order."""
        names = self.mixer_names()
        return [names[i % len(names)] for i in range(self.n_layers)]

    def mixer_config(self, name: str):
        if not hasattr(self, name):
            raise ValueError(f"ModelConfig has no options field for mixer {name!r}; add a field "
                             f"of type {MIXERS[name].config_type.__name__} named {name!r}")
        return getattr(self, name)
