"""`retain init`: the config it writes for a user's tables loads, builds the stream it describes,
and explains each choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from retain.cli import main
from retain.config import load_config
from retain.data.build import build_stream
from retain.init import init_config

ROOT = Path(__file__).resolve().parents[1]


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def tables(tmp_path):
    rng = np.random.default_rng(0)

    def rows(n, shift):
        out = []
        for i in range(n):
            a, b = rng.normal(shift), rng.normal()
            note = "" if i % 10 else "NA"
            out.append(
                f"{a:.3f},{b:.3f},{i % 4},{'n' if i % 3 else 's'},{note or 1.5},7,"
                f"{'yes' if a > shift else 'no'}"
            )
        return out

    header = "a,b,k,region,gappy,const,bought"
    return [
        _csv(tmp_path / "jan.csv", header, rows(60, 0.0)),
        _csv(tmp_path / "feb.csv", header, rows(40, 1.0)),
    ]


def test_two_tables_give_a_files_config_that_loads_and_builds(tables, tmp_path):
    out = tmp_path / "cfg" / "exp.yaml"
    text = init_config(tables, out=out)
    out.parent.mkdir()
    out.write_text(text)
    data = yaml.safe_load(text)
    stream = data["stream"]
    # Paths are written relative to the config's folder, and resolve from there.
    assert stream["files"] == ["../jan.csv", "../feb.csv"] and stream["scenario"] == "files"
    # No column is named like a target: the last one is taken, and the comment says it is a guess.
    assert stream["target"] == "bought" and "guessed: the last column" in text
    assert stream["objective"] == "classification" and "text values, 2 classes" in text
    assert stream["features"] == ["a", "b", "k"]
    assert "left out: region: text" in text and "left out: gappy: 10 missing values" in text
    assert "left out: const: the same value everywhere" in text
    assert "--strategies finetune,joint,replay,ewc,lwf,si" in text
    cfg = load_config(out)
    assert cfg.stream.options.files == [str(t) for t in tables]
    built, info = build_stream(cfg.stream, cfg.seed)
    assert [t["name"] for t in info["tasks"]] == [
        "jan",
        "feb",
    ] and built.objective == "classification"
    assert data["model"]["hidden"] == [64, 64] and data["train"]["patience"] >= 1


def test_objective_target_and_by_column(tmp_path):
    rows = [f"{i % 5},{i * 0.5:.1f},{i % 2},{i % 37}" for i in range(200)]
    data = _csv(tmp_path / "d.csv", "x,z,site,visits", rows)
    text = init_config([data], target="visits", by="site", out=tmp_path / "c.yaml")
    stream = yaml.safe_load(text)["stream"]
    # 37 distinct whole numbers are a count, not 37 classes.
    assert stream["objective"] == "regression" and "37 distinct values" in text
    assert stream["scenario"] == "by_column" and stream["column"] == "site"
    assert stream["groups"] == [0, 1] and stream["features"] == ["x", "z"]
    assert stream["dataset"] == "d.csv" and "--strategies finetune,joint,replay,si,mas" in text
    cfg = load_config(_write(tmp_path / "c.yaml", text))
    _, info = build_stream(cfg.stream, cfg.seed)
    assert [t["name"] for t in info["tasks"]] == ["site=0", "site=1"]
    # A column named like a target is taken as it, and one file without --by gives two halves.
    named = _csv(tmp_path / "n.csv", "label,x", [f"{i % 3},{i}" for i in range(30)])
    text = init_config([named], out=tmp_path / "n.yaml")
    stream = yaml.safe_load(text)["stream"]
    assert stream["target"] == "label" and "guessed from its name" in text
    assert stream["scenario"] == "iid" and stream["objective"] == "classification"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_example_config_is_what_init_writes():
    example = ROOT / "examples" / "my_two_csvs.yaml"
    files = [ROOT / "examples" / "data" / f for f in ("site1.csv", "site5.csv")]
    written = init_config(files, target="mdvis", out=example)
    assert example.read_text().endswith(
        "\n"
        + written.replace(
            "retain compare " + str(example), "retain compare examples/my_two_csvs.yaml"
        )
    )
    cfg = load_config(example)
    assert cfg.stream.target == "mdvis" and cfg.stream.objective == "regression"
    assert all(Path(f).is_file() for f in cfg.stream.options.files)
    total = sum(f.stat().st_size for f in (ROOT / "examples" / "data").glob("*.csv"))
    assert total < 300_000


def test_cli_init_writes_once_and_reports_bad_input_in_one_line(tables, tmp_path, capsys):
    out = tmp_path / "c.yaml"
    argv = ["init", *map(str, tables), "--target", "bought", "--out", str(out)]
    assert main(argv) == 0
    assert f"retain compare {out} --strategies" in capsys.readouterr().out
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    capsys.readouterr()
    assert main(["init", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "nope.csv") in err
    assert (
        main(["init", str(tables[0]), "--target", "bogth", "--out", str(tmp_path / "y.yaml")]) == 2
    )
    assert "did you mean 'bought'" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists() and not (tmp_path / "y.yaml").exists()
