"""Report rendering from records built by the runs' own code (``build_record`` from evaluation
rows, ``compare_record``) on hand-written score matrices: files, CSV numbers, summary wording,
HTML safety."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console

from retain import strategies as registry
from retain.config import RunConfig
from retain.data.stream import Stream, Task, TensorData
from retain.report.console import print_summary
from retain.report.history import History
from retain.report.record import CompareRecord, RunRecord
from retain.report.render import render_html, render_markdown, summary_lines, write_reports
from retain.report.result import RunFacts, build_record
from retain.report.summary import class_accuracy, fmt, vanished_classes
from retain.runner import compare_record

TASKS = ["t1", "t2", "t3"]
# Hand-written score matrices (T = 3): row 0 untrained, row i after task i.
R_FINETUNE = [[0.1, 0.1, 0.1], [0.9, 0.2, 0.1], [0.5, 0.8, 0.1], [0.3, 0.6, 0.7]]
R_REPLAY = [[0.1, 0.1, 0.1], [0.9, 0.1, 0.1], [0.85, 0.8, 0.1], [0.8, 0.75, 0.7]]
R_JOINT = [[0.1, 0.1, 0.1], [0.85, 0.8, 0.75]]
CONFIG = RunConfig(name="demo", seed=7)


def toy_stream(
    tasks: list[str], score: str = "accuracy", class_names: list[str] | None = None
) -> Stream:
    regression = score == "mse"
    y = torch.tensor([0.5, 1.5]) if regression else torch.tensor([0, 1])
    data = TensorData(x=torch.zeros(2, 4), y=y)
    return Stream(
        [Task(t, data, data) for t in tasks],
        name="toy",
        objective="regression" if regression else "classification",
        n_outputs=1 if regression else len(class_names or []) or 6,
        class_names=tuple(class_names) if class_names else None,
    )


def make_run(
    strategy: str,
    R: list[list[float]],
    *,
    tasks: list[str] = TASKS,
    score: str = "accuracy",
    joint: bool = False,
    warnings: list[str] | None = None,
    per_class: tuple[list[list[int]], list[list[list[int]]]] | None = None,
    class_names: list[str] | None = None,
    extra_scores: dict[str, list[list[float]]] | None = None,
) -> RunRecord:
    """The record ``api.run`` would write for a run whose evaluations gave ``R``.

    ``per_class`` is (test counts per task, correct predictions per row and task);
    ``extra_scores`` adds other scores' matrices to every evaluation.
    """
    rows = []
    for i, scores in enumerate(R):
        row = []
        for j, v in enumerate(scores):
            cell = {score: v, **{k: M[i][j] for k, M in (extra_scores or {}).items()}}
            if per_class is not None:
                cell.update(class_counts=per_class[0][j], class_correct=per_class[1][i][j])
            row.append(cell)
        rows.append(row)
    steps = ["joint"] if joint else tasks
    fits = [
        {
            "task": t,
            "steps": 10,
            "samples": 320,
            "train_seconds": 0.5,
            "eval_seconds": 0.01,
            "samples_per_s": 640.0,
            "losses": [[0, 1.0]],
            "lrs": [],
            "best_val_loss": None,
            "stopped_early_at": None,
        }
        for t in steps
    ]
    complete = len(R) == len(steps) + 1
    facts = RunFacts(
        stream=toy_stream(tasks, score, class_names),
        strategies=registry.build_all([strategy]),
        cfg=CONFIG,
        config=CONFIG,
        metric=score,
        joint=joint,
        warnings=warnings or [],
    )
    history = History(rows, fits, started="2026-01-01T00:00:00+00:00")
    status = "complete" if complete else "running"
    rec = build_record(facts, history, status, memory={"peak_rss_mb": 300.0})
    # The environment's provenance, fixed so the report text does not depend on it.
    rec.versions, rec.git_sha = {"python": "3.11", "retain": "0.1.0"}, "abc1234"
    rec.finished = "2026-01-01T00:01:00+00:00" if complete else None
    return rec


def make_compare(runs: dict[str, RunRecord]) -> CompareRecord:
    rec = compare_record(CONFIG, runs)
    rec.versions = next(iter(runs.values())).versions
    return rec


@pytest.fixture
def compare() -> CompareRecord:
    return make_compare(
        {
            "finetune": make_run("finetune", R_FINETUNE),
            "joint": make_run("joint", R_JOINT, joint=True),
            "replay": make_run("replay", R_REPLAY),
        }
    )


@pytest.fixture
def regression() -> CompareRecord:
    tasks = ["sex=1", "sex=2"]
    kw = {"tasks": tasks, "score": "mse"}
    return make_compare(
        {
            "finetune": make_run("finetune", [[1.2, 1.4], [0.6, 0.7], [0.9, 0.5]], **kw),
            "joint": make_run("joint", [[1.2, 1.4], [0.55, 0.6]], joint=True, **kw),
        }
    )


def per_class_compare() -> CompareRecord:
    """2 tasks, 3 classes: task 1 tests cat and dog, task 2 dog and eel, so cat vanishes."""
    counts = [[10, 10, 0], [0, 5, 10]]
    ft_correct = [[[0, 0, 0], [0, 0, 0]], [[9, 8, 0], [0, 4, 0]], [[0, 7, 0], [0, 5, 9]]]
    jt_correct = [[[0, 0, 0], [0, 0, 0]], [[8, 9, 0], [0, 5, 9]]]

    def acc(rows):  # accuracy per task: correct / test samples, summed over classes
        return [[sum(t) / sum(n) for t, n in zip(row, counts)] for row in rows]

    kw = {"tasks": ["t1", "t2"], "class_names": ["cat", "dog", "eel"]}
    runs = {
        "finetune": make_run("finetune", acc(ft_correct), **kw, per_class=(counts, ft_correct)),
        "joint": make_run(
            "joint", acc(jt_correct), joint=True, **kw, per_class=(counts, jt_correct)
        ),
    }
    return make_compare(runs)


def test_compare_writes_all_files(tmp_path: Path, compare: CompareRecord) -> None:
    written = write_reports(tmp_path, compare, plots=True)
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert {
        "metrics.csv",
        "matrix.csv",
        "report.md",
        "report.html",
        "plots/compare-bars.png",
        "plots/compare-curves.png",
        "plots/heatmap-finetune.png",
        "plots/heatmap-joint.png",
        "plots/curves-replay.png",
    } <= names
    assert "plots/curves-joint.png" not in names  # joint has no sequence to draw
    for p in written:
        assert p.is_file() and p.stat().st_size > 0
    assert (tmp_path / "plots/heatmap-finetune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic writes leave no temporary files

    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len([n for n in names if n.endswith(".png")])
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "<style>" in page
    md = (tmp_path / "report.md").read_text()
    assert "![finetune: score matrix](plots/heatmap-finetune.png)" in md


def test_metrics_csv_numbers(tmp_path: Path, compare: CompareRecord) -> None:
    compare.runs["replay"].timing.hook_seconds = 0.25  # strategies' between-task work
    write_reports(tmp_path, compare, plots=False)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = {r["strategy"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["finetune", "joint", "replay"]
    ft = rows["finetune"]
    assert ft["score"] == "accuracy"
    assert float(ft["avg_accuracy"]) == pytest.approx((0.3 + 0.6 + 0.7) / 3)
    assert float(ft["bwt"]) == pytest.approx(((0.3 - 0.9) + (0.6 - 0.8)) / 2)
    assert float(ft["fwt"]) == pytest.approx(((0.2 - 0.1) + (0.1 - 0.1)) / 2)
    assert float(ft["forgetting"]) == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)
    assert float(ft["plasticity"]) == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert float(ft["gap_to_joint"]) == pytest.approx(0.8 - 1.6 / 3)
    assert float(ft["train_seconds"]) == 1.5 and float(ft["peak_rss_mb"]) == 300.0
    assert rows["joint"]["bwt"] == rows["joint"]["forgetting"] == ""  # None is an empty cell
    assert float(rows["joint"]["avg_accuracy"]) == pytest.approx(0.8)
    assert float(rows["replay"]["gap_to_joint"]) == pytest.approx(0.05)
    # Regression: the report and the CSV showed the loop's time only, hiding EWC's Fisher pass.
    assert float(rows["replay"]["hook_seconds"]) == 0.25
    md = (tmp_path / "report.md").read_text()
    assert "| strategy s |" in md and "| 0.25 |" in md


def test_matrix_csv_long_format(tmp_path: Path, compare: CompareRecord) -> None:
    write_reports(tmp_path, compare, plots=False)
    with open(tmp_path / "matrix.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 3 + 2 * 3 + 4 * 3
    cell = {(r["strategy"], r["after_task"], r["task"]): float(r["value"]) for r in rows}
    assert cell[("finetune", "0", "t1")] == 0.1
    assert cell[("finetune", "t2", "t1")] == 0.5
    assert cell[("joint", "joint", "t3")] == 0.75
    assert {r["matrix"] for r in rows} == {"accuracy"}


def test_compare_summary_gap_and_loss(compare: CompareRecord) -> None:
    lines = summary_lines(compare)
    text = "\n".join(lines)
    assert "Joint training (all tasks trained together" in lines[0]
    assert "average accuracy 0.800 over 3 tasks" in lines[0]
    # finetune: 0.8 - (0.3 + 0.6 + 0.7) / 3 = 0.267; t1 0.9 -> 0.3, t2 0.8 -> 0.6.
    assert (
        "finetune ends 0.267 below joint training (average accuracy 0.533 vs 0.800). "
        "It lost 60 percentage points on t1 (0.900 → 0.300), 20 points on t2 (0.800 → 0.600)."
    ) in lines
    assert (
        "replay ends 0.050 below joint training (average accuracy 0.750 vs 0.800). "
        "It lost 10 percentage points on t1 (0.900 → 0.800), 5 points on t2 (0.800 → 0.750)."
    ) in lines
    assert (
        "Best non-joint strategy: replay (average accuracy 0.750, 0.050 below joint training)."
        in lines
    )
    assert "incomplete" not in text and "Warning" not in text


def test_compare_without_joint_and_warnings(compare: CompareRecord) -> None:
    del compare.runs["joint"]
    compare.runs["finetune"].warnings = ["the learning rate looks high"]
    lines = summary_lines(compare)
    assert lines[0].startswith("No joint-training run to compare against")
    assert "Best non-joint strategy: replay (average accuracy 0.750)." in lines
    assert lines[-1] == "Warning (finetune): the learning rate looks high"


def test_single_run_summary() -> None:
    run = make_run("finetune", R_FINETUNE, warnings=["only 3 tasks"])
    lines = summary_lines(run)
    assert lines[0].startswith("finetune ends with average final accuracy 0.533 over 3 tasks")
    assert "plasticity, the score on each task just after training it: 0.800" in lines[0]
    assert lines[1].startswith("BWT (backward transfer: ")  # glossed at first use
    assert "negative = forgotten) is -0.400; forgetting (" in lines[1]
    assert lines[1].endswith("over the 2 earlier tasks) is 0.400.")
    assert lines[2] == (
        "FWT (forward transfer: score on a task before training it, relative to "
        "the untrained model) is 0.050."
    )
    assert (
        lines[3]
        == "It forgot t1 most (accuracy 0.900 at best after training it, 0.300 at the end)."
    )
    assert lines[-1] == "Warning: only 3 tasks"


def test_lower_is_better_wording(tmp_path: Path, regression: CompareRecord) -> None:
    lines = summary_lines(regression)
    assert "average MSE 0.575 over 2 tasks" in lines[0]
    # mean(0.9, 0.5) = 0.7 vs mean(0.55, 0.6) = 0.575: higher MSE is worse, so "above".
    assert (
        "finetune ends 0.125 above joint training (average MSE 0.700 vs 0.575; lower is "
        "better). Since training each earlier task: MSE on sex=1 rose from 0.600 to 0.900 "
        "(+50%, worse)."
    ) in lines
    assert not any("% of" in line for line in lines)
    write_reports(tmp_path, regression, plots=True)
    md = (tmp_path / "report.md").read_text()
    assert "score: MSE (lower is better)" in md
    assert "MSE is better when lower" in md
    single = summary_lines(regression.runs["finetune"])
    assert "It forgot sex=1 most (MSE 0.600 at best after training it, 0.900 at the end)." in single


def test_incomplete_run_renders(tmp_path: Path) -> None:
    run = make_run("finetune", R_FINETUNE[:3])
    run.timing.per_task = run.timing.per_task[:2]
    lines = summary_lines(run)
    assert lines[0].startswith("This run is incomplete (status: running): 2 of 3 training steps")
    assert "After t2, average accuracy over the 2 tasks seen so far is 0.650." in lines[0]
    write_reports(tmp_path, run, plots=True)
    md = (tmp_path / "report.md").read_text()
    assert "> **Incomplete: finetune did not finish" in md
    assert "| after t2 | 0.500 | 0.800 | 0.100 |" in md and "after t3" not in md
    assert "Incomplete" in (tmp_path / "report.html").read_text()
    with open(tmp_path / "metrics.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["avg_accuracy"] == "" and float(row["train_seconds"]) == 1.5


def test_incomplete_compare_renders(tmp_path: Path, compare: CompareRecord) -> None:
    replay = compare.runs["replay"]
    replay.status, replay.metrics, replay.matrix = "running", None, R_REPLAY[:2]
    replay.matrices = {"accuracy": R_REPLAY[:2]}
    lines = summary_lines(compare)
    assert lines[0].startswith("This comparison is incomplete: replay did not finish")
    # One finished non-joint strategy: naming it "best" would say nothing.
    assert not any(line.startswith("Best non-joint") for line in lines)
    write_reports(tmp_path, compare, plots=True)
    md = (tmp_path / "report.md").read_text()
    assert "replay (incomplete)" in md
    # Regression: the Metrics table still put the only finished one in bold as "best".
    assert "| **finetune** |" not in md and "| finetune |" in md


def test_per_class_vanished(tmp_path: Path) -> None:
    record = per_class_compare()
    split_record = per_class_compare()
    split_record.stream.setting = "class_il"
    # In a class-incremental split earlier classes are absent from the last task by design.
    assert not any("vanished" in line for line in summary_lines(split_record))
    # Regression: the per-class table still marked them vanished (the rule was in the summary).
    md = render_markdown(split_record)
    assert "vanished from the last task" not in md and "pooled" not in md
    record.stream.setting = "domain_il"
    ft = record.runs["finetune"]
    assert vanished_classes(record, ft) == [0]
    # cat 0/10, dog (7 + 5)/15, eel 9/10 after the last task.
    assert class_accuracy(ft)[-1] == pytest.approx([0.0, 0.8, 0.9])
    assert class_accuracy(record.runs["joint"])[-1] == pytest.approx([0.8, 14 / 15, 0.9])
    assert (
        "1 class (cat) vanished from the last task (absent from its test data); final "
        "accuracy on them: finetune 0.000, joint 0.800."
    ) in summary_lines(record)
    write_reports(tmp_path, record, plots=False)
    md = (tmp_path / "report.md").read_text()
    assert "## Per-class accuracy" in md
    assert "| cat | vanished from the last task | 0.000 | 0.800 |" in md
    assert "| dog | present | 0.800 | 0.933 |" in md
    assert "| after t1 | 0.900 | 0.800 | 0.000 |" in md  # finetune after each step
    assert '<tr class="vanished"><td>cat</td>' in (tmp_path / "report.html").read_text()


def test_markdown_sections_and_definitions(compare: CompareRecord) -> None:
    md = render_markdown(compare)
    for heading in (
        "## Stream",
        "## Summary",
        "## Metrics",
        "## Score matrices (accuracy)",
        "## Training time",
        "## Metric definitions",
        "## Reproducibility",
    ):
        assert heading in md
    assert "| **replay** | 0.750 |" in md  # best non-joint strategy in bold
    assert "| untrained | 0.100 | 0.100 | 0.100 |" in md
    assert "| after joint | 0.850 | 0.800 | 0.750 |" in md
    assert "| bwt | (1/(T-1)) Σ_{i=1..T-1} (R[T, i] - R[i, i]) | T - 1 |" in md
    assert "| avg_accuracy | (1/T) Σ_{j=1..T} R[T, j] | T |" in md
    assert "seed: 7" in md and "git sha: abc1234" in md
    assert 'strategy replay: [{"name": "replay", ' in md
    assert "![" not in md  # no plots were given
    assert "<img" not in render_html(compare)


def test_extra_matrices_compact() -> None:
    def til(R: list[list[float]]) -> dict[str, list[list[float]]]:
        return {"task_il_accuracy": [[min(1.0, v + 0.1) for v in row] for row in R]}

    record = make_compare(
        {
            "finetune": make_run("finetune", R_FINETUNE, extra_scores=til(R_FINETUNE)),
            "joint": make_run("joint", R_JOINT, joint=True, extra_scores=til(R_JOINT)),
            "replay": make_run("replay", R_REPLAY, extra_scores=til(R_REPLAY)),
        }
    )
    md = render_markdown(record)
    assert "### task-IL accuracy (higher is better)" in md
    assert "| finetune | 0.400 | 0.700 | 0.800 | 0.633 | -0.400 | 0.400 |" in md


def test_console_summary(compare: CompareRecord) -> None:
    buf = io.StringIO()
    print_summary(compare, Console(file=buf, width=240, color_system=None))
    out = buf.getvalue()
    assert "avg" in out and "gap" in out and "distance to joint training" in out
    assert "0.533" in out and "-0.400" in out and "1.5 s" in out
    assert "finetune ends 0.267 below joint training" in out
    buf = io.StringIO()
    print_summary(compare.runs["finetune"], Console(file=buf, width=240, color_system=None))
    assert "BWT (backward transfer" in buf.getvalue()


def test_fmt_is_consistent() -> None:
    assert fmt(0.17142857) == "0.171" and fmt(1.0) == "1.000" and fmt(-0.0001) == "0.000"
    assert fmt(0.9011, "mse") == "0.901" and fmt(2.3325, "loss") == "2.33"
    assert fmt(0.5, "mse") == "0.500" and fmt(1234.5, "perplexity") == "1,234"
    assert fmt(0.0, "mse") == "0" and fmt(None) == "–"


def test_strategy_state_is_reported(tmp_path: Path, compare: CompareRecord) -> None:
    run = compare.runs["replay"]
    run.strategy_stats = [{"replay": {"buffer_samples": 100, "buffer_bytes": 27200}}] * len(
        run.tasks
    )
    run.params.after_task = [1000] * len(run.tasks)
    write_reports(tmp_path, compare, plots=False)
    md = (tmp_path / "report.md").read_text()
    assert "## Strategy state" in md
    assert "replay.buffer_bytes=27200" in md and "1,000" in md


def test_losses_are_told_in_points_never_percent(compare: CompareRecord) -> None:
    """A drop from 0.451 to 0 is 45 points and all of the task, not "45%"."""
    run = make_run("finetune", [[0.1, 0.1, 0.1], [0.986, 0.1, 0.1], [0.3, 0.451, 0.1], [0.0] * 3])
    lines = summary_lines(make_compare({"finetune": run, "joint": compare.runs["joint"]}))
    assert "It lost all of t1 (0.986 → 0.000), all of t2 (0.451 → 0.000)." in lines[1]
    one = make_run("finetune", [[0.1, 0.1], [0.9, 0.1], [0.89, 0.9]], tasks=["a", "b"])
    assert summary_lines(one)[-1] == "It lost 1 percentage point on a (0.900 → 0.890)."
    for record in (compare, compare.runs["finetune"]):
        buf = io.StringIO()
        print_summary(record, Console(file=buf, width=240, color_system=None))
        text = "\n".join(summary_lines(record)) + render_markdown(record) + buf.getvalue()
        assert not re.search(r"\d\s*%", text), re.search(r".{40}\d\s*%.{20}", text)


def test_in_last_task_column_follows_the_last_task_classes() -> None:
    """A split whose last task has two of ten classes: only those two are in the last task."""
    record = per_class_compare()
    record.stream.setting = "class_il"
    for run in record.runs.values():
        run.task_classes = [[0, 1], [2]]
    md = render_markdown(record)
    assert "| cat | absent | 0.000 | 0.800 |" in md
    assert "| eel | present | 0.900 | 0.900 |" in md
    # Without recorded classes, the last task's test data says which classes it has.
    for run in record.runs.values():
        run.task_classes = [None, None]
    md = render_markdown(record)
    assert "| cat | absent |" in md and "| dog | present |" in md


def test_low_plasticity_is_explained(compare: CompareRecord) -> None:
    run = make_run("finetune", [[0.1] * 3, [0.95, 0.1, 0.1], [0.0, 0.451, 0.1], [0.0, 0.0, 0.9]])
    lines = summary_lines(make_compare({"finetune": run, "joint": compare.runs["joint"]}))
    low = [line for line in lines if line.startswith("Low plasticity")]
    assert low == [
        "Low plasticity: finetune did not learn every task well even right after training it "
        "(t2 0.451 (joint training: 0.800); flagged: more than 10 percentage points below joint "
        "training on the same task). Its forgetting is measured from these low scores. Likely "
        "causes: too little training per task (raise train.epochs or train.lr), or a strategy "
        "that holds the old weights back by design."
    ]
    # Without joint training, a task below 0.5 right after training it is flagged.
    assert "(t2 0.451; flagged: below 0.500)" in summary_lines(run)[-1]
    assert not any(line.startswith("Low plasticity") for line in summary_lines(compare))


DATA = {
    "sources": [
        {"file": "/data/jan.csv", "bytes": 1200, "sha256": "ab" * 32},
        {"file": "/data/feb.csv", "bytes": 1300, "sha256": "cd" * 32},
    ],
    "objective": "classification",
    "target": {"column": "label", "chosen_automatically": True},
    "features": ["a", "b"],
    "dropped": {"note": "text"},
    "encoded": {"label": "text classes as ids 0..1 in sorted order"},
    "standardized": {
        "inputs": True,
        "statistics_from": "t1 training data",
        "mean": [1.5, 2.0],
        "std": [0.5, 1.0],
    },
    "tasks": [
        {"name": n, "train": 200, "validation": 20, "test": t} for n, t in zip(TASKS, (57, 57, 60))
    ],
}


def test_data_section_and_standard_errors(tmp_path: Path, compare: CompareRecord) -> None:
    for run in compare.runs.values():
        run.data = DATA
    md = render_markdown(compare)
    assert "## Data" in md
    assert "- SHA-256 of /data/jan.csv: " + "ab" * 32 in md
    assert "- target column: label (chosen automatically (none was given))" in md
    assert "- columns left out: note (text)" in md
    assert "- columns encoded: label (text classes as ids 0..1 in sorted order)" in md
    assert "statistics from t1 training data; mean [1.5, 2], std [0.5, 1]" in md
    assert "| t1 | 200 | 20 | 57 |" in md
    # finetune after t1: 0.9 on 57 rows: sqrt(0.9 * 0.1 / 57) = 0.040.
    assert "| after t1 | 0.900 ± 0.040 | 0.200 ± 0.053 | 0.100 ± 0.039 |" in md
    assert "with n = 57 to 60 test rows per task" in md
    # mean of 0.3, 0.6, 0.7: sqrt(0.21/57 + 0.24/57 + 0.21/60) / 3 = 0.036.
    assert "Average final accuracy: 0.533 ± 0.036." in md
    buf = io.StringIO()
    print_summary(compare, Console(file=buf, width=400, color_system=None))
    assert (
        "Data: /data/jan.csv (SHA-256 abababababab…), /data/feb.csv (SHA-256 cdcdcdcdcdcd…); "
        "target label (chosen automatically); train 200 rows per task; validation 20 rows per "
        "task; test 57–60 rows per task; standardised."
    ) in buf.getvalue()
    # A record without data facts (older runs, the Python API) has no Data section.
    for run in compare.runs.values():
        run.data = None
    assert "## Data" not in render_markdown(compare) and "±" not in render_markdown(compare)


def test_definitions_table_wraps_and_reads_left_to_right(compare: CompareRecord) -> None:
    page = render_html(compare)
    assert '<table class="text"><thead><tr><th>metric</th>' in page
    css = page[page.index("<style>") : page.index("</style>")]
    # Prose tables are as wide as the page and wrap: no nowrap, no right alignment.
    rule = re.search(r"table\.text td,table\.text th\{([^}]*)\}", css)
    assert rule and "text-align:left" in rule[1] and "white-space:normal" in rule[1]
    assert "table.text{display:table;width:100%" in css


def test_peak_memory_is_said_to_be_per_process(compare: CompareRecord) -> None:
    md = render_markdown(compare)
    assert "peak RSS MB is the peak resident memory of the whole process" in md


@pytest.mark.parametrize(
    ("score", "values", "expected"),
    [
        ("accuracy", [0.95, 0.941, 0.95], (0.0, 1.0)),
        ("mse", [0.5, 0.6], (0.0, None)),
    ],
)
def test_score_axis_uses_the_natural_range(score, values, expected) -> None:
    from matplotlib.figure import Figure

    from retain.report.plots import _score_axis

    ax = Figure().subplots()
    ax.plot(range(len(values)), values)
    _score_axis(ax, score)
    lo, hi = ax.get_ylim()
    assert lo < expected[0] + 0.05 and lo <= expected[0]
    if expected[1] is not None:
        assert expected[1] <= hi < expected[1] + 0.05
