"""Config overrides: typed parsing, named errors listing the valid choices, JSON round trips."""

import pytest

from jaxlm.config import (Config, ConfigError, apply_overrides, config_keys, load_config,
                          save_config)


def test_overrides_parse_by_type():
    config = apply_overrides(Config(), [
        "model.d_model=32", "train.learning_rate=1e-2", "train.tensorboard=false",
        "model.attention.window=16", "model.attention.n_kv_heads=none", "name=exp",
        "model.attention.n_heads=2",
    ])
    assert config.model.d_model == 32
    assert config.train.learning_rate == 0.01
    assert config.train.tensorboard is False
    assert config.model.attention.window == 16
    assert config.model.attention.n_kv_heads is None
    assert config.name == "exp"


def test_mapping_overrides_take_python_values():
    config = apply_overrides(Config(), {"model.pattern": "attention_window",
                                        "train.learning_rate": 1})
    assert config.model.pattern == "attention_window"
    assert config.train.learning_rate == 1.0


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.d_modle'.*model\.d_model"):
        apply_overrides(Config(), ["model.d_modle=3"])
    with pytest.raises(ConfigError, match="unknown config key 'trian.steps'"):
        apply_overrides(Config(), ["trian.steps=3"])


@pytest.mark.parametrize("override, match", [
    ("model.d_model=abc", r"model\.d_model='abc' is not a valid int"),
    ("model.attention.window=0", "window must be a positive integer"),
    ("model.pattern=attention,mamba9", "unknown mixers.*registered mixers"),
    ("train.schedule=step",
     r"train\.schedule must be one of \['cosine', 'linear', 'constant', 'wsd', 'power'\]"),
    ("data.task=wikitext", r"data\.task='wikitext' is unknown; expected one of \[.*'mqar'"),
    ("model", "must look like key=value"),
    ("model.attention=3", "is a section"),
    ("model.vocab_size=16", "smaller than the task's vocab_size"),
    ("probe.lengths=128,x", r"probe\.lengths must be comma-separated positive integers"),
    ("data.set_disjointness.order=random", r"set_disjointness\.order='random'"),
])
def test_bad_values_are_named(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(Config(), [override])


def test_json_round_trip(tmp_path):
    config = apply_overrides(Config(), ["model.attention.window=7", "train.steps=12"])
    save_config(config, tmp_path / "config.json")
    assert load_config(tmp_path / "config.json") == config


def test_config_keys_cover_nested_sections():
    keys = config_keys(Config())
    assert "model.attention.window" in keys and "data.mqar.seq_len" in keys


def test_presets_and_length_sweeps_fail_clearly(tmp_path):
    from jaxlm.data import DataConfig
    from jaxlm.probes import with_seq_len
    from jaxlm.runner import load_experiment
    path = tmp_path / "e.py"
    path.write_text("from jaxlm.config import Config\nPRESETS = {'full': {'train.steps': 7}}\n"
                    "def config():\n    return Config()\n")
    assert load_experiment(path, preset="full").base.train.steps == 7
    with pytest.raises(ConfigError, match="has no preset 'huge'; presets: \\['full'\\]"):
        load_experiment(path, preset="huge")
    assert with_seq_len(DataConfig(), 128).mqar.seq_len == 128
    with pytest.raises(ValueError, match="'set_disjointness' has no seq_len setting"):
        with_seq_len(DataConfig(task="set_disjointness"), 64)


@pytest.mark.parametrize("override, match", [
    ("train.learning_rate=inf", r"train\.learning_rate must be a finite number, got inf"),
    ("train.weight_decay=nan", r"train\.weight_decay must be .*got nan"),
    ("model.d_model=30", r"model\.attention\.n_heads=4 must divide d_model=30"),
])
def test_non_finite_values_and_heads_that_do_not_divide_are_rejected(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(Config(), [override])
    with pytest.raises(ConfigError, match="deltanet.n_heads=4 must divide d_model=30"):
        apply_overrides(Config(), ["model.pattern=deltanet", "model.d_model=30"])


def test_unknown_key_lists_the_closest_few_not_all():
    with pytest.raises(ConfigError) as error:
        apply_overrides(Config(), ["model.d_modle=3"])
    assert len(str(error.value)) < 300 and "'model.d_model'" in str(error.value)
    with pytest.raises(ConfigError, match=r"valid names under model: \['model.kind'"):
        apply_overrides(Config(), ["model.zzzz=3"])


def test_resume_changes_allow_only_the_safe_keys():
    from jaxlm.config import resume_changes
    old = Config()
    assert resume_changes(old, apply_overrides(old, ["train.steps=5", "probe.seed=3"])) == {
        "probe.seed": (1234, 3), "train.steps": (1000, 5)}
    with pytest.raises(ConfigError, match=r"model\.pattern: 'attention' -> 'mamba'"):
        resume_changes(old, apply_overrides(old, ["model.pattern=mamba", "train.steps=5"]))
