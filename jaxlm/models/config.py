"""Configuration of the decoder language model."""

from __future__ import annotations

import dataclasses

from jaxlm.layers import (MIXERS, AttentionConfig, DeltaNetConfig, GatedDeltaNetConfig,
                          GLAConfig, H3Config, JRTConfig, LinearAttentionConfig, LSSLConfig,
                          Mamba2Config, MambaConfig, MoMConfig, S4Config, S4DConfig,
                          SparseAttentionConfig, WindowAttentionConfig)
from jaxlm.layers.combiner import CombinerConfig
from jaxlm.layers.core_context import CoreContextConfig
from jaxlm.layers.infllm import InfLLMConfig
from jaxlm.layers.landmark import LandmarkAttentionConfig
from jaxlm.layers.lmu import LMUConfig
from jaxlm.layers.longvq import LongVQConfig
from jaxlm.layers.ponet import PoNetConfig
from jaxlm.layers.tensor_attention import TensorAttentionConfig
from jaxlm.layers.rnn import GRUConfig, LSTMConfig, SLSTMConfig
from jaxlm.ops.checks import check_positive_fields


MODEL_KINDS = ("decoder", "lexinvariant", "hierarchical", "word_pooled", "mrt5")
LEXINVARIANT_HEADS = ("tied", "pointer")


@dataclasses.dataclass(frozen=True)
class LexinvariantConfig:
    """Options of ``kind="lexinvariant"`` ("Lexinvariant Language Models")."""
    random_prob: float = 1.0  # 1: fully lexinvariant; < 1: semi-lexinvariant (learned table)
    table_seed: int = 0
    table_dim: int = 0  # width of the random table (0: d_model); otherwise learned maps to it
    head: str = "tied"  # "tied": logits h E^T (the paper's); "pointer": a pointer-sentinel mixture
    ngram_orders: int = 0  # pointer head: hard-wired n-gram match features of orders 1..n

    def __post_init__(self):
        if self.table_dim < 0:
            raise ValueError(f"model.lexinvariant.table_dim must be >= 0 (0: d_model), "
                             f"got {self.table_dim}")
        if self.head not in LEXINVARIANT_HEADS:
            raise ValueError(f"model.lexinvariant.head must be one of {LEXINVARIANT_HEADS}, "
                             f"got {self.head!r}")
        if self.ngram_orders < 0 or (self.ngram_orders and self.head != "pointer"):
            raise ValueError(f"model.lexinvariant.ngram_orders must be >= 0 and needs "
                             f"head='pointer', got {self.ngram_orders} with head={self.head!r}")
        if not 0.0 <= self.random_prob <= 1.0:
            raise ValueError(f"model.lexinvariant.random_prob must be in [0, 1], "
                             f"got {self.random_prob!r}")


@dataclasses.dataclass(frozen=True)
class WordConfig:
    """Options of the word-level byte models (``kind="hierarchical"``, ``"word_pooled"``):
    a byte encoder of ``encoder_layers`` and a byte decoder of ``decoder_layers`` blocks of
    ``local_pattern`` (repeated that many times) at width ``d_local``; words are at most
    ``max_word_len`` bytes and a row holds at most ``max_words`` words (0: ``length // 4 + 2``,
    room for words of 4 bytes on average; English averages about 6). Bytes of words beyond it
    are not modelled and are counted in the ``dropped_bytes`` metric; ``max_words`` equal to
    the row length never drops one."""
    max_word_len: int = 16
    max_words: int = 0
    pooled_tokens: int = 1  # word_pooled: CLS tokens per word
    d_local: int = 64
    encoder_layers: int = 1
    decoder_layers: int = 1
    local_pattern: str = "attention"

    def __post_init__(self):
        check_positive_fields("model.words", self, ("max_word_len", "d_local", "encoder_layers",
                                                    "decoder_layers", "pooled_tokens"))
        if self.max_words < 0:
            raise ValueError(f"model.words.max_words must be >= 0 (0: length // 4 + 2), "
                             f"got {self.max_words}")


@dataclasses.dataclass(frozen=True)
class DeletionConfig:
    """Options of ``kind="mrt5"`` ("MrT5: Dynamic Token Merging for Efficient Byte-level
    Language Models"): the delete gate sits after ``gate_layer`` blocks; the regulariser's weight
    is ``gain * (target_rate - measured rate)`` (a proportional controller)."""
    gate_layer: int = 1
    target_rate: float = 0.5  # the fraction of tokens to delete
    gain: float = 1.0

    def __post_init__(self):
        check_positive_fields("model.deletion", self, ("gate_layer",))
        if not 0.0 <= self.target_rate < 1.0:
            raise ValueError(f"model.deletion.target_rate must be in [0, 1), "
                             f"got {self.target_rate!r}")
        if self.gain < 0:
            raise ValueError(f"model.deletion.gain must be >= 0, got {self.gain!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder LM: ``n_layers`` blocks whose mixers follow ``pattern`` cyclically.

    ``pattern`` is a comma-separated list of registered mixer names, e.g. ``"attention"`` or
    ``"mamba,mamba,attention"``; ``n_layers`` must be a multiple of its length. Each mixer's
    options live in the field of the same name (``attention``, ``attention_window``, ...).
    ``d_ff=0`` leaves out the MLP (as in Zoology's MQAR models). ``ngram_heads=N`` adds
    hard-wired n-gram heads of orders 1..N after the embedding (``jaxlm.layers.NgramHeads``).
    ``dropout`` is the rate of residual dropout on every mixer and MLP output, in training only.
    """
    kind: str = "decoder"  # one of MODEL_KINDS
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    pattern: str = "attention"
    d_ff: int = 0
    tie_embeddings: bool = True
    learned_positions: bool = False  # add a learned absolute position embedding
    max_length: int = 2048  # longest sequence the learned positions cover
    norm_eps: float = 1e-6
    ngram_heads: int = 0  # hard-wired n-gram heads of orders 1..n after the embedding (decoder)
    dropout: float = 0.0  # residual dropout rate in training (0: none)
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
    lstm: LSTMConfig = LSTMConfig()
    gru: GRUConfig = GRUConfig()
    slstm: SLSTMConfig = SLSTMConfig()
    lmu: LMUConfig = LMUConfig()
    longvq: LongVQConfig = LongVQConfig()
    ponet: PoNetConfig = PoNetConfig()
    combiner: CombinerConfig = CombinerConfig()
    core_context: CoreContextConfig = CoreContextConfig()
    tensor_attention: TensorAttentionConfig = TensorAttentionConfig()
    landmark_attention: LandmarkAttentionConfig = LandmarkAttentionConfig()
    attention_infllm: InfLLMConfig = InfLLMConfig()
    lexinvariant: LexinvariantConfig = LexinvariantConfig()
    words: WordConfig = WordConfig()
    deletion: DeletionConfig = DeletionConfig()

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model.kind={self.kind!r} is unknown; expected one of "
                             f"{list(MODEL_KINDS)}")
        check_positive_fields("model", self,
                              ("vocab_size", "d_model", "n_layers", "max_length"))
        if not isinstance(self.d_ff, int) or self.d_ff < 0:
            raise ValueError(f"model.d_ff must be a non-negative integer (0: no MLP), "
                             f"got {self.d_ff!r}")
        if not isinstance(self.ngram_heads, int) or self.ngram_heads < 0 or (
                self.ngram_heads and self.kind != "decoder"):
            raise ValueError(f"model.ngram_heads must be a non-negative integer, and 0 unless "
                             f"model.kind='decoder'; got {self.ngram_heads!r} with "
                             f"model.kind={self.kind!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
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

        if self.kind in ("hierarchical", "word_pooled"):
            self.local_config(1)
        if self.kind == "mrt5":
            after = self.layer_mixers()[self.deletion.gate_layer:]
            if not after or any(name != "attention" for name in after):
                raise ValueError(
                    f"model.kind='mrt5' needs attention in every layer after "
                    f"model.deletion.gate_layer={self.deletion.gate_layer} (the gate biases "
                    f"their attention scores) and at least one such layer; the layers are "
                    f"{self.layer_mixers()}")
            if self.attention.window is not None:
                raise ValueError(f"model.kind='mrt5' generates with a cache of the kept tokens, "
                                 f"which has no sliding window; set model.attention.window=None "
                                 f"(got {self.attention.window})")

    def local_config(self, n_layers: int) -> "ModelConfig":
        """The config of a word model's byte encoder or decoder: ``n_layers`` blocks of
        ``words.local_pattern`` at width ``words.d_local``."""
        names = [n.strip() for n in self.words.local_pattern.split(",")]
        return dataclasses.replace(self, kind="decoder", d_model=self.words.d_local,
                                   pattern=self.words.local_pattern,
                                   n_layers=len(names) * n_layers, learned_positions=False)

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
