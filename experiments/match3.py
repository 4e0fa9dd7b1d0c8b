"""Match3 (a triple-wise task): one layer of softmax attention against one layer of tensor
attention ("How to Capture Higher-order Correlations? Generalizing Matrix Softmax Attention to
Kronecker Computation"; the task from "Representational Strengths and Limitations of
Transformers").

Run:  jaxlm sweep experiments/match3.py      (CPU, a few minutes; see RESULTS.md)
Rows of 16 residues mod 32; at every position the label says whether x_i + x_j + x_k ≡ 0
(mod 32) for some j, k <= i (jaxlm.data.match3). One mixer layer of width 32 (2 heads) and an
MLP, trained the same way for both. The probe reports accuracy over every position, the
balanced accuracy, the best accuracy from the position alone, the pairwise rule (degenerate
triples only), and the accuracy where only three distinct positions decide. The papers' claim:
one softmax-attention layer of small width cannot compute Match3, one tensor-attention head
can. Measured (RESULTS.md): softmax attention stops at the pairwise rule; tensor attention
goes past it, further with ``--set train.steps=3000``.
"""

from jaxlm.config import Config, ProbeConfig, TrainConfig
from jaxlm.data import DataConfig, Match3Config
from jaxlm.layers import AttentionConfig, TensorAttentionConfig
from jaxlm.models import ModelConfig
from jaxlm.runner import grid

PRESETS = {"full": {"model.d_model": 64, "train.steps": 20_000, "data.match3.seq_len": 32,
                    "data.match3.modulus": 64, "model.vocab_size": 64}}


def config() -> Config:
    return Config(
        name="match3",
        model=ModelConfig(vocab_size=32, d_model=32, n_layers=1, d_ff=64,
                          pattern="tensor_attention",
                          attention=AttentionConfig(n_heads=2, rope=False),
                          tensor_attention=TensorAttentionConfig(n_heads=2)),
        data=DataConfig(task="match3", match3=Match3Config(modulus=32, seq_len=16)),
        train=TrainConfig(steps=1000, batch_size=64, learning_rate=3e-3, warmup_steps=100,
                          log_every=250, tensorboard=False),
        probe=ProbeConfig(num_examples=2000),
    )


def sweep() -> list[dict]:
    return grid({"model.pattern": ["attention", "tensor_attention"]})
