"""Flax NNX modules: thin holders of parameters around the pure functions in ``jaxlm.ops``.

Importing this package registers every mixer in ``MIXERS``.
"""

from jaxlm.layers.attention import Attention, AttentionConfig, WindowAttentionConfig
from jaxlm.layers.conv import ShortConv
from jaxlm.layers.deltanet import DeltaNet, DeltaNetConfig, GatedDeltaNetConfig
from jaxlm.layers.linear_attention import (GLA, GLAConfig, LinearAttention, LinearAttentionConfig,
                                          feature_map)
from jaxlm.layers.mlp import GatedMLP
from jaxlm.layers.jrt import JRT, JRTConfig
from jaxlm.layers.mamba import Mamba, Mamba2, Mamba2Config, MambaConfig
from jaxlm.layers.mom import MoM, MoMConfig
from jaxlm.layers.ssm import H3, S4D, DiagonalSSM, H3Config, S4DConfig
from jaxlm.layers.registry import MIXERS, Mixer, build_mixer, prefill, register_mixer

__all__ = ["GLA", "H3", "MIXERS", "S4D", "DiagonalSSM", "H3Config", "S4DConfig", "Attention", "AttentionConfig", "DeltaNet", "DeltaNetConfig",
           "GLAConfig", "GatedDeltaNetConfig", "GatedMLP", "JRT", "JRTConfig", "LinearAttention",
           "LinearAttentionConfig", "Mamba", "Mamba2", "Mamba2Config", "MambaConfig", "Mixer", "MoM", "MoMConfig", "ShortConv",
           "WindowAttentionConfig", "build_mixer", "feature_map", "prefill", "register_mixer"]
