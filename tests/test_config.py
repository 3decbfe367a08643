from __future__ import annotations

import pytest

from retain.config import RunConfig, apply_overrides, from_dict, load_config
from retain.errors import ConfigError


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'modle' \(did you mean 'model'\?\)"):
        from_dict(RunConfig, {"modle": {}})
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch' \(did you mean 'epochs'\?\)"):
        from_dict(RunConfig, {"train": {"epoch": 3}})


def test_wrong_types_are_named():
    with pytest.raises(ConfigError, match="train.epochs must be an integer, got 'three'"):
        from_dict(RunConfig, {"train": {"epochs": "three"}})
    with pytest.raises(ConfigError, match="train.lr must be a number"):
        from_dict(RunConfig, {"train": {"lr": [1]}})
    with pytest.raises(ConfigError, match=r"train.optimizer must be one of sgd, adam, adamw; got 'adm' \(did you mean 'adam'\?\)"):
        from_dict(RunConfig, {"train": {"optimizer": "adm"}})
    with pytest.raises(ConfigError, match="model.hidden.1 must be an integer"):
        from_dict(RunConfig, {"model": {"hidden": [10, "x"]}})


def test_yaml_11_float_strings_are_accepted():
    cfg = from_dict(RunConfig, {"train": {"lr": "1e-3"}})
    assert cfg.train.lr == pytest.approx(1e-3)


def test_values_are_validated():
    with pytest.raises(ConfigError, match="train.lr must be > 0"):
        from_dict(RunConfig, {"train": {"lr": 0}})
    with pytest.raises(ConfigError, match="stream.proportions is required"):
        from_dict(RunConfig, {"stream": {"scenario": "prior_shift"}})


def test_scenario_fields_must_belong_to_the_scenario():
    with pytest.raises(ConfigError, match="stream.classes_per_task is not used by scenario 'iid'"):
        from_dict(RunConfig, {"stream": {"scenario": "iid", "classes_per_task": 2}})


def test_overrides_nested_and_list_indices():
    data = {"strategies": [{"name": "ewc", "lam": 1}], "train": {"lr": 0.1}}
    out = apply_overrides(data, ["train.lr=3e-5", "strategies.0.lam=50", "strategies.1.name=replay",
                                 "model.hidden=[8, 8]"])
    assert out["train"]["lr"] == 3e-5 or out["train"]["lr"] == "3e-5"
    assert out["strategies"] == [{"name": "ewc", "lam": 50}, {"name": "replay"}]
    assert out["model"]["hidden"] == [8, 8]
    assert data["train"]["lr"] == 0.1  # the input is not modified
    with pytest.raises(ConfigError, match="must look like key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="past the end"):
        apply_overrides({"strategies": []}, ["strategies.3.name=x"])


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "exp.yaml"
    good.write_text("train:\n  lr: 0.5\n")
    cfg = load_config(good, ["seed=3"])
    assert (cfg.name, cfg.seed, cfg.train.lr) == ("exp", 3, 0.5)


def test_resolved_yaml_round_trips(tmp_path):
    import yaml

    cfg = from_dict(RunConfig, {"stream": {"dataset": "digits", "n_tasks": 5},
                                "strategies": [{"name": "ewc", "lam": 10.0}]})
    again = from_dict(RunConfig, yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
