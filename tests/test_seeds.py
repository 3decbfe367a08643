"""Runs over several seeds (``seeds: [...]``): one run per seed, reported as mean ± std."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from retain.cli import main
from retain.config import RunConfig, load_config
from retain.errors import ConfigError
from retain.report.record import Metrics, PerClass, RunRecord, load_record
from retain.report.seeds import seeds_record

CONFIG = """
stream: {dataset: digits, scenario: split, n_tasks: 2, classes: [0, 1, 2, 3], limit_train: 200}
model: {hidden: [16]}
train: {epochs: 1, batch_size: 32, lr: 0.05}
output: {plots: false}
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG + "seeds: [3, 5]\n")
    return path


def _json(path):
    return json.loads(path.read_text())


def test_record_means_and_sample_std():
    def rec(final, bwt, correct):
        return RunRecord(
            tasks=["a", "b"],
            matrix=[[0.0, 0.0], [0.8, 0.0], final],
            metrics=Metrics(avg_accuracy=sum(final) / 2, bwt=bwt, forgetting_per_task=[-bwt]),
            per_class=PerClass(counts=[[[10]]], correct=[[[correct]]]),
        )

    out = seeds_record([rec([0.4, 0.9], -0.4, 3), rec([0.6, 0.7], -0.2, 5)], [0, 1], ["s0", "s1"])
    assert out.matrix[2] == pytest.approx([0.5, 0.8])
    assert out.spread.matrix_std[2] == pytest.approx([statistics.stdev([0.4, 0.6])] * 2)
    assert out.spread.matrix_std[0] == [0.0, 0.0]
    assert out.metrics.bwt == pytest.approx(-0.3)
    assert out.spread.metrics_std["bwt"] == pytest.approx(statistics.stdev([-0.4, -0.2]))
    assert out.metrics.forgetting_per_task == pytest.approx([0.3])
    assert "fwt" not in out.spread.metrics_std  # None in every seed: no spread to state
    assert out.per_class.correct == [[[8]]] and out.per_class.counts == [[[20]]]  # pooled
    assert out.spread.avg_per_seed == pytest.approx([0.65, 0.65])
    assert out.seed is None and out.complete
    # The record round-trips through JSON with its spread.
    again = RunRecord.from_dict(json.loads(json.dumps(out.to_dict())))
    assert again.spread == out.spread


def test_seeds_config_is_checked():
    assert RunConfig(seeds=[0, 2]).seeds == [0, 2]
    with pytest.raises(ConfigError, match="seeds is empty"):
        RunConfig(seeds=[])
    with pytest.raises(ConfigError, match="repeated"):
        RunConfig(seeds=[1, 1])
    with pytest.raises(ConfigError, match="seeds"):
        RunConfig(seeds=[-1])


def test_run_over_seeds_is_the_mean_of_single_seed_runs(config, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "-q"]) == 0
    seeds = [_json(out / f"seed-{s}" / "result.json") for s in (3, 5)]
    assert [r["seed"] for r in seeds] == [3, 5]
    top = _json(out / "result.json")
    avgs = [r["metrics"]["avg_accuracy"] for r in seeds]
    assert avgs[0] != avgs[1]  # the seeds really differ
    assert top["metrics"]["avg_accuracy"] == pytest.approx(statistics.fmean(avgs))
    assert top["spread"]["seeds"] == [3, 5]
    assert top["spread"]["metrics_std"]["avg_accuracy"] == pytest.approx(statistics.stdev(avgs))
    # A seed of the run is the same run as a single-seed run with that seed.
    single = tmp_path / "single"
    assert main(["run", str(config), "--out", str(single), "-q", "seeds=null", "seed=5"]) == 0
    assert _json(single / "result.json")["matrix"] == seeds[1]["matrix"]
    # Every report says mean ± std.
    report = (out / "report.md").read_text()
    assert "mean over 2 seeds (3, 5)" in report
    avg, std = top["metrics"]["avg_accuracy"], top["spread"]["metrics_std"]["avg_accuracy"]
    assert f"| {avg:.3f} ± {std:.3f} |" in report
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert float(rows[0]["avg_accuracy_std"]) == pytest.approx(std)
    assert rows[0]["seeds"] == "3 5"
    matrix = list(csv.DictReader((out / "matrix.csv").open()))
    assert all(r["std"] != "" for r in matrix)
    assert "±" in capsys.readouterr().out


def test_resume_reads_finished_seeds_back(config, tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "-q"]) == 0
    before = _json(out / "result.json")
    kept = (out / "seed-3" / "result.json").stat().st_mtime_ns
    # As if the run had been killed while training the second seed.
    (out / "seed-5" / "result.json").unlink()
    (out / "result.json").unlink()
    assert main(["run", str(config), "--out", str(out), "--resume", "-q"]) == 0
    assert (out / "seed-3" / "result.json").stat().st_mtime_ns == kept
    after = _json(out / "result.json")
    assert after["matrix"] == before["matrix"]
    assert after["spread"] == before["spread"]


def test_compare_over_seeds_pairs_the_gap_to_joint(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG + "seeds: [0, 1]\n")
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--strategies", "finetune,joint", "--out", str(out)]) == 0
    rec = load_record(out / "result.json")
    fin, joint = rec.runs["finetune"], rec.runs["joint"]
    assert (out / "finetune" / "seed-1" / "result.json").is_file()
    gaps = [j - f for j, f in zip(joint.spread.avg_per_seed, fin.spread.avg_per_seed)]
    assert fin.metrics.gap_to_joint == pytest.approx(statistics.fmean(gaps))
    assert fin.spread.metrics_std["gap_to_joint"] == pytest.approx(statistics.stdev(gaps))
    assert rec.seed is None
    assert "not reliable" in (out / "report.md").read_text()


def test_seeds_override_from_the_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    assert load_config(path, ["seeds=[0,1,2]"]).seeds == [0, 1, 2]


def test_suites_are_averaged_over_seeds():
    def rec(before, after):
        return RunRecord(
            tasks=["t"],
            matrix=[[1.0], [2.0]],
            metrics=Metrics(avg_accuracy=2.0),
            suites={"general": [{"loss": before}, {"loss": after}]},
        )

    out = seeds_record([rec(1.0, 3.0), rec(2.0, 5.0)], [0, 1], ["a", "b"])
    assert out.suites == {"general": [{"loss": 1.5}, {"loss": 4.0}]}
