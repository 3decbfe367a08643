"""EWC: the fast per-sample Fisher equals a loop over samples for every label mode and method;
separate and online accumulation; the penalty's collapsed form; the class-IL warning; causal LMs;
and, on permuted digits, less forgetting than finetune."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import task_ctx
from torch import nn

from retain.api import run
from retain.config import EvalConfig, RunConfig, TrainConfig
from retain.data.stream import Stream, Task, TensorData
from retain.errors import Unsupported
from retain.models import MLP
from retain.strategies.base import Strategy
from retain.strategies.ewc import EWC


def slow_fisher(model, x, y, mode, generator):
    """One backward per sample, straight from the definitions."""
    with torch.no_grad():
        logits = model(x)
    if mode == "sampled":
        y = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator).squeeze(1)
    out = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        logp = torch.log_softmax(model(x[i : i + 1]), -1)[0, y[i]]
        (-logp).backward()
        w = logp.exp().detach() if mode == "empirical_weighted" else 1.0
        for n, p in model.named_parameters():
            out[n] += w * p.grad**2
    return {n: v / len(x) for n, v in out.items()}


def _nonlinear_model():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 10)
    )


class _PerToken(nn.Module):
    """Linears only, but the first sees 8 rows (tokens) per sample: rows are not samples."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 10)

    def forward(self, x):
        h = self.a(x.reshape(-1, 8)).view(len(x), 8, 16).relu().mean(1)
        return self.b(h)


def _inplace_relu_model():
    """Linears only, but an in-place ReLU rewrites a Linear's output after its forward hook."""
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(inplace=True), nn.Linear(32, 10))


@pytest.mark.parametrize("mode", ["sampled", "empirical", "empirical_weighted"])
def test_fast_fisher_equals_a_loop_over_samples(digits_permuted, mode):
    # Regression: the last two models passed the closed form's checks and got a wrong Fisher
    # from it ("auto" picked it); they must fall back to vmap.
    for model, methods in (
        (MLP(64, 10, [32, 16]), ("auto", "linear", "vmap", "loop")),
        (_nonlinear_model(), ("auto", "vmap", "loop")),
        (_inplace_relu_model(), ("auto", "vmap", "loop")),
        (_PerToken(), ("auto", "vmap", "loop")),
    ):
        ctx = task_ctx(digits_permuted, n=40)
        data = ctx.task.train
        expected = slow_fisher(model, data.x, data.y, mode, torch.Generator().manual_seed(0))
        for method in methods:
            ctx = task_ctx(digits_permuted, n=40)
            ewc = EWC(fisher=mode)
            got = ewc.fisher_diagonal(model, ctx, method=method)
            assert method == "auto" or ewc.stats()["fisher_method"] == method
            for n, v in expected.items():
                torch.testing.assert_close(got[n], v, rtol=1e-4, atol=1e-9, msg=f"{method} {n}")
        assert model.training  # restored after the eval-mode pass


def test_fisher_variants_differ_and_auto_picks_the_closed_form(digits_permuted):
    model = MLP(64, 10, [32])
    got = {}
    for mode in ("sampled", "empirical", "empirical_weighted"):
        ewc = EWC(fisher=mode)
        got[mode] = ewc.fisher_diagonal(model, task_ctx(digits_permuted, n=64))
        assert ewc.stats()["fisher_method"] == "linear"
    w = "net.3.weight"
    # Weighting by p(y|x) <= 1 can only shrink the empirical Fisher.
    assert (got["empirical_weighted"][w] <= got["empirical"][w] + 1e-9).all()
    assert not torch.allclose(got["sampled"][w], got["empirical"][w])


def _fake_fisher(ewc, values):
    it = iter(values)
    # fresh tensors, as fisher_diagonal returns: the strategy updates its state in place
    ewc.fisher_diagonal = lambda model, ctx, method="auto": {
        n: v.clone() for n, v in next(it).items()
    }


def test_online_and_separate_accumulation(digits_permuted):
    model = MLP(64, 10, [8])
    names = [n for n, _ in model.named_parameters()]
    f1 = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    f2 = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    online, separate = EWC(mode="online", gamma=0.5, lam=2.0), EWC(mode="separate", lam=2.0)
    anchors = []
    for ewc in (online, separate):
        _fake_fisher(ewc, [f1, f2])
    for i in range(2):
        anchors.append({n: p.detach().clone() for n, p in model.named_parameters()})
        ctx = task_ctx(digits_permuted, i, model)
        online.after_task(model, ctx)
        separate.after_task(model, ctx)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
    for n in names:
        torch.testing.assert_close(online.fisher_[0][n], 0.5 * f1[n] + f2[n])
        assert torch.equal(online.anchor_[0][n], anchors[1][n])
        # separate: the two penalties summed into one (one F and one anchor held, not two)
        torch.testing.assert_close(separate.fisher_[0][n], f1[n] + f2[n])
        mean = (f1[n] * anchors[0][n] + f2[n] * anchors[1][n]) / (f1[n] + f2[n])
        torch.testing.assert_close(separate.anchor_[0][n], mean)
    assert len(online.fisher_) == 1 and len(separate.fisher_) == 1
    assert separate.const_ > 0
    ctx = task_ctx(digits_permuted, 1, model)
    params = dict(model.named_parameters())
    for ewc, terms in (
        (online, [(online.fisher_[0], online.anchor_[0])]),
        (separate, [(f1, anchors[0]), (f2, anchors[1])]),  # the paper's one penalty per task
    ):
        naive = 2.0 * sum((f[n] * (params[n] - a[n]) ** 2).sum() for f, a in terms for n in names)
        naive.backward()
        want = {n: p.grad.clone() for n, p in params.items()}
        model.zero_grad(set_to_none=True)
        penalty = ewc.penalty(ctx)
        assert penalty.via_grad  # one process, no loss scaler: the gradient path
        # The gradient path: the loss is untouched and after_backward adds the gradient.
        assert ewc.loss(torch.zeros(()), None, {}, ctx).item() == 0.0
        ewc.after_backward(model, ctx)
        torch.testing.assert_close(penalty.value(), naive.item(), rtol=1e-5, atol=1e-5)
        for n in names:
            torch.testing.assert_close(params[n].grad, want[n], rtol=1e-4, atol=1e-6)
        # The loss path (fp16 scaling, sharded gradients): the same value and gradient.
        model.zero_grad(set_to_none=True)
        penalty.via_grad = False
        got = ewc.loss(torch.zeros(()), None, {}, ctx)
        got.backward()
        torch.testing.assert_close(got, naive, rtol=1e-5, atol=1e-5)
        for n in names:
            torch.testing.assert_close(params[n].grad, want[n], rtol=1e-4, atol=1e-6)
        model.zero_grad(set_to_none=True)
        ewc.invalidate()  # as after_task does: the value reached is kept for the report
        assert ewc.stats()["penalty_at_task_end"] == pytest.approx(naive.item(), rel=1e-5)


def test_validation():
    for bad in (
        {"lam": -1},
        {"mode": "both"},
        {"gamma": 1.5},
        {"fisher": "true"},
        {"fisher_samples": 0},
    ):
        with pytest.raises(ValueError):
            EWC(**bad)


def test_warns_once_in_class_il_unless_composed_with_rehearsal(digits_class_il):
    cfg = TrainConfig(steps=2, batch_size=32)
    messages: list[str] = []
    run(
        MLP(64, 10, [16]),
        digits_class_il,
        [EWC(fisher_samples=32)],
        RunConfig(train=cfg),
        warn=messages.append,
    )
    assert len(messages) == 1 and "class_il" in messages[0] and "'ewc'" in messages[0]
    messages.clear()
    run(
        MLP(64, 10, [16]),
        digits_class_il,
        [EWC(fisher_samples=32), "cumulative"],
        RunConfig(train=cfg),
        warn=messages.append,
    )
    assert messages == []


def _lm_task(name, lo, n=12, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(lo, lo + 32, (n, 1), generator=g)
    ids = lo + (start - lo + torch.arange(length)) % 32
    labels = ids.clone()
    labels[: n // 2, -3:] = -100  # padding at the end of some sequences
    data = TensorData(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels)
    return Task(name, data, data[torch.arange(4)])


@pytest.mark.parametrize("fisher", ["sampled", "empirical_weighted"])
def test_ewc_on_a_causal_lm(tiny_causal_lm, fisher):
    stream = Stream(
        (_lm_task("a", 0), _lm_task("b", 32, seed=1)), objective="causal_lm", setting="domain_il"
    )
    ewc = EWC(fisher=fisher, fisher_samples=6, lam=1.0)
    cfg = TrainConfig(steps=4, batch_size=4, optimizer="adamw", lr=3e-3)
    r = run(tiny_causal_lm, stream, [ewc], RunConfig(train=cfg, eval=EvalConfig(batch_size=8)))
    assert all(math.isfinite(v) for task in r.record.curves.loss for _, v in task)
    assert len(ewc.fisher_) == 1  # none after the last task: nothing would use it
    assert ewc.stats()["fisher_bytes"] > 0 and "fisher_seconds" not in ewc.stats()
    assert all(torch.isfinite(f).all() for fisher_ in ewc.fisher_ for f in fisher_.values())
    assert sum(float(f.sum()) for f in ewc.fisher_[0].values()) > 0
    ctx = task_ctx(stream, 1, r.model)
    penalty = ewc.penalty(ctx).value()
    assert math.isfinite(penalty) and penalty > 0  # task a's anchor is behind us


def test_the_default_fisher_fits_the_objective(digits_permuted):
    """``auto`` samples labels where the model predicts a distribution and uses the observed
    ones for regression, whose outputs are not probabilities; the stats record which was used.
    A Fisher that needs probabilities is refused on a regression stream before any training."""
    regression = SimpleNamespace(objective="regression", setting="domain_il")
    assert EWC().fisher_for("regression") == "empirical"
    assert EWC().fisher_for("classification") == EWC().fisher_for("causal_lm") == "sampled"
    EWC().check(regression)
    EWC(fisher="empirical").check(regression)
    for fisher in ("sampled", "empirical_weighted"):
        with pytest.raises(Unsupported, match=f"'ewc' with fisher '{fisher}'.*fisher=empirical"):
            EWC(fisher=fisher).check(regression)
        ctx = dataclasses.replace(task_ctx(digits_permuted), stream=regression)
        with pytest.raises(Unsupported):  # the Python API refuses it in setup
            EWC(fisher=fisher).setup(nn.Linear(2, 1), ctx)
    ewc = EWC()
    ewc.fisher_diagonal(MLP(64, 10, [32]), task_ctx(digits_permuted, n=64))
    assert ewc.stats()["fisher"] == "sampled"


# --------------------------------------------------------------------------- effect


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec, margin",
    [
        # Measured with seed 0 (finetune: avg 0.522, forgetting 0.360): separate lam 2 -> 0.281,
        # online lam 3 -> 0.210.
        ({"name": "ewc", "lam": 2.0}, 0.04),
        ({"name": "ewc", "mode": "online", "lam": 3.0}, 0.08),
    ],
)
def test_ewc_forgets_less_than_finetune(
    digits_permuted, finetune_permuted, run_strategies, spec, margin
):
    ft = finetune_permuted.metrics
    r = run_strategies(digits_permuted, [spec]).metrics
    assert r.forgetting < ft.forgetting - margin
    assert r.avg_accuracy > ft.avg_accuracy - 0.03


class _CrashBefore(Strategy):
    """Raises before training task 2 while armed: a crash in the middle of a run."""

    def __init__(self, armed: bool = False) -> None:
        self.armed = armed

    def before_task(self, model, ctx):
        if self.armed and ctx.task_index == 2:
            raise KeyboardInterrupt("simulated crash")
        return model


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "ewc", "fisher": "sampled"},
        {"name": "ewc", "mode": "online", "fisher": "empirical"},
        {"name": "si"},
        {"name": "mas"},
        {"name": "lwf"},
    ],
)
def test_resume_gives_the_uninterrupted_result(tiny_stream, tmp_path, spec):
    # State saved after task 2 (Fisher, importances) is enough to finish the run identically;
    # LwF's teacher is rebuilt from the restored weights.
    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", lr=0.05)
    torch.manual_seed(0)
    full = run(
        MLP(64, 6, [32]), tiny_stream, [dict(spec), _CrashBefore()], RunConfig(train=cfg, seed=1)
    )
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        run(
            MLP(64, 6, [32]),
            tiny_stream,
            [dict(spec), _CrashBefore(armed=True)],
            RunConfig(train=cfg, seed=1),
            out_dir=tmp_path / "r",
        )
    resumed = run(
        MLP(64, 6, [32]),
        tiny_stream,
        [dict(spec), _CrashBefore()],
        RunConfig(train=cfg, seed=1),
        out_dir=tmp_path / "r",
        resume=True,
    )
    assert resumed.matrix == full.matrix


def test_no_fisher_after_the_last_task(tiny_causal_lm):
    """The Fisher of the last task would protect it from tasks that never come: the pass (a
    minute and a gigabyte on a 135M model) is skipped."""
    stream = Stream((_lm_task("a", 0),), objective="causal_lm", setting="domain_il")
    ewc = EWC(fisher_samples=4)
    calls = []
    ewc.fisher_diagonal = lambda model, ctx, method="auto": calls.append(1) or {}
    cfg = TrainConfig(steps=1, batch_size=4, optimizer="adamw", lr=3e-3)
    run(tiny_causal_lm, stream, [ewc], RunConfig(train=cfg, eval=EvalConfig(batch_size=8)))
    assert calls == [] and ewc.fisher_ == []


def test_importance_in_the_parameters_dtype(tiny_causal_lm):
    """A bf16 model's Fisher and anchor are bf16 (the model's own size, not twice it), over the
    trainable parameters only."""
    model = tiny_causal_lm.to(torch.bfloat16)
    model.model.embed_tokens.weight.requires_grad_(False)
    stream = Stream(
        (_lm_task("a", 0), _lm_task("b", 32, seed=1)), objective="causal_lm", setting="domain_il"
    )
    ewc = EWC(fisher_samples=4)
    ewc.after_task(model, task_ctx(stream, 0, model))
    (fisher,), (anchor,) = ewc.fisher_, ewc.anchor_
    assert "model.embed_tokens.weight" not in fisher
    assert fisher and all(f.dtype == torch.bfloat16 for f in fisher.values())
    assert all(a.dtype == torch.bfloat16 for a in anchor.values())
    cfg = TrainConfig(steps=2, batch_size=4, optimizer="adamw", lr=3e-3)
    r = run(model, stream, [ewc], RunConfig(train=cfg, eval=EvalConfig(batch_size=8)))
    assert all(math.isfinite(v) for row in r.matrix for v in row)


def test_a_checkpoint_with_one_fisher_per_task_still_penalises_as_the_paper(digits_permuted):
    """Checkpoints written before separate mode summed its penalties hold one F and anchor per
    task: loaded, they give the same penalty as the summed form."""
    model = MLP(64, 10, [8])
    f = [{n: torch.rand_like(p) for n, p in model.named_parameters()} for _ in range(2)]
    a = [{n: torch.randn_like(p) for n, p in model.named_parameters()} for _ in range(2)]
    old = EWC(lam=2.0)
    old.load_state_dict({"fisher_": f, "anchor_": a})  # no const_: the default 0
    ctx = task_ctx(digits_permuted, 1, model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        naive = 2.0 * sum(
            (fi[n] * (params[n] - ai[n]) ** 2).sum() for fi, ai in zip(f, a) for n in params
        )
    assert old.penalty(ctx).value() == pytest.approx(float(naive), rel=1e-5)
