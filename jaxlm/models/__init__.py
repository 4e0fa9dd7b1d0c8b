"""Language models built from blocks of registered mixers."""

from jaxlm.models.config import ModelConfig
from jaxlm.models.generate import generate
from jaxlm.models.lm import Block, DecoderLM, count_params

__all__ = ["Block", "DecoderLM", "ModelConfig", "count_params", "generate"]
