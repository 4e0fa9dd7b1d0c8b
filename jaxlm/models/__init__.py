"""Language models built from blocks of registered mixers; ``MODELS`` maps each
``ModelConfig.kind`` to its class."""

from flax import nnx

from jaxlm.models.config import DeletionConfig, LexinvariantConfig, ModelConfig, WordConfig
from jaxlm.models.generate import generate, generate_text
from jaxlm.models.lexinvariant import LexinvariantLM
from jaxlm.models.mrt5 import MrT5LM
from jaxlm.models.lm import Block, DecoderLM, add_positions, count_params
from jaxlm.models.hf_config import PretrainedError
from jaxlm.models.pretrained import load_pretrained, pretrained_config, save_pretrained
from jaxlm.models.regression import SequenceRegressor
from jaxlm.models.words import WordLM

MODELS = {
    "decoder": DecoderLM,
    "lexinvariant": LexinvariantLM,
    "hierarchical": WordLM,
    "word_pooled": WordLM,
    "mrt5": MrT5LM,
}


def build_lm(config: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """The token model of ``config.kind``."""
    return MODELS[config.kind](config, rngs=rngs)


__all__ = ["MODELS", "Block", "DecoderLM", "DeletionConfig", "MrT5LM", "LexinvariantConfig", "LexinvariantLM",
           "ModelConfig", "SequenceRegressor", "WordConfig", "WordLM", "add_positions",
           "PretrainedError", "build_lm", "count_params", "generate", "generate_text",
           "load_pretrained", "pretrained_config", "save_pretrained"]
