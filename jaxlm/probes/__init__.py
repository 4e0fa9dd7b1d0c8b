"""In-context-learning probes: task generator + metric + classical baseline."""

from jaxlm.probes.mqar import PROBES, evaluate, evaluate_mqar

__all__ = ["PROBES", "evaluate", "evaluate_mqar"]
