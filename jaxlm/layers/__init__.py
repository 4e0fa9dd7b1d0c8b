"""Flax NNX modules: thin holders of parameters around the pure functions in ``jaxlm.ops``.

Importing this package registers every mixer in ``MIXERS``.
"""

from jaxlm.layers.attention import Attention, AttentionConfig, WindowAttentionConfig
from jaxlm.layers.combiner import Combiner, CombinerConfig
from jaxlm.layers.conv import ShortConv
from jaxlm.layers.core_context import CoreContext, CoreContextConfig
from jaxlm.layers.deltanet import DeltaNet, DeltaNetConfig, GatedDeltaNetConfig
from jaxlm.layers.infllm import InfLLMAttention, InfLLMConfig
from jaxlm.layers.jrt import JRT, JRTConfig
from jaxlm.layers.landmark import LandmarkAttention, LandmarkAttentionConfig
from jaxlm.layers.linear_attention import (GLA, GLAConfig, LinearAttention, LinearAttentionConfig,
                                          feature_map)
from jaxlm.layers.lmu import LMU, LMUConfig
from jaxlm.layers.longvq import LongVQ, LongVQConfig
from jaxlm.layers.mamba import Mamba, Mamba2, Mamba2Config, MambaConfig
from jaxlm.layers.mlp import GatedMLP
from jaxlm.layers.mom import MoM, MoMConfig
from jaxlm.layers.ngram import NgramHeads
from jaxlm.layers.pointer import PointerSentinel
from jaxlm.layers.ponet import PoNet, PoNetConfig
from jaxlm.layers.rnn import RNN, GRUConfig, LSTMConfig, SLSTMConfig
from jaxlm.layers.registry import MIXERS, Mixer, build_mixer, prefill, register_mixer
from jaxlm.layers.s4 import LSSL, S4, LSSLConfig, LSSLSSM, NPLRSSM, S4Config
from jaxlm.layers.sparse_attention import SparseAttention, SparseAttentionConfig
from jaxlm.layers.tensor_attention import TensorAttention, TensorAttentionConfig
from jaxlm.layers.ssm import H3, S4D, DiagonalSSM, H3Config, S4DConfig, SSMBlock

__all__ = [
    "GLA", "H3", "JRT", "LSSL", "LSSLSSM", "MIXERS", "NPLRSSM", "S4", "S4D", "Attention",
    "AttentionConfig", "DeltaNet", "DeltaNetConfig", "DiagonalSSM", "GLAConfig",
    "GatedDeltaNetConfig", "GatedMLP", "H3Config", "JRTConfig", "LSSLConfig", "LinearAttention",
    "LinearAttentionConfig", "Mamba", "Mamba2", "Mamba2Config", "MambaConfig", "Mixer", "MoM",
    "MoMConfig", "NgramHeads", "PointerSentinel", "S4Config", "S4DConfig", "SSMBlock", "ShortConv",
    "SparseAttention", "SparseAttentionConfig", "WindowAttentionConfig", "build_mixer",
    "feature_map", "prefill", "register_mixer",
    "RNN", "LSTMConfig", "GRUConfig", "SLSTMConfig", "LMU", "LMUConfig",
    "PoNet", "PoNetConfig", "Combiner", "CombinerConfig", "CoreContext", "CoreContextConfig",
    "TensorAttention", "TensorAttentionConfig",
    "LongVQ", "LongVQConfig",
    "LandmarkAttention", "LandmarkAttentionConfig", "InfLLMAttention", "InfLLMConfig",
]
