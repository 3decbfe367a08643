"""Typed run records: result.json written by earlier versions still loads and renders the same,
a newer schema is refused in one line, and a real run's record round-trips through its JSON."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from retain.api import run
from retain.cli import main
from retain.config import RunConfig, TrainConfig
from retain.errors import RecordVersionError
from retain.eval import metrics as M
from retain.models import MLP
from retain.report.columns import COLUMNS, METRIC_COLUMNS, columns_for
from retain.report.console import print_summary
from retain.report.record import CompareRecord, RunRecord, load_record, record_from_dict
from retain.report.render import metrics_rows

# result.json (and its reports, rendered without plots) as written by retain before records were
# typed: a `retain demo` comparison and its finetune run.
FIXTURES = Path(__file__).parent / "fixtures"
OLD_DIRS = ["v1-compare", "v1-run"]


def _old(name: str) -> dict:
    return json.loads((FIXTURES / name / "result.json").read_text())


@pytest.mark.parametrize("name", OLD_DIRS)
def test_old_run_directories_render_as_before(name, tmp_path, capsys):
    shutil.copy(FIXTURES / name / "result.json", tmp_path / "result.json")
    assert main(["report", str(tmp_path), "--no-plots", "-q"]) == 0
    for f in ("report.md", "report.html", "metrics.csv", "matrix.csv"):
        assert (tmp_path / f).read_text() == (FIXTURES / name / f).read_text(), f


@pytest.mark.parametrize("name", OLD_DIRS)
def test_written_json_keeps_the_old_shape(name):
    """External readers of result.json see the same keys, in the same order, with the same
    values."""
    data = _old(name)
    rec = record_from_dict(data)
    assert isinstance(rec, CompareRecord if name == "v1-compare" else RunRecord)
    assert json.dumps(rec.to_dict(), indent=1) == json.dumps(data, indent=1)


def test_records_from_before_later_keys_load_with_defaults(tmp_path):
    """The first schema-1 records had no split, strategy time, strategy stats or lr curves."""
    data = _old("v1-compare")
    for r in data["runs"].values():
        for key in ("split", "strategy_stats"):
            del r[key]
        del r["timing"]["hook_seconds"], r["curves"]["lr_factor"]
        for t in r["timing"]["per_task"]:
            del t["hook_seconds"]
    del data["split"]
    (tmp_path / "result.json").write_text(json.dumps(data))
    rec = load_record(tmp_path / "result.json")
    ft = rec.runs["finetune"]
    assert rec.split == ft.split == "test" and ft.strategy_stats == []
    assert ft.timing.hook_seconds == 0.0 and ft.timing.per_task[0].hook_seconds == 0.0
    assert ft.curves.lr_factor == [] and len(ft.curves.loss) == 2
    assert main(["report", str(tmp_path), "--no-plots", "-q"]) == 0
    assert "| finetune | 0.162 |" in (tmp_path / "report.md").read_text()


def test_a_newer_schema_is_refused_in_one_line(tmp_path, capsys):
    data = _old("v1-run")
    data["schema_version"] = 2
    (tmp_path / "result.json").write_text(json.dumps(data))
    with pytest.raises(RecordVersionError):
        load_record(tmp_path / "result.json")
    assert main(["report", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "schema version 2" in err and "upgrade retain" in err
    assert not (tmp_path / "report.md").exists()


def test_a_malformed_record_is_one_line(tmp_path, capsys):
    data = _old("v1-run")
    data["timing"]["per_task"] = [{"steps": 3}]  # no task name
    (tmp_path / "result.json").write_text(json.dumps(data))
    assert main(["report", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a retain run record" in err


@pytest.mark.parametrize(
    ("key", "value", "where"),
    [
        ("matrix", "x", "matrix: expected a list, got str"),
        ("matrix", [[0.1, "a"]], "matrix[0][1]: expected a number, got str"),
        ("tasks", [1, 2], "tasks[0]: expected a str, got int"),
        ("timing", {"per_task": 3}, "per_task: expected a list, got int"),
    ],
)
def test_a_value_of_the_wrong_kind_is_one_line(tmp_path, capsys, key, value, where):
    """A hand-edited or damaged result.json (R's rows as a string) ended in an IndexError or
    TypeError traceback inside the renderer."""
    data = _old("v1-run")
    data[key] = value
    (tmp_path / "result.json").write_text(json.dumps(data))
    assert main(["report", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a retain run record" in err and where in err, err
    assert not (tmp_path / "report.md").exists()


def test_unknown_keys_survive_a_rewrite():
    data = {**_old("v1-run"), "added_later": {"a": 1}}
    assert record_from_dict(data).to_dict()["added_later"] == {"a": 1}


def test_a_real_run_record_round_trips(tiny_stream, tmp_path):
    result = run(
        MLP(64, 6, [16]),
        tiny_stream,
        ["finetune"],
        RunConfig(train=TrainConfig(epochs=1, batch_size=32)),
        out_dir=tmp_path,
    )
    rec = result.record
    assert isinstance(rec, RunRecord) and rec.complete
    assert rec.metrics is not None and rec.metrics.avg_accuracy == M.avg_accuracy(rec.matrix)
    assert [t.task for t in rec.timing.per_task] == tiny_stream.task_names
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(rec.to_dict()))
    assert load_record(tmp_path / "result.json").to_dict() == on_disk
    assert on_disk["metrics"]["bwt"] == rec.metrics.bwt and "gap_to_joint" not in on_disk["metrics"]


def test_an_incomplete_record_writes_empty_metrics():
    data = _old("v1-run")
    data.update(status="running", metrics={}, metrics_by_score={})
    rec = record_from_dict(data)
    assert rec.metrics is None and not rec.complete
    assert rec.to_dict()["metrics"] == {}


def test_one_column_specification_for_every_format():
    rec = load_record(FIXTURES / "v1-compare" / "result.json")
    header = metrics_rows(rec)[0]
    shown = columns_for(list(rec.runs.values()))  # tokens/s only for language models
    assert [c.key for c in COLUMNS if c not in shown] == ["tokens_per_s"]
    assert header == ["strategy", "score", *(c.key for c in shown)]
    md = (FIXTURES / "v1-compare" / "report.md").read_text()
    table = next(line for line in md.splitlines() if line.startswith("| strategy | avg"))
    assert (
        table
        == "| "
        + " | ".join(["strategy", *(c.header.format(score="accuracy") for c in shown)])
        + " |"
    )
    buf = io.StringIO()
    print_summary(rec, Console(file=buf, width=200, color_system=None))
    head = next(line for line in buf.getvalue().splitlines() if "strategy" in line)
    assert re.findall(r"[\w/]+", head) == ["strategy", *(c.short for c in COLUMNS if c.short)]
    # Every metric column is a metric the runs compute, defined as retain.eval.metrics defines it.
    computed = set(M.summary([[0.1, 0.1], [0.9, 0.2], [0.5, 0.8]])) | {"gap_to_joint"}
    for c in METRIC_COLUMNS:
        assert c.key in computed
        assert c.key == "gap_to_joint" or c.formula in (M.__doc__ or ""), c.key


def test_metrics_csv_numbers_come_from_the_record():
    rec = load_record(FIXTURES / "v1-compare" / "result.json")
    rows = list(csv.DictReader(io.StringIO((FIXTURES / "v1-compare" / "metrics.csv").read_text())))
    ft = rec.runs["finetune"]
    assert float(rows[0]["bwt"]) == ft.metrics.bwt
    assert float(rows[0]["train_seconds"]) == ft.timing.train_seconds
