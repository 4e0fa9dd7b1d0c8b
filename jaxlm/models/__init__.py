"""Language models built from blocks of registered mixers."""

from jaxlm.models.config import ModelConfig
from jaxlm.models.generate import generate
from jaxlm.models.lm import Block, DecoderLM, add_positions, count_params
from jaxlm.models.regression import SequenceRegressor

__all__ = ["Block", "DecoderLM", "ModelConfig", "SequenceRegressor", "add_positions",
           "count_params", "generate"]
