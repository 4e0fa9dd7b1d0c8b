"""Pretrained checkpoints in the runner: conversion between Hugging Face folders and jaxlm run
directories, and the probes of a pretrained LM (``jaxlm convert``, ``jaxlm probe
--pretrained``)."""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

from jaxlm.config import Config, save_config
from jaxlm.data.text import default_documents, read_documents, split_of
from jaxlm.models import load_pretrained, save_pretrained
from jaxlm.probes.pretrained import associative_recall, passkey_retrieval, text_bits_per_byte
from jaxlm.probes.verbatim_memory import verbatim_memory_summary
from jaxlm.runner.sweep import load_run
from jaxlm.train import Checkpointer, init_train_state, make_optimizer


def is_run_dir(path: str | pathlib.Path) -> bool:
    """Whether ``path`` is a jaxlm run directory (config.json and checkpoints/)."""
    return (pathlib.Path(path) / "checkpoints").is_dir()


def convert(path: str | pathlib.Path, to: str | pathlib.Path) -> str:
    """Converts a Hugging Face folder into a jaxlm run directory (``config.json`` + an orbax
    checkpoint at step 0, which ``jaxlm probe`` and ``load_run`` read), or a jaxlm run directory
    into a Hugging Face folder. ``tokenizer.json`` is carried along. Returns what was written."""
    path, to = pathlib.Path(path), pathlib.Path(to)
    if is_run_dir(path):
        _, model = load_run(path)
        tokenizer = path / "tokenizer.json"
        save_pretrained(model, to)
        if tokenizer.is_file():
            shutil.copy(tokenizer, to / "tokenizer.json")
        return f"Hugging Face folder {to} ({model.config.pattern}, {model.config.n_layers} layers)"
    if is_run_dir(to):
        raise FileExistsError(f"convert: {to} already holds a jaxlm run; choose another --to")
    model, _ = load_pretrained(path)
    config = Config(name=path.name, model=model.config)
    to.mkdir(parents=True, exist_ok=True)
    save_config(config, to / "config.json")
    _, state = init_train_state(model, make_optimizer(config.train))
    checkpointer = Checkpointer(to / "checkpoints")
    try:
        checkpointer.save(0, state)
    finally:
        checkpointer.close()
    if (path / "tokenizer.json").is_file():
        shutil.copy(path / "tokenizer.json", to / "tokenizer.json")
    return f"jaxlm run directory {to} ({model.config.pattern}, {model.config.n_layers} layers)"


def probe_pretrained(path: str | pathlib.Path, *, text: str | None = None,
                     context: int = 512, max_documents: int = 20,
                     lengths: tuple[int, ...] = (256, 512, 1024), trials: int = 5,
                     num_pairs: int = 8) -> dict[str, Any]:
    """Text bits per byte (the test split of the ``text`` folder or file, default the built-in
    corpus; at most ``max_documents``), passkey retrieval at ``lengths`` and associative recall
    with and without just-read-twice, and the repeat surprisal of verbatim short-term memory
    (``vstm_repeat`` / ``vstm_permute`` / ``vstm_control``, percent; lists of 10 nouns, 13
    intervening words), for a local Hugging Face folder with a tokenizer.json."""
    model, tokenizer = load_pretrained(path)
    if tokenizer is None:
        raise FileNotFoundError(f"probe: {path} has no tokenizer.json; the probes of a "
                                f"pretrained model read text through its own tokenizer")
    documents = read_documents(text) if text else default_documents()
    held_out = [data for name, data in documents if split_of(name) == 2][:max_documents]
    if not held_out:
        raise FileNotFoundError(f"probe: none of the {len(documents)} documents of "
                                f"{text or 'the built-in corpus'} is in the test split "
                                f"(jaxlm.data.text.split_of); give more documents")
    row = {"checkpoint": str(path), "pattern": model.config.pattern,
           "layers": model.config.n_layers, "d_model": model.config.d_model}
    row.update(text_bits_per_byte(model, tokenizer, held_out, context=context))
    row.update(passkey_retrieval(model, tokenizer, lengths=lengths, trials=trials))
    row.update(associative_recall(model, tokenizer, num_pairs=num_pairs, trials=trials))
    row.update(verbatim_memory_summary(model, tokenizer, trials=trials))
    return row
