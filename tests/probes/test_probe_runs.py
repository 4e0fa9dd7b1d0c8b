"""Every probe end to end through the runner at tiny sizes: train a few steps, probe, report
(table with the task's columns and the papers' numbers, plot)."""

import json

import pytest

from jaxlm.config import Config, apply_overrides
from jaxlm.runner import Experiment, markdown_table, run_sweep

TINY = ["model.d_model=16", "model.n_layers=1", "model.attention.n_heads=2",
        "train.steps=3", "train.batch_size=8", "train.log_every=3", "train.warmup_steps=1",
        "train.eval_batches=1", "train.tensorboard=false", "probe.num_examples=16",
        "probe.batch_size=16"]

CASES = {
    "linear_regression": ["data.linear_regression.n_dims=3",
                          "data.linear_regression.num_points=7"],
    "regular_language": ["model.vocab_size=20", "data.regular_language.seq_len=32",
                         "data.regular_language.max_string_len=6"],
    "set_disjointness": ["model.vocab_size=32", "data.set_disjointness.vocab_size=32",
                         "data.set_disjointness.len_a=2", "data.set_disjointness.len_b=6"],
    "induction_head": ["model.vocab_size=16", "data.induction_head.seq_len=24",
                       "probe.lengths=48"],
    "state_tracking": ["model.vocab_size=6", "data.state_tracking.group=s3",
                       "data.state_tracking.seq_len=16", "probe.lengths=32"],
    "needle_threading": ["model.vocab_size=32", "data.needle_threading.vocab_size=32",
                         "data.needle_threading.seq_len=16", "data.needle_threading.max_hops=2",
                         "probe.lengths=24"],
    "text": ["model.vocab_size=260", "model.kind=hierarchical", "model.words.d_local=16",
             "model.words.max_word_len=6", "data.text.seq_len=32"],
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_probe_run(task, tmp_path):
    base = apply_overrides(Config(name=task), TINY + [f"data.task={task}"] + CASES[task])
    rows = run_sweep(Experiment(tmp_path / "x.py", base, [{}]), tmp_path, progress=False,
                     log=lambda *_: None)
    row = rows[0]
    assert row["task"] == task
    text = (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 0
    if task == "linear_regression":
        assert set(row["curve"]) == {"model", "least_squares", "ridge", "averaging",
                                     "nearest_3", "zero"}
        assert len(row["curve"]["model"]) == 7 and "error@3" in row and "least_squares@3" in row
        assert "| n_dims |" in text
    elif task == "regular_language":
        assert all(0 <= row[k] <= 1 for k in ("accuracy", "ngram_1", "ngram_2", "ngram_3",
                                              "tv_distance"))
        assert "| tv_distance |" in text
        assert row["baseline"] == max(row["ngram_1"], row["ngram_2"], row["ngram_3"])
    elif task == "set_disjointness":
        assert 0 <= row["accuracy_a_first"] <= 1 and 0 <= row["accuracy_b_first"] <= 1
        assert row["baseline"] == 0.5
    elif task == "text":
        assert row["model"] == "hierarchical (attention)"
        assert 0 < row["bits_per_byte"] < 12 and 0 < row["bits_per_byte_cipher"] < 12
        assert 4 < row["unigram"] < 5.5 and 2 < row["reduction"] < 12
        assert 4.5 < row["in_context_unigram"] < 7 and 3 < row["in_context_ppm"] < 7
        assert row["bytes_per_second"] > 0
    elif task == "needle_threading":
        assert {"hops_1", "hops_2", "accuracy@24"} <= set(row) and row["baseline"] == 1 / 7
        assert 0.2 < row["one_hop"] < 0.8  # hops uniform in 1..2
        assert "| max_hops |" in text and "Needle Threading" in text
    elif task == "state_tracking":
        assert {"accuracy@2", "accuracy@4", "accuracy@8", "accuracy@32"} <= set(row)
        assert 0 <= row["mean"] <= 1 and row["baseline"] == 1 / 6
        assert "| group |" in text and "FlashRNN" in text
    else:
        assert "accuracy@48" in row and row["seq_len"] == 24
        assert "H3 Table 1" in text  # the published number for attention, beside ours
    assert "Published:" in text
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["task"] == task
    assert markdown_table(rows).count("\n") == 2
