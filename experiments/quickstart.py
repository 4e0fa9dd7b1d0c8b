"""The main job: small models trained on MQAR on CPU in a few minutes, one table row each.

Run:  bin/quickstart   (or: jaxlm sweep experiments/quickstart.py)
Every mixer gets the same width (d_model 64, 2 layers, 2 heads, no MLP, as Zoology's MQAR
models), the same data and the same optimizer budget (2000 steps; at 1000 even attention is
still at 0.4). One row per family: attention, linear attention, DeltaNet, the state-space
models H3 and Mamba-2, and sparse attention (local + k-means routing layers, about 1 minute).
``mqar_mixers.py`` adds every other mixer (Mamba alone takes about 6 minutes here, top-k block
sparse attention about 4).
"""

from jaxlm.config import Config, ProbeConfig, TrainConfig
from jaxlm.data import DataConfig, MQARConfig
from jaxlm.layers import (AttentionConfig, DeltaNetConfig, GatedDeltaNetConfig, GLAConfig,
                          H3Config, LinearAttentionConfig, Mamba2Config, SparseAttentionConfig,
                          WindowAttentionConfig)
from jaxlm.models import ModelConfig
from jaxlm.runner import grid

VOCAB = 128
HEADS = 2
CHUNK = 16


def config() -> Config:
    return Config(
        name="quickstart",
        model=ModelConfig(
            vocab_size=VOCAB, d_model=64, n_layers=2, pattern="attention", d_ff=0,
            attention=AttentionConfig(n_heads=HEADS),
            attention_window=WindowAttentionConfig(n_heads=HEADS, window=8),
            # each query reads 4 of the 8 key blocks: 1 sink, its own, the 2 best-matching
            sparse_attention=SparseAttentionConfig(n_heads=HEADS, block_size=8, top_k=2),
            linear_attention=LinearAttentionConfig(n_heads=HEADS, chunk_size=CHUNK),
            gla=GLAConfig(n_heads=HEADS, chunk_size=CHUNK),
            deltanet=DeltaNetConfig(n_heads=HEADS, chunk_size=CHUNK),
            gated_deltanet=GatedDeltaNetConfig(n_heads=HEADS, chunk_size=CHUNK),
            # H3's shift SSM is a filter as long as its state (64 taps), as in the paper.
            h3=H3Config(head_dim=1, d_state=64, shift_width=64),
            mamba2=Mamba2Config(head_dim=16, chunk_size=CHUNK)),
        data=DataConfig(task="mqar", mqar=MQARConfig(vocab_size=VOCAB, seq_len=64,
                                                     num_kv_pairs=4)),
        train=TrainConfig(steps=2000, batch_size=32, learning_rate=3e-3, warmup_steps=100,
                          weight_decay=0.1, log_every=100, tensorboard=False),
        probe=ProbeConfig(num_examples=1000),
    )


# Routing Transformer's layout: local attention beside k-means routing attention (routing alone
# stays at chance on MQAR: clusters are by content, and recall needs the previous token too).
ROUTING = {"model.pattern": "attention_window,sparse_attention",
           "model.sparse_attention.selection": "routing"}


def sweep() -> list[dict]:
    return grid({"model.pattern": [
        "attention", "linear_attention", "deltanet", "h3", "mamba2",
    ]}) + [ROUTING]
