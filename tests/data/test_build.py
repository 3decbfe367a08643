"""What build_stream records about the data it used (the run record's ``data``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from retain.config import StreamConfig, load_config
from retain.data.build import build_stream


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def two_files(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for name, shift in (("jan", 0.0), ("feb", 2.0)):
        rows = ["a,b,city,label"]
        for i in range(50):
            a, b = rng.normal(shift), rng.normal()
            rows.append(
                f"{a:.3f},{b:.3f},{'x' if i % 2 else 'y'},{'yes' if a + b > shift else 'no'}"
            )
        files.append(_csv(tmp_path / f"{name}.csv", rows))
    return files


def test_files_run_records_sources_target_columns_sizes_and_scaling(two_files):
    cfg = StreamConfig(
        scenario="files",
        options={"files": [str(f) for f in two_files]},
        validation=0.2,
        test_fraction=0.2,
    )
    stream, info = build_stream(cfg, seed=0)
    assert info["sources"] == [
        {
            "file": str(f.absolute()),
            "bytes": f.stat().st_size,
            "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
        }
        for f in two_files
    ]
    # 'label' was not named: it was picked by its name, and the record says so.
    assert info["target"] == {"column": "label", "chosen_automatically": True}
    assert info["objective"] == "classification"
    assert info["features"] == ["a", "b"]
    assert info["dropped"] == {"city": "text"}
    assert "label" in info["encoded"] and "sorted" in info["encoded"]["label"]
    assert [t["name"] for t in info["tasks"]] == ["jan", "feb"]
    for t, task in zip(info["tasks"], stream.tasks):
        assert (t["train"], t["validation"], t["test"]) == (
            len(task.train),
            len(task.val),
            len(task.test),
        )
        assert t["train"] + t["validation"] + t["test"] == 50 and t["test"] == 10
    std = info["standardized"]
    assert std["inputs"] and std["statistics_from"] == "jan training data"
    assert len(std["mean"]) == len(std["std"]) == 2
    assert abs(std["mean"][0]) < 0.5 and std["mean"][0] == float(f"{std['mean'][0]:.4g}")


def test_named_target_unscaled_images_and_by_column(tmp_path):
    _, info = build_stream(
        StreamConfig(scenario="split", options={"n_tasks": 2, "classes": [0, 1, 2, 3]})
    )
    assert info["sources"] == [{"builtin": "digits"}] and info["standardized"] is False
    assert "target" not in info and info["features"] is None
    _, info = build_stream(
        StreamConfig(dataset="diabetes", scenario="by_column", options={"column": "sex"})
    )
    assert info["dropped"] == {"sex": "defines the tasks (scenario by_column)"}
    assert "sex" not in info["features"] and info["standardized"]["target"]
    data = _csv(tmp_path / "d.csv", ["a,b,y"] + [f"{i},{i % 3},{i % 2}" for i in range(40)])
    _, info = build_stream(
        StreamConfig(dataset=str(data), target="y", features=["a"], scenario="iid")
    )
    assert info["target"] == {"column": "y", "chosen_automatically": False}
    assert info["dropped"] == {"b": "not in stream.features"} and info["encoded"] == {}
    assert [t["test"] for t in info["tasks"]] == [4, 4]


def test_resolved_config_of_a_files_run_names_no_dataset(two_files, tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"stream: {{scenario: files, files: [{two_files[0]}, {two_files[1]}]}}\n")
    resolved = load_config(cfg_path).to_yaml()
    assert "digits" not in resolved and "dataset: null" in resolved
    # A resolved config written before (with the old default) still loads.
    old = tmp_path / "old.yaml"
    old.write_text(resolved.replace("dataset: null", "dataset: digits"))
    assert load_config(old).stream.dataset is None
    assert load_config(None).stream.dataset == "digits"
