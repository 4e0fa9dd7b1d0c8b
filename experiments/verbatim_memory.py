"""Verbatim short-term memory ("Characterizing Verbatim Short-Term Memory in Neural Language
Models"): repeat surprisal of a small byte LM on noun lists that occur twice in a vignette.

Run:  python experiments/verbatim_memory.py [RUN_DIR]     (CPU: a few minutes)
Trains a 2-layer attention byte LM of width 64 for 500 steps of 8 rows on the built-in corpus
(the Python documentation topics; rows of 320 bytes, which every vignette below fits), unless
RUN_DIR already holds a trained run (any jaxlm run directory of a byte LM, or ``jaxlm train
experiments/verbatim_memory.py``), then prints the repeat surprisal (percent: the median noun
surprisal of the second list over the first's; jaxlm.probes.verbatim_memory) for repeated,
permuted and novel second lists, against list length and intervening distance (in words), 10
vignettes each. The paper's finding: the transformers' repeat surprisal is low on repeated
lists, higher on permuted ones and ~100% on novel ones, at every distance.
"""

import pathlib
import sys

from jaxlm.config import Config, ProbeConfig, TrainConfig
from jaxlm.data import BYTE_VOCAB, DataConfig, TextConfig
from jaxlm.data.text import encode
from jaxlm.layers import AttentionConfig
from jaxlm.models import ModelConfig


def config() -> Config:
    return Config(
        name="verbatim_memory",
        model=ModelConfig(vocab_size=BYTE_VOCAB, d_model=64, n_layers=2, d_ff=128,
                          pattern="attention", attention=AttentionConfig(n_heads=2)),
        data=DataConfig(task="text", text=TextConfig(seq_len=320)),
        train=TrainConfig(steps=500, batch_size=8, learning_rate=3e-3, warmup_steps=50,
                          log_every=100, tensorboard=False),
        probe=ProbeConfig(num_examples=32),
    )


def main(run_dir: str = "runs/verbatim_memory") -> None:
    from jaxlm.probes.verbatim_memory import model_surprisal, verbatim_memory
    from jaxlm.runner import load_run, markdown_table
    from jaxlm.train import train

    if (pathlib.Path(run_dir) / "checkpoints").is_dir():
        _, model = load_run(run_dir)
    else:
        model = train(config(), run_dir, progress=False).model
    rows = verbatim_memory(model_surprisal(model, bucket=128), encode, list_lengths=(3, 5),
                           distances=(3, 13, 20), trials=10)
    for row in rows:
        row.update({k: round(v, 2) for k, v in row.items() if isinstance(v, float)})
    print(markdown_table(rows, ["condition", "list_length", "distance", "repeat_surprisal", "sem",
                                "first_bits", "second_bits"]))


if __name__ == "__main__":
    main(*sys.argv[1:])
