"""Reports of sweeps with a seed axis: one row per setting with the mean and range over seeds,
and runs that differ in anything but the seed kept apart."""

import pytest

from jaxlm.runner import over_seeds, write_report


def mqar_row(pattern, width, seed, accuracy):
    return {"run": f"pattern={pattern},d_model={width},seed={seed}", "task": "mqar",
            "model": pattern, "d_model": width, "layers": 2, "params": 1000 * width,
            "seq_len": 64, "steps": 100, "seed": seed, "kv_pairs": 4, "accuracy": accuracy,
            "baseline": 0.25, "train_s": 10.0 + seed}


ROWS = [mqar_row(p, w, s, acc) for (p, w), accs in {
    ("attention", 32): [0.5, 0.9, 0.7], ("attention", 64): [1.0, 0.98, 0.99],
    ("h3", 32): [0.2, 0.3, 0.25], ("h3", 64): [0.4, 0.35, 0.6]}.items()
    for s, acc in enumerate(accs)]


def test_seeds_merge_into_mean_and_range():
    merged = over_seeds(ROWS)
    assert [r["run"] for r in merged] == ["pattern=attention,d_model=32",
                                          "pattern=attention,d_model=64",
                                          "pattern=h3,d_model=32", "pattern=h3,d_model=64"]
    first = merged[0]
    assert first["accuracy"] == pytest.approx(0.7)
    assert (first["accuracy_min"], first["accuracy_max"], first["seeds"]) == (0.5, 0.9, 3)
    assert first["d_model"] == 32 and first["params"] == 32000 and "seed" not in first
    assert first["train_s"] == pytest.approx(11.0)


def test_runs_without_a_seed_axis_are_not_merged():
    """Two runs of one setting that differ in an axis the table does not show (here a learning
    rate) are not seeds of each other."""
    rows = [{**ROWS[0], "run": "pattern=attention,learning_rate=0.001"},
            {**ROWS[1], "run": "pattern=attention,learning_rate=0.01"}]
    assert over_seeds(rows) is None
    assert over_seeds(ROWS[:1]) is None


def test_report_shows_the_mean_table_then_every_run(tmp_path):
    text = write_report(ROWS, tmp_path, title="mqar seeds")
    mean_table, runs_table = text.split("Every run:")
    assert "Mean over seeds:" in mean_table and "| seeds |" not in runs_table
    assert mean_table.count("| attention |") == 2 and runs_table.count("| attention |") == 6
    assert "accuracy_min" in mean_table and "| seed |" in runs_table
    assert (tmp_path / "results.png").stat().st_size > 0


def test_seed_axis_is_added_once():
    from jaxlm.config import Config, ConfigError
    from jaxlm.runner import Experiment, with_seeds
    experiment = Experiment("x.py", Config(), [{"model.d_model": 32}, {"model.d_model": 64}])
    seeded = with_seeds(experiment, 2)
    assert seeded.points == [{"model.d_model": 32, "train.seed": 0},
                             {"model.d_model": 32, "train.seed": 1},
                             {"model.d_model": 64, "train.seed": 0},
                             {"model.d_model": 64, "train.seed": 1}]
    assert with_seeds(experiment, 1) is experiment
    with pytest.raises(ConfigError, match="already sets train.seed"):
        with_seeds(seeded, 2)


def test_only_keeps_a_slice_of_the_grid():
    """``with_only`` (``jaxlm sweep --only``) keeps the points with the given values, read by
    the field's type; a key a point leaves at the base value matches it; no match is an error
    listing the sweep's values."""
    from jaxlm.config import Config, ConfigError
    from jaxlm.runner import Experiment, grid, with_only, with_seeds
    base = Config()
    points = grid({"model.pattern": ["attention", "gla"], "model.d_model": [32, 64]})
    experiment = Experiment("x.py", base, points + [{"train.steps": 7}])
    assert with_only(experiment, ["model.d_model=32"]).points == [
        {"model.pattern": "attention", "model.d_model": 32},
        {"model.pattern": "gla", "model.d_model": 32}]
    assert with_only(experiment, ["model.d_model=32", "model.pattern=gla"]).points == [
        {"model.pattern": "gla", "model.d_model": 32}]
    at_base = with_only(experiment, [f"model.d_model={base.model.d_model}"]).points
    assert {"train.steps": 7} in at_base
    assert with_only(experiment, []).points == experiment.points
    with pytest.raises(ConfigError, match=r"no sweep point has model.d_model=48 .*32, 64"):
        with_only(experiment, ["model.d_model=48"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        with_only(experiment, ["model.d_model"])
    with pytest.raises(ConfigError, match="--only model.width=3: .*width"):
        with_only(experiment, ["model.width=3"])
    # A slice keeps the whole sweep's run names and tabulates the whole sweep; seeds apply
    # to both.
    sliced = with_only(experiment, ["model.pattern=gla"])
    assert sliced.run_names() == ["pattern=gla,d_model=32", "pattern=gla,d_model=64"]
    assert sliced.tabulated_names() == experiment.run_names()
    seeded = with_seeds(sliced, 2)
    assert seeded.run_names() == [f"pattern=gla,d_model={w},seed={s}" for w in (32, 64)
                                  for s in (0, 1)]
    assert len(seeded.tabulated_names()) == 2 * len(experiment.points)


def test_only_reads_a_value_within_each_point():
    """token_free.py's subword point sets data.text.subword_vocab and model.vocab_size
    together: --only data.text.subword_vocab=1024 finds it although the base config alone
    would refuse that value."""
    import pathlib

    from jaxlm.runner import load_experiment, with_only
    path = pathlib.Path(__file__).parents[1] / "experiments" / "token_free.py"
    points = with_only(load_experiment(path), ["data.text.subword_vocab=1024"]).points
    assert [p["data.text.subword_vocab"] for p in points] == [1024]


def test_a_sweep_axis_the_columns_do_not_show_gets_a_column(tmp_path):
    """Runs that differ only in an axis no column shows (here ``train.input_mask_rate``) get
    that axis as a column, after ``model``; an axis a column already shows (``d_model``) or
    the model (``pattern``) does not."""
    rows = [{**mqar_row(p, 64, s, acc), "run": f"pattern={p},input_mask_rate={rate},seed={s}"}
            for p, rate, s, acc in [("attention", 0.0, 0, 0.9), ("attention", 0.0, 1, 0.8),
                                    ("attention", 0.15, 0, 0.3), ("attention", 0.15, 1, 0.2),
                                    ("h3", 0.0, 0, 0.4), ("h3", 0.0, 1, 0.4),
                                    ("h3", 0.15, 0, 0.3), ("h3", 0.15, 1, 0.3)]]
    text = write_report(rows, tmp_path)
    assert "| model | input_mask_rate | d_model |" in text
    assert "| attention | 0.15 | 64 |" in text  # the mean over seeds, and every run
    assert (tmp_path / "results.csv").read_text().splitlines()[0].startswith(
        "model,input_mask_rate,d_model")
    plain = write_report(ROWS, tmp_path)  # d_model and pattern are columns already
    assert "input_mask_rate" not in plain and "| model | d_model |" in plain


def test_run_names_parse_back_with_commas_in_values():
    """One parser reads run names for the report: values may hold commas (a hybrid's pattern),
    and taking out an axis leaves the rest as the name spells it."""
    from jaxlm.runner.experiment import parse_run_name, run_name, run_name_without
    point = {"model.pattern": "deltanet,attention_window", "train.learning_rate": 0.01,
             "train.seed": 1}
    name = run_name(point)
    assert parse_run_name(name) == {"pattern": "deltanet,attention_window",
                                    "learning_rate": "0.01", "seed": "1"}
    assert (run_name_without(name, ["seed"])
            == "pattern=deltanet,attention_window,learning_rate=0.01")
    assert run_name_without(name, ["learning_rate", "seed"]) == "pattern=deltanet,attention_window"
    assert run_name_without(name, ["pattern"]) == "learning_rate=0.01,seed=1"
    assert run_name_without("003-pattern=gla,seed=2", ["seed"]) == "003-pattern=gla"


def test_best_over_groups_runs_whose_pattern_holds_a_comma():
    from jaxlm.runner import best_over
    rows = [{"run": f"pattern={p},learning_rate={lr}", "model": p, "accuracy": acc}
            for p, lr, acc in [("deltanet,attention", 0.01, 0.9),
                               ("deltanet,attention", 0.001, 0.5),
                               ("gla", 0.01, 0.2), ("gla", 0.001, 0.6)]]
    best = {row["run"]: row for row in best_over(rows, ["train.learning_rate"])}
    assert set(best) == {"pattern=deltanet,attention", "pattern=gla"}
    assert best["pattern=deltanet,attention"]["learning_rate"] == "0.01"
    assert best["pattern=gla"]["learning_rate"] == "0.001"
    assert best["pattern=gla"]["candidates"] == 2
