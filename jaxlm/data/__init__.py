"""Data: synthetic task generators (deterministic in a seed), sources and batching."""

from jaxlm.data.mqar import IGNORE, MQARConfig, mqar_batch, mqar_example
from jaxlm.data.source import DataConfig, SPLITS, TaskSource, make_source

__all__ = ["IGNORE", "SPLITS", "DataConfig", "MQARConfig", "TaskSource", "make_source",
           "mqar_batch", "mqar_example"]
