"""The run loop through the Python API: determinism, settings, early stopping, LMs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retain.api import run
from retain.config import EvalConfig, RunConfig, TrainConfig
from retain.data.scenarios import split
from retain.data.stream import Stream, Task, TensorData
from retain.errors import RetainError
from retain.models import MLP

FAST = TrainConfig(epochs=3, batch_size=32, optimizer="adam", lr=1e-3)


def _mlp(n_out=6, seed=0):
    torch.manual_seed(seed)
    return MLP(64, n_out, [100, 100])


def test_same_seed_gives_the_same_matrix(tiny_stream):
    a = run(_mlp(), tiny_stream, ["finetune"], RunConfig(train=FAST, seed=3))
    b = run(_mlp(), tiny_stream, ["finetune"], RunConfig(train=FAST, seed=3))
    c = run(_mlp(), tiny_stream, ["finetune"], RunConfig(train=FAST, seed=4))
    assert a.matrix == b.matrix
    assert a.matrix != c.matrix
    assert len(a.matrix) == 4 and len(a.matrix[0]) == 3


def test_finetune_forgets_in_class_il_and_metrics_follow_r(tiny_stream):
    r = run(_mlp(), tiny_stream, ["finetune"], RunConfig(train=FAST))
    R = r.matrix
    assert R[1][0] > 0.9  # task 1 learnt
    assert R[3][0] < 0.2  # and forgotten after task 3 (class-IL, no protection)
    assert r.metrics.bwt < -0.7
    assert r.metrics.avg_accuracy == pytest.approx(sum(R[3]) / 3)
    assert (
        r.record.matrices["task_il_accuracy"][3][0] > R[3][0]
    )  # task-aware view reported beside it
    assert r.record.timing.per_task[0].samples_per_s > 0
    assert r.record.memory.peak_rss_mb > 0


def test_task_il_masking_is_applied_at_train_and_test(digits):
    s = split(digits, n_tasks=3, classes=[0, 1, 2, 3, 4, 5], setting="task_il")
    r = run(_mlp(), s, ["finetune"], RunConfig(train=FAST))
    # With the other tasks' logits masked, every 2-way task stays above chance (0.5) and the
    # average is far above what class-IL finetune keeps (about 1/3, the last task only).
    assert min(r.matrix[3]) > 0.6
    assert sum(r.matrix[3]) / 3 > 0.8


@pytest.mark.slow
def test_joint_and_cumulative_reach_more_than_finetune(tiny_stream):
    ft = run(_mlp(), tiny_stream, ["finetune"], RunConfig(train=FAST))
    jt = run(_mlp(), tiny_stream, ["joint"], RunConfig(train=FAST))
    cu = run(_mlp(), tiny_stream, ["cumulative"], RunConfig(train=FAST))
    assert len(jt.matrix) == 2 and jt.metrics.bwt is None
    assert jt.record.joint is True and jt.record.strategies == [{"name": "joint"}]
    assert jt.metrics.avg_accuracy > 0.9
    assert cu.metrics.avg_accuracy > ft.metrics.avg_accuracy + 0.4
    assert jt.record.timing.per_task[0].samples == FAST.epochs * sum(
        len(t.train) for t in tiny_stream
    )


def test_early_stopping_stops_and_keeps_the_best(digits):
    s = split(digits, n_tasks=1, classes=[0, 1, 2, 3], validation=0.3)
    cfg = TrainConfig(epochs=200, batch_size=16, optimizer="adam", lr=3e-3, patience=2)
    r = run(_mlp(4), s, ["finetune"], RunConfig(train=cfg))
    es = r.record.early_stopping[0]
    assert es.stopped_at is not None and es.stopped_at < 200 * 15
    assert es.best_val_loss < 0.5


def test_a_diverging_loss_is_reported(tiny_stream):
    with pytest.raises(RetainError, match="loss became"):
        run(
            _mlp(),
            tiny_stream,
            ["finetune"],
            RunConfig(train=TrainConfig(epochs=3, optimizer="sgd", lr=1e6)),
        )


def test_an_exploding_loss_is_reported_like_a_nan(digits):
    """Adam at lr 1e6 drives the loss to about 1e13 without a NaN: the run used to finish and
    report numbers from a diverged model."""
    s = split(digits, n_tasks=1, classes=[0, 1, 2, 3])
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="adam", lr=1e6)
    with pytest.raises(
        RetainError, match=r"loss became .*e\+\d+ \(from .* at the task's first step"
    ):
        run(_mlp(4), s, ["finetune"], RunConfig(train=cfg))


@pytest.mark.parametrize("policy", ["keep", "reset"])
def test_hot_start_keeps_optimizer_state(tiny_stream, tmp_path, policy):
    from retain.utils.checkpoint import RunDir

    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=1e-3, optimizer_state=policy)
    r = run(_mlp(), tiny_stream, ["finetune"], RunConfig(train=cfg), out_dir=tmp_path / "run")
    steps = [t.steps for t in r.record.timing.per_task]
    ckpt = RunDir(tmp_path / "run").load_checkpoint()
    if policy == "reset":
        assert ckpt["optimizer"] is None  # nothing worth keeping: the next task starts afresh
        return
    # Adam's step counter after the last task counts every step of the run, not just its own.
    adam_steps = {float(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert adam_steps == {float(sum(steps))}


def test_any_module_and_regression(digits):
    x = torch.randn(300, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0])
    data = TensorData(x=x, y=y)
    s = Stream(
        (Task("a", data[torch.arange(200)], data[torch.arange(200, 300)]),),
        objective="regression",
        n_outputs=1,
        setting="domain_il",
    )
    r = run(
        nn.Linear(4, 1),
        s,
        ["finetune"],
        RunConfig(train=TrainConfig(epochs=30, optimizer="adam", lr=0.05)),
    )
    assert r.record.score == "mse" and not r.record.higher_is_better
    assert r.matrix[1][0] < 0.05 < r.matrix[0][0]
    assert r.record.matrices["r2"][1][0] > 0.95


def _lm_task(name, lo, n=24, length=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    # A learnable "language": token k is followed by k+1 within [lo, lo+32).
    start = torch.randint(lo, lo + 32, (n, 1), generator=g)
    ids = lo + (start - lo + torch.arange(length)) % 32
    data = TensorData(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())
    return Task(name, data, data[torch.arange(8)])


def test_hf_causal_lm_trains_through_the_loop(tiny_causal_lm):
    s = Stream(
        (_lm_task("lang_a", 0), _lm_task("lang_b", 32, seed=1)),
        objective="causal_lm",
        setting="domain_il",
    )
    cfg = RunConfig(
        train=TrainConfig(steps=30, batch_size=8, optimizer="adamw", lr=3e-3),
        eval=EvalConfig(batch_size=8),
    )
    r = run(tiny_causal_lm, s, ["finetune"], cfg)
    R = r.matrix
    assert r.record.score == "loss"
    assert R[1][0] < R[0][0] - 0.5  # learnt language A
    assert R[2][1] < R[0][1] - 0.5  # then language B
    assert R[2][0] > R[1][0]  # and lost some of A: forgetting, measured on loss
    assert r.metrics.forgetting > 0
    assert "perplexity" in r.record.matrices


def test_gradient_clipping_is_applied(tiny_stream):
    free = run(
        _mlp(),
        tiny_stream,
        ["finetune"],
        RunConfig(train=TrainConfig(epochs=1, optimizer="sgd", lr=0.5)),
    )
    clipped = run(
        _mlp(),
        tiny_stream,
        ["finetune"],
        RunConfig(train=TrainConfig(epochs=1, optimizer="sgd", lr=0.5, grad_clip=1e-6)),
    )
    # A gradient norm of 1e-6 times lr 0.5 moves no weight visibly: the scores stay put.
    assert clipped.matrix[-1] == pytest.approx(clipped.matrix[0], abs=0.02)
    assert free.matrix[1][0] > clipped.matrix[1][0] + 0.3


def test_schedule_scope_run_spans_all_tasks(tiny_stream):
    per_task = run(
        _mlp(),
        tiny_stream,
        ["finetune"],
        RunConfig(train=TrainConfig(epochs=2, optimizer="sgd", lr=0.1, schedule="wsd", decay=0.5)),
    )
    whole = run(
        _mlp(),
        tiny_stream,
        ["finetune"],
        RunConfig(
            train=TrainConfig(
                epochs=2, optimizer="sgd", lr=0.1, schedule="wsd", decay=0.2, schedule_scope="run"
            )
        ),
    )
    last = [curve[-1][1] for curve in per_task.record.curves.lr_factor]
    assert last == pytest.approx([0.0, 0.0, 0.0], abs=0.01)  # each task decays to min_lr
    run_last = [curve[-1][1] for curve in whole.record.curves.lr_factor]
    # 3 tasks x 18 steps; the last 20% (steps 44-54) decay: tasks 1 and 2 end in the stable phase.
    assert run_last[0] == 1.0 and run_last[1] == 1.0
    assert run_last[2] == pytest.approx(0.0, abs=0.01)  # one decay, at the end of the run


def test_scores_on_the_validation_split_leave_the_test_sets_alone(digits):
    from retain.config import EvalConfig

    s = split(digits, n_tasks=2, classes=[0, 1, 2, 3], validation=0.2)
    on_val = run(_mlp(4), s, ["finetune"], RunConfig(train=FAST, eval=EvalConfig(split="val")))
    on_test = run(_mlp(4), s, ["finetune"], RunConfig(train=FAST))
    assert on_val.matrix != on_test.matrix  # same training, scored on other samples
    # Regression: the record said "test" for the Python API (it read the config, absent here).
    assert on_val.record.split == "val" and on_test.record.split == "test"
    counts = on_val.record.per_class.counts[0]
    assert sum(map(sum, counts)) == sum(len(t.val) for t in s.tasks)
    no_val = split(digits, n_tasks=2, classes=[0, 1, 2, 3])
    with pytest.raises(Exception, match="stream.validation"):
        run(_mlp(4), no_val, ["finetune"], RunConfig(train=FAST, eval=EvalConfig(split="val")))


def test_evaluation_every_n_steps_is_recorded_and_changes_nothing(tiny_stream):
    train = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", lr=0.05)
    plain = run(_mlp(), tiny_stream, config=RunConfig(train=train))
    every = run(_mlp(), tiny_stream, config=RunConfig(train=train, eval=EvalConfig(every_steps=4)))
    assert every.matrix == plain.matrix  # evaluating inside a task does not disturb training
    assert plain.record.curves.eval is None
    assert "eval" not in plain.record.to_dict()["curves"]  # result.json as before
    curves = every.record.curves.eval
    assert len(curves) == 3
    for fit, points in zip(every.record.timing.per_task, curves):
        assert [p["step"] for p in points] == list(range(4, fit.steps + 1, 4))
        assert all(len(p["scores"]) == 3 and 0 <= p["scores"][0]["accuracy"] <= 1 for p in points)
    # The last evaluation of task 1 inside training is the model of row 1 when it ends there.
    steps = every.record.timing.per_task[0].steps
    if steps % 4 == 0:
        assert [c["accuracy"] for c in curves[0][-1]["scores"]] == every.matrix[1]


def test_joint_is_a_plan_of_one_union_task(tiny_stream):
    from retain.run_state import Plan
    from retain.strategies import build
    from retain.strategies.joint import Joint

    plan = Plan.for_strategies(tiny_stream, [Joint()])
    assert plan.joint and len(plan.tasks) == 1
    assert len(plan.tasks[0].train) == sum(len(t.train) for t in tiny_stream)
    seq = Plan.for_strategies(tiny_stream, [build("finetune")])
    assert not seq.joint and seq.tasks == tuple(tiny_stream.tasks)


def test_run_refuses_a_train_config_in_place_of_the_run_config(tiny_stream):
    with pytest.raises(TypeError, match="RunConfig"):
        run(_mlp(), tiny_stream, ["finetune"], FAST)
