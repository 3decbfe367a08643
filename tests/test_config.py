from __future__ import annotations

from pathlib import Path

import pytest

from retain import strategies
from retain.config import (
    SCENARIOS,
    ByColumnScenario,
    RotatedScenario,
    RunConfig,
    SplitScenario,
    StreamConfig,
    apply_overrides,
    from_dict,
    load_config,
)
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
    with pytest.raises(
        ConfigError,
        match=r"train.optimizer must be one of sgd, adam, adamw; got 'adm' \(did you mean 'adam'\?\)",
    ):
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
    out = apply_overrides(
        data,
        ["train.lr=3e-5", "strategies.0.lam=50", "strategies.1.name=replay", "model.hidden=[8, 8]"],
    )
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

    cfg = from_dict(
        RunConfig,
        {
            "stream": {"dataset": "digits", "n_tasks": 5},
            "strategies": [{"name": "ewc", "lam": 10.0}],
        },
    )
    again = from_dict(RunConfig, yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


ROOT = Path(__file__).parent.parent
SHIPPED = sorted(
    [
        *ROOT.glob("examples/*.yaml"),
        *ROOT.glob("bench/configs/*.yaml"),
        *ROOT.glob("tests/configs/*.resolved.yaml"),
    ]
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_and_old_resolved_configs_load_and_round_trip(path):
    """examples/, bench/configs/ and config.resolved.yaml files written by earlier versions (which
    list every scenario's fields, unused ones at their defaults) load, and re-load unchanged."""
    import yaml

    cfg = load_config(path)
    for spec in cfg.strategies:
        strategies.build(spec)
    assert from_dict(RunConfig, yaml.safe_load(cfg.to_yaml())) == cfg
    assert set(yaml.safe_load(cfg.to_yaml())["stream"]) >= set(
        yaml.safe_load(path.read_text()).get("stream", {})
    )


def test_old_resolved_config_keeps_its_scenario_options():
    cfg = load_config(ROOT / "tests/configs/rotated.resolved.yaml")
    assert cfg.stream.options == RotatedScenario(n_tasks=3, angles=[0.0, 90.0, 180.0])


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused_everywhere(value):
    with pytest.raises(ConfigError, match=r"^train.lr must be a finite number, got"):
        load_config(None, [f"train.lr={value}"])
    with pytest.raises(ConfigError, match=r"^stream.angles must be a finite number"):
        load_config(None, ["stream.scenario=rotated", f"stream.angles=[0, {value}]"])
    with pytest.raises(ConfigError, match=r"strategy 'ewc': lam must be a finite number"):
        strategies.build({"name": "ewc", "lam": float(value.replace(".", ""))})


def test_bounds_come_from_field_metadata_with_one_line_messages():
    with pytest.raises(ConfigError, match=r"^stream.validation must be in \[0, 1\), got 1.0$"):
        from_dict(RunConfig, {"stream": {"validation": 1.0}})
    with pytest.raises(ConfigError, match=r"^model.hidden must be >= 1, got \[8, 0\]$"):
        from_dict(RunConfig, {"model": {"hidden": [8, 0]}})
    with pytest.raises(ConfigError, match=r"^stream.n_tasks must be >= 1, got 0$"):
        from_dict(RunConfig, {"stream": {"n_tasks": 0}})
    with pytest.raises(
        ConfigError, match=r"^strategies.0: strategy 'replay': ratio must be in \[0, 1\)"
    ):
        strategies.build({"name": "replay", "ratio": 1.5}, "strategies.0")
    # Python construction is checked by the same loop.
    with pytest.raises(ValueError, match=r"^gamma must be in \[0, 1\], got 2.0$"):
        strategies.get("ewc")(gamma=2.0)
    with pytest.raises(ValueError, match=r"^mode must be one of separate, online; got 'onlin'"):
        strategies.get("ewc")(mode="onlin")


def test_scenarios_are_one_registry():
    assert list(SCENARIOS) == [
        "split",
        "permuted",
        "rotated",
        "iid",
        "prior_shift",
        "by_column",
        "files",
        "text",
    ]
    with pytest.raises(
        ConfigError,
        match=r"stream.scenario must be one of .*got 'permutd' \(did you mean 'permuted'\?\)",
    ):
        from_dict(RunConfig, {"stream": {"scenario": "permutd"}})
    with pytest.raises(
        ConfigError, match=r"unknown key 'stream.n_taks' \(did you mean 'n_tasks'\?\)"
    ):
        from_dict(RunConfig, {"stream": {"n_taks": 3}})
    # Another scenario's field at its default (as resolved configs write it) is accepted; a value is not.
    assert (
        from_dict(RunConfig, {"stream": {"scenario": "split", "max_angle": 180.0}}).stream.options
        == SplitScenario()
    )
    with pytest.raises(
        ConfigError, match=r"stream.max_angle is not used by scenario 'split' \(it reads: n_tasks, "
    ):
        from_dict(RunConfig, {"stream": {"scenario": "split", "max_angle": 90}})
    # Python: the options as a dataclass or a mapping.
    cfg = StreamConfig(scenario="by_column", options={"column": "sex"})
    assert cfg.options == ByColumnScenario(column="sex")
    with pytest.raises(ConfigError, match="stream.column is required for scenario 'by_column'"):
        StreamConfig(scenario="by_column")


def test_model_pretrained_beside_the_config_resolves_against_its_folder(tmp_path, monkeypatch):
    from retain.config import load_config

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "models" / "m").mkdir(parents=True)
    (tmp_path / "cfg" / "c.yaml").write_text("model: {name: hf, pretrained: models/m}\n")
    (tmp_path / "cfg" / "d.yaml").write_text("model: {name: hf, pretrained: org/some-model}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config("cfg/c.yaml").model.pretrained == str(tmp_path / "cfg" / "models" / "m")
    assert load_config("cfg/d.yaml").model.pretrained == "org/some-model"  # a hub id stays
