"""Data: synthetic task generators (deterministic in a seed), sources and batching."""

from jaxlm.data.copying import (InductionHeadConfig, SelectiveCopyConfig, induction_head_example,
                                selective_copy_example)
from jaxlm.data.match3 import Match3Config, match3_example, match3_labels
from jaxlm.data.mqar import IGNORE, MQARConfig, mqar_example
from jaxlm.data.needle_threading import NeedleThreadingConfig, needle_threading_example
from jaxlm.data.passkey import PasskeyConfig, passkey_example
from jaxlm.data.regression import (LinearRegressionConfig, deinterleave, interleave,
                                   linear_regression_example, regression_prompt)
from jaxlm.data.regular_language import (RegularLanguageConfig, random_dfa,
                                         regular_language_batch, regular_language_example)
from jaxlm.data.set_disjointness import SetDisjointnessConfig, set_disjointness_example
from jaxlm.data.state_tracking import StateTrackingConfig, group_table, state_tracking_example
from jaxlm.data.text import (BOS, BYTE_VOCAB, EOS, EOW, PAD, TextConfig, decode, encode,
                             text_batch)
from jaxlm.data.source import (SPLITS, TASKS, DataConfig, Task, TaskSource, example_batch,
                               make_source)

__all__ = ["BOS", "BYTE_VOCAB", "EOS", "EOW", "PAD", "TextConfig", "decode", "encode",
           "text_batch", "IGNORE", "SPLITS", "TASKS", "DataConfig", "InductionHeadConfig",
           "LinearRegressionConfig", "MQARConfig", "PasskeyConfig", "RegularLanguageConfig",
           "SelectiveCopyConfig", "SetDisjointnessConfig", "Task", "TaskSource", "deinterleave",
           "example_batch", "induction_head_example", "interleave", "linear_regression_example",
           "make_source", "mqar_example", "passkey_example", "random_dfa",
           "regression_prompt", "regular_language_batch", "regular_language_example",
           "selective_copy_example", "set_disjointness_example",
           "StateTrackingConfig", "group_table", "state_tracking_example",
           "NeedleThreadingConfig", "needle_threading_example",
           "Match3Config", "match3_example", "match3_labels"]
