"""Every mixer family on the quickstart's MQAR task, at equal width and budget.

Run:  jaxlm sweep experiments/mqar_mixers.py --out runs/mqar_mixers
The quickstart's data, model width and optimizer (see quickstart.py), 2000 steps, one row
per mixer: attention and its sparse forms (top-k blocks, landmark attention, k-means
routing), the linear-attention family, the state-space family, the nonlinear RNNs (LSTM, GRU,
sLSTM), PoNet's causal pooling, Combiner and Core Context Aware attention (blocks / groups of
8: 8 per row), LongVQ's quantised-key attention and one hybrid. About 90 minutes of training on one CPU core
(the rows' train_s; LongVQ and Mamba are a third of it); the table is in RESULTS.md.
"""

import dataclasses

from jaxlm.layers import (CombinerConfig, CoreContextConfig, LandmarkAttentionConfig,
                          LSSLConfig, S4Config)
from jaxlm.runner import grid

import quickstart


def config():
    base = quickstart.config()
    model = dataclasses.replace(base.model, s4=S4Config(d_state=32),
                                lssl=LSSLConfig(d_state=32),
                                combiner=CombinerConfig(n_heads=quickstart.HEADS, block_size=8),
                                core_context=CoreContextConfig(n_heads=quickstart.HEADS,
                                                               group_size=8, window=8),
                                landmark_attention=LandmarkAttentionConfig(
                                    n_heads=quickstart.HEADS, block_size=7))
    return dataclasses.replace(base, name="mqar_mixers", model=model)


def sweep() -> list[dict]:
    return grid({"model.pattern": [
        "attention", "sparse_attention", "landmark_attention", "linear_attention", "gla",
        "deltanet", "gated_deltanet",
        "deltanet,attention_window", "h3", "s4d", "s4", "lssl", "lmu", "mamba", "mamba2",
        "lstm", "gru", "slstm", "ponet", "combiner", "core_context", "longvq",
    ]}) + [quickstart.ROUTING]
