"""Flax NNX modules: thin holders of parameters around the pure functions in ``jaxlm.ops``.

Importing this package registers every mixer in ``MIXERS``.
"""

from jaxlm.layers.attention import Attention, AttentionConfig, WindowAttentionConfig
from jaxlm.layers.mlp import GatedMLP
from jaxlm.layers.registry import MIXERS, Mixer, build_mixer, register_mixer

__all__ = ["MIXERS", "Attention", "AttentionConfig", "GatedMLP", "Mixer",
           "WindowAttentionConfig", "build_mixer", "register_mixer"]
