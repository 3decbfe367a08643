"""Evaluation suites (held-out sets that are not tasks) and the regression guard: suites scored
with every row of R, a suite read from a CSV file, the guard's warn and stop actions (stop
restores the weights of the last passing check), resume, bad guard settings, the report."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest
import torch

from retain.api import run
from retain.cli import main
from retain.config import GuardConfig, RunConfig, TrainConfig, load_config
from retain.data.scenarios import split
from retain.data.sources import lm_data
from retain.data.stream import Stream, Task, TensorData
from retain.errors import ConfigError, DataError
from retain.models import MLP
from retain.report.record import RunRecord
from retain.report.render import render_markdown
from retain.report.summary import summary_lines
from retain.strategies.base import Strategy

SGD = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", lr=0.05)


def _mlp():
    torch.manual_seed(0)
    return MLP(64, 6, [100, 100])


@pytest.fixture(scope="module")
def suite_stream(digits):
    """Split digits, 3 class-IL tasks, with suite ``early``: the test set of task 1."""
    s = split(digits, n_tasks=3, classes=[0, 1, 2, 3, 4, 5])
    first = s.tasks[0].test
    early = TensorData(x=first.x, y=first.y)
    return dataclasses.replace(s, suites={"early": early})


@dataclass
class Recorder(Strategy):
    """Keeps a copy of the weights before each task (step 0) and after every optimizer step."""

    seen: list[dict[int, dict[str, torch.Tensor]]] = field(default_factory=list, repr=False)

    def before_task(self, model, ctx):
        self.seen.append({0: _copy(model)})
        return model

    def after_step(self, model, ctx):
        self.seen[-1][len(self.seen[-1])] = _copy(model)


def _copy(model):
    inner = getattr(model, "module", model)
    return {k: v.detach().clone() for k, v in inner.state_dict().items()}


def test_suites_are_scored_with_every_row_including_row_0(suite_stream):
    from retain.config import EvalConfig

    r = run(
        _mlp(), suite_stream, ["finetune"], RunConfig(train=SGD, eval=EvalConfig(every_steps=4))
    )
    early = r.record.suites["early"]
    assert len(early) == len(r.matrix) == 4
    # The suite is task 1's test set, scored without a task: in class-IL that is column 0 of R.
    assert [row["accuracy"] for row in early] == pytest.approx([row[0] for row in r.matrix])
    assert r.record.to_dict()["suites"]["early"][0]["loss"] > 0
    # The evaluations inside a task score the suites too (the stability curve's points).
    for points in r.record.curves.eval:
        for p in points:
            assert p["suites"]["early"]["accuracy"] == pytest.approx(p["scores"][0]["accuracy"])
    assert any("on the evaluation suites" in line.lower() for line in summary_lines(r.record))


def test_records_without_suites_or_guard_keep_their_form(tiny_stream):
    r = run(_mlp(), tiny_stream, ["finetune"], RunConfig(train=SGD))
    out = r.record.to_dict()
    assert "suites" not in out and "guard" not in out
    assert r.record.suites is None and r.record.guard is None


def test_a_suite_from_a_csv_file_uses_the_streams_reader_labels_and_scaling(tmp_path):
    pd = pytest.importorskip("pandas")
    from retain.data.build import build_stream

    g = torch.Generator().manual_seed(0)

    def table(n, shift):
        x = torch.randn(n, 3, generator=g) * 2 + shift
        label = ["yes" if v > shift else "no" for v in x[:, 0].tolist()]
        return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": label})

    table(200, 0.0).to_csv(tmp_path / "main.csv", index=False)
    only_yes = table(60, 5.0)
    only_yes = only_yes[only_yes["label"] == "yes"]
    only_yes.to_csv(tmp_path / "general.csv", index=False)
    (tmp_path / "exp.yaml").write_text(
        "stream: {dataset: main.csv, target: label, scenario: iid, n_tasks: 2, "
        "suites: {general: general.csv}}\n"
    )
    cfg = load_config(tmp_path / "exp.yaml")  # the suite's path is relative to the config
    assert cfg.stream.suites["general"] == str((tmp_path / "general.csv").resolve())
    stream, info = build_stream(cfg.stream)
    suite = stream.suites["general"]
    assert len(suite) == len(only_yes) and info["suites"]["general"]["rows"] == len(only_yes)
    yes = list(stream.class_names).index("yes")
    assert suite.y.tolist() == [yes] * len(only_yes)  # "yes" keeps the stream's id
    mean, std = info["standardized"]["mean"], info["standardized"]["std"]
    raw = torch.tensor(only_yes[["a", "b", "c"]].to_numpy(), dtype=torch.float32)
    expect = (raw - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(suite.x, expect, atol=1e-3)  # the stream's statistics, not its own

    pd.DataFrame({"a": [1.0], "z": [2.0], "label": ["no"]}).to_csv(tmp_path / "bad.csv")
    bad = dataclasses.replace(cfg.stream, suites={"general": str(tmp_path / "bad.csv")})
    with pytest.raises(DataError, match="same columns"):
        build_stream(bad)


def test_guard_stop_restores_the_weights_of_the_last_passing_check(suite_stream):
    rec = Recorder()
    guard = GuardConfig(every_steps=3, action="stop", absolute={"early": 0.05, "t1": 0.1})
    warnings: list[str] = []
    r = run(
        _mlp(),
        suite_stream,
        ["finetune", rec],
        RunConfig(train=SGD, guard=guard),
        warn=warnings.append,
    )
    stops = [g for g in r.record.guard if g.stopped_at is not None]
    assert stops, "finetune in class-IL forgets task 1: the guard must stop"
    last = r.record.guard[-1]
    assert last.task == "t3" and last.stopped_at is not None
    assert 0 < last.restored_step < last.stopped_at  # a passing check inside the task
    passed = [c["step"] for c in last.checks if not c["failed"]]
    assert last.restored_step == passed[-1]
    assert r.record.timing.per_task[-1].steps == last.stopped_at  # training ended there
    final = r.model.state_dict()
    kept = rec.seen[-1][last.restored_step]
    assert all(torch.equal(final[k], kept[k]) for k in kept)
    assert not all(torch.equal(final[k], rec.seen[-1][last.stopped_at][k]) for k in kept)
    # The row after t3 is the restored model: within the limit on every watched name.
    early = r.record.suites["early"][-1]["accuracy"]
    assert early >= last.limits["early"]["limit"]
    assert len(warnings) == sum(len(g.breaches) for g in r.record.guard) > 0


def test_guard_warn_trains_to_the_end_and_records_breaches(suite_stream, tmp_path):
    plain = run(_mlp(), suite_stream, ["finetune"], RunConfig(train=SGD))
    warnings: list[str] = []
    guard = GuardConfig(every_steps=3, action="warn", absolute={"early": 0.05})
    r = run(
        _mlp(), suite_stream, ["finetune"], RunConfig(train=SGD, guard=guard), warn=warnings.append
    )
    assert r.matrix == plain.matrix  # checking changes nothing
    steps = [t.steps for t in r.record.timing.per_task]
    assert steps == [t.steps for t in plain.record.timing.per_task]
    assert all(g.stopped_at is None and g.restored_step is None for g in r.record.guard)
    breaches = [b for g in r.record.guard for b in g.breaches]
    assert breaches and len(warnings) == len(breaches)
    assert all(b["name"] == "early" and b["score"] < b["limit"] for b in breaches)
    assert "guard: accuracy on early" in warnings[0]
    # Every check of every task is kept, step 0 (the baseline) first, the last step last.
    for g, fit in zip(r.record.guard, r.record.timing.per_task):
        assert g.checks[0]["step"] == 0 and g.checks[-1]["step"] == fit.steps
        assert g.limits["early"]["baseline"] == g.checks[0]["scores"]["early"]["accuracy"]
    again = RunRecord.from_dict(json.loads(json.dumps(r.record.to_dict())))  # result.json
    assert again.guard == r.record.guard and again.suites == r.record.suites
    md = render_markdown(again)
    assert "## Regression guard" in md and "## Evaluation suites" in md
    assert "regression guard (warn) saw" in md
    pytest.importorskip("matplotlib")
    from retain.report.render import write_reports

    written = {p.name for p in write_reports(tmp_path, r.record)}
    assert "stability-finetune.png" in written  # the suites over the run's steps


def test_a_watched_task_is_scored_as_r_scores_it_task_il_masking_included(digits):
    s = split(digits, n_tasks=2, classes=[0, 1, 2, 3], setting="task_il")
    guard = GuardConfig(every_steps=4, absolute={"t1": 0.5})
    torch.manual_seed(0)
    r = run(MLP(64, 4, [32]), s, ["finetune"], RunConfig(train=SGD, guard=guard))
    (g,) = r.record.guard
    assert g.task == "t2" and g.limits["t1"]["baseline"] == pytest.approx(r.matrix[1][0])
    assert g.checks[-1]["scores"]["t1"]["accuracy"] == pytest.approx(r.matrix[2][0])


def test_guarded_run_resumed_after_a_crash_gives_the_same_record(suite_stream, tmp_path):
    from conftest import CrashBefore

    guard = GuardConfig(every_steps=3, action="stop", absolute={"early": 0.05})
    cfg = RunConfig(train=SGD, guard=guard, seed=1)
    full = run(_mlp(), suite_stream, ["finetune", CrashBefore(at=2)], cfg)
    with pytest.raises(KeyboardInterrupt):
        run(
            _mlp(), suite_stream, ["finetune", CrashBefore(at=2, armed=True)], cfg, out_dir=tmp_path
        )
    resumed = run(
        _mlp(), suite_stream, ["finetune", CrashBefore(at=2)], cfg, out_dir=tmp_path, resume=True
    )
    assert resumed.matrix == full.matrix
    assert resumed.record.suites == full.record.suites
    assert [g.to_dict() for g in resumed.record.guard] == [g.to_dict() for g in full.record.guard]


def test_bad_guard_settings_are_one_line_before_training(suite_stream, tmp_path, capsys):
    with pytest.raises(ConfigError, match="guard.relative.early must be a number > 0"):
        GuardConfig(every_steps=2, relative={"early": 0})
    with pytest.raises(ConfigError, match="guard.every_steps is not set"):
        GuardConfig(absolute={"early": 0.1})
    guard = GuardConfig(every_steps=2, relative={"erly": 0.1})
    with pytest.raises(ConfigError, match="did you mean 'early'"):
        run(_mlp(), suite_stream, ["finetune"], RunConfig(guard=guard), out_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before the run directory was made
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "stream: {dataset: digits, scenario: split, n_tasks: 2, classes: [0, 1, 2, 3]}\n"
        "guard: {every_steps: 2, absolute: {general: 0.1}}\n"
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "cli"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'general' is neither an evaluation suite" in err
    assert main(["run", str(cfg), "guard.absolute.t1=-1", "-q"]) == 2
    assert "guard.absolute.t1 must be a number > 0" in capsys.readouterr().err


# ------------------------------------------------------------------ language models


def _blocks(lo, n, seed, length=16):
    g = torch.Generator().manual_seed(seed)
    # A learnable "language": token k is followed by k+1 within [lo, lo+32).
    seqs = [
        [lo + (s + i) % 32 for i in range(length)]
        for s in torch.randint(0, 32, (n,), generator=g).tolist()
    ]
    return lm_data(seqs, block_size=length)


def _lm_stream():
    a, b = _blocks(0, 24, 0), _blocks(32, 24, 1)
    tasks = (Task("lang_a", a, a[torch.arange(8)]), Task("lang_b", b, b[torch.arange(8)]))
    general = _blocks(0, 8, 2)  # lang_a's language, held out: what training on lang_b loses
    return Stream(tasks, objective="causal_lm", setting="domain_il", suites={"general": general})


LM_TRAIN = TrainConfig(steps=12, batch_size=8, optimizer="adamw", lr=3e-3)


def test_language_model_suites_and_the_guard_in_perplexity_words(tiny_causal_lm):
    from retain.config import EvalConfig

    warned: list[str] = []
    guard = GuardConfig(every_steps=2, action="stop", relative={"general": 0.05})
    cfg = RunConfig(train=LM_TRAIN, eval=EvalConfig(batch_size=8), guard=guard)
    r = run(tiny_causal_lm, _lm_stream(), ["finetune"], cfg, warn=warned.append)
    general = r.record.suites["general"]
    assert len(general) == 3 and {"loss", "perplexity", "token_accuracy"} <= set(general[0])
    assert general[1]["loss"] < general[0]["loss"]  # learnt lang_a, general's language
    g = r.record.guard[-1]
    assert g.task == "lang_b" and g.metric == "loss"
    assert g.stopped_at is not None and g.stopped_at < LM_TRAIN.steps and warned
    # The restored model passes: its loss on general is within 5% of the baseline.
    assert general[2]["loss"] <= g.limits["general"]["limit"] + 1e-6
    lines = " ".join(summary_lines(r.record))
    assert "perplexity on general fell from" in lines or "perplexity on general rose from" in lines
    assert "perplexity on lang_a" in lines  # the main sentence speaks in perplexity too
    assert "stopped lang_b at step" in lines
    assert "In perplexity: average final" in lines


def test_language_model_evaluation_batches_are_capped_by_logits_size(tiny_causal_lm):
    from retain.eval.evaluator import LOGITS_BUDGET, rows_per_batch

    data = _blocks(0, 4, 0)
    assert rows_per_batch(tiny_causal_lm, data, 1024) == min(1024, LOGITS_BUDGET // (16 * 64))
    big = type("Cfg", (), {"vocab_size": 50_000})()
    model = torch.nn.Module()
    model.config = big
    wide = lm_data([[1] * 128], block_size=128)
    assert rows_per_batch(model, wide, 1024) == LOGITS_BUDGET // (128 * 50_000)
    assert rows_per_batch(MLP(64, 6, [8]), TensorData(x=torch.zeros(2, 64)), 1024) == 1024
