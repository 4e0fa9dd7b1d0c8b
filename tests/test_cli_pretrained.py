"""``jaxlm convert``, ``jaxlm probe --pretrained`` and ``jaxlm train --init-from`` on a tiny
Mamba-2 checkpoint with a byte-level BPE tokenizer (no transformers needed)."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxlm.cli import main
from jaxlm.data.text import split_of
from jaxlm.layers import Mamba2Config
from jaxlm.models import DecoderLM, ModelConfig, load_pretrained, save_pretrained
from jaxlm.runner import load_run
from tests.test_cli import EXPERIMENT

TEXT = ("The pass key is 12345. Remember it. The grass is green. The sky is blue. "
        "apple: 17. river: 42. What is the pass key? ") * 4


def byte_bpe(vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    return tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = byte_bpe(280)
    config = ModelConfig(vocab_size=280, d_model=8, n_layers=1, pattern="mamba2",
                         norm_eps=1e-5, mamba2=Mamba2Config(d_state=4, head_dim=4, n_groups=2))
    model = nnx.jit(lambda: DecoderLM(config, rngs=nnx.Rngs(0)))()
    return save_pretrained(model, tmp_path_factory.mktemp("hf"), tokenizer=tokenizer)


def test_convert_both_ways_keeps_the_weights_and_tokenizer(checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["convert", str(checkpoint), "--to", str(run)]) == 0
    _, model = load_run(run)
    back = tmp_path / "back"
    assert main(["convert", str(run), "--to", str(back)]) == 0
    assert "Hugging Face folder" in capsys.readouterr().out
    original, _ = load_pretrained(checkpoint)
    again, tokenizer = load_pretrained(back)
    assert tokenizer is not None and model.config == original.config
    for a, b in zip(jax.tree.leaves(nnx.state(again)), jax.tree.leaves(nnx.state(original))):
        np.testing.assert_array_equal(a, b)


def test_probe_pretrained_prints_every_probe(checkpoint, tmp_path, capsys):
    text = tmp_path / "text"
    text.mkdir()
    names = [f"doc{i}.txt" for i in range(200) if split_of(f"doc{i}.txt") == 2][:2]
    for name in names + ["train.txt"]:  # two held-out documents, one training document
        (text / name).write_text(TEXT)
    assert main(["probe", "--pretrained", str(checkpoint), "--text", str(text),
                 "--lengths", "48", "--trials", "1", "--context", "32"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["bits_per_byte"] > 0 and row["bytes"] > 0
    for key in ("passkey@48", "recall", "recall_jrt"):
        assert 0 <= row[key] <= 1
    for key in ("vstm_repeat", "vstm_permute", "vstm_control"):
        assert np.isfinite(row[key]) and row[key] > 0


def test_probe_needs_a_run_or_a_checkpoint(capsys):
    assert main(["probe"]) == 2
    assert "--pretrained" in capsys.readouterr().err


def test_train_init_from_fine_tunes_the_checkpoint(checkpoint, tmp_path, capsys):
    experiment = tmp_path / "tiny.py"
    experiment.write_text(EXPERIMENT)
    run = tmp_path / "run"
    assert main(["train", str(experiment), "--run-dir", str(run), "--no-progress",
                 "--init-from", str(checkpoint), "--set", "train.steps=2"]) == 0
    config, model = load_run(run)
    assert config.model.pattern == "mamba2" and config.model.vocab_size == 280
    original, _ = load_pretrained(checkpoint)
    moved = [float(np.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(nnx.state(model, nnx.Param)),
                 jax.tree.leaves(nnx.state(original, nnx.Param)))]
    assert 0 < max(moved) < 0.1  # two small steps away from the checkpoint
