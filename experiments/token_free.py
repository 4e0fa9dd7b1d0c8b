"""Token-free language models on English text: a byte LM, the lexinvariant LM, the
hierarchical byte -> word -> byte model, the word-pooled model and MrT5's token deletion, each
with the same attention backbone.

Run:  jaxlm sweep experiments/token_free.py     (CPU: 32 minutes measured without the two
      n-gram rows, which add about 8)
Trains every model on the built-in corpus (the Python documentation topics of the standard
library; ``--set data.text.path=DIR`` for your own text) and reports bits per byte on held-out
documents, on the same rows under a letter substitution cipher, the unigram baseline, the
forward throughput and the measured sequence-length reduction (bytes per word for the
word-level models, bytes per kept token for MrT5). A run trains the byte LM on ciphered
text, the fair comparison for the lexinvariant model on the cipher; the last is the subword
baseline: the same decoder over a byte-pair encoding of 1024 ids learned on the training
split, with rows of 80 tokens (about the 256 bytes the byte-level models see). The lexinvariant
model runs five times: with the paper's tied head, and with the pointer-sentinel head at 256
and at 1024 bytes of context, without and with the pointer's n-gram match features (beside a
cipher-trained byte LM at 1024); the byte and lexinvariant LMs also get the deciphering probe
(a linear probe naming the plaintext letters).
"""

from jaxlm.config import Config, ProbeConfig, TrainConfig
from jaxlm.data import BYTE_VOCAB, DataConfig, TextConfig
from jaxlm.layers import AttentionConfig
from jaxlm.models import ModelConfig, WordConfig
from jaxlm.runner import grid

PRESETS = {"full": {"train.steps": 20_000, "model.d_model": 256, "model.n_layers": 8,
                    "data.text.seq_len": 1024, "model.words.d_local": 128}}


def config() -> Config:
    return Config(
        name="token_free",
        model=ModelConfig(vocab_size=BYTE_VOCAB, d_model=64, n_layers=2, d_ff=128,
                          pattern="attention", attention=AttentionConfig(n_heads=4),
                          words=WordConfig(max_word_len=12, d_local=64)),
        data=DataConfig(task="text", text=TextConfig(seq_len=256)),
        train=TrainConfig(steps=600, batch_size=16, learning_rate=3e-3, warmup_steps=50,
                          log_every=100, tensorboard=False),
        probe=ProbeConfig(num_examples=128, batch_size=32),
    )


# Rows of 1024 bytes, 4 per batch (the same bytes per step): a lexinvariant model learns only
# from the document so far, so it needs the longer context (in-context PPM: 4.77 bits per byte
# at 256 bytes, 3.86 at 1024).
LONG = {"data.text.seq_len": 1024, "train.batch_size": 4}
# The pointer's hard-wired n-gram matches of orders 1-4 (PPM's order 3 context plus the token).
NGRAM_ORDERS = 4


def sweep() -> list[dict]:
    models = grid({"model.kind": ["decoder", "lexinvariant", "hierarchical", "word_pooled",
                                  "mrt5"]})
    pointer = {"model.kind": "lexinvariant", "model.lexinvariant.head": "pointer"}
    ngrams = {**pointer, "model.lexinvariant.ngram_orders": NGRAM_ORDERS}
    # With the n-gram matches 600 steps at 1024 bytes suffice (3.65 bits per byte; 3.63 at 1500).
    lexinvariant = [pointer, {**pointer, **LONG, "train.steps": 1500}, ngrams, {**ngrams, **LONG}]
    # The cipher probe's fair comparison: a byte LM trained on ciphered text. (A lexinvariant
    # model trained on it would see the same distribution as on plain text.)
    return models + lexinvariant + [
        {"model.kind": "decoder", "data.text.cipher": True},
        {"model.kind": "decoder", "data.text.cipher": True, **LONG, "train.steps": 1500},
        {"model.kind": "decoder", "data.text.subword_vocab": 1024, "model.vocab_size": 1024,
         "data.text.seq_len": 80}]
