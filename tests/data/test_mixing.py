"""Data mixing: batches follow the ratios as closely as whole samples allow, schedules switch
phase at the right step, cycles alternate, the realised ratio reaches result.json and the report,
and every bad mix is refused in one line before anything trains."""

from __future__ import annotations

import pytest
import torch

from retain.api import run
from retain.config import RunConfig, TrainConfig
from retain.data.mixing import Mix, MixedLoader, apportion
from retain.data.stream import Stream, Task, TensorData
from retain.errors import ConfigError, DataError
from retain.models import MLP
from retain.report.record import record_from_dict
from retain.report.render import render_markdown as to_markdown


def _pool(marker: int, n: int = 50) -> TensorData:
    """Samples whose x says which pool (and which row) they came from."""
    rows = torch.arange(n, dtype=torch.float32)
    x = torch.stack([torch.full((n,), float(marker)), rows], 1)
    return TensorData(
        x=x, y=torch.zeros(n, dtype=torch.long), task=torch.zeros(n, dtype=torch.long)
    )


def _counts(batch, markers):
    return [int((batch["x"][:, 0] == m).sum()) for m in markers]


def _loader(mix, total=20, batch_size=8, grad_accum=1, pools=("a", "b", "c")):
    data = {name: _pool(i) for i, name in enumerate(pools)}
    return MixedLoader(data, Mix.parse(mix), batch_size, total * grad_accum, total, grad_accum)


def test_batches_follow_the_ratio_within_integer_rounding():
    ratios = {"a": 0.5, "b": 0.3, "c": 0.2}
    loader = _loader(ratios, total=25, batch_size=7)
    seen = [0, 0, 0]
    for k, batch in enumerate(loader, 1):
        assert len(batch["x"]) == 7
        seen = [s + c for s, c in zip(seen, _counts(batch, [0, 1, 2]))]
        for s, r in zip(seen, ratios.values()):  # every running total within one sample
            assert abs(s - r * 7 * k) < 1
    assert seen == [88, 52, 35]  # 175 samples: 87.5, 52.5, 35
    assert apportion([0.7, 0.3], [0, 0], 8) == [6, 2]
    assert apportion([0.7, 0.3], [6, 2], 8) == [5, 3]  # 11.2 / 4.8 over 16


def test_pools_are_walked_in_shuffled_order_and_repeat_when_used_up():
    loader = _loader({"a": 0.5, "b": 0.5}, total=25, batch_size=8)  # 100 per pool, 50 held
    rows = torch.cat([b["x"][b["x"][:, 0] == 0, 1] for b in loader])
    assert sorted(rows[:50].tolist()) == list(range(50))  # each sample once per pass
    assert rows[:50].tolist() != list(range(50))  # shuffled


def test_schedule_phases_switch_at_the_right_step():
    schedule = [
        {"until": 1 / 3, "ratios": {"a": 0.8, "b": 0.2}},
        {"until": 2 / 3, "ratios": {"a": 0.5, "b": 0.5}},
        {"until": 1.0, "ratios": {"a": 0.2, "b": 0.8}},
    ]
    # 9 optimizer steps of 2 micro-batches: phases change after steps 3 and 6 (micro 6 and 12).
    loader = _loader(schedule, total=9, batch_size=10, grad_accum=2)
    per_batch = [_counts(b, [0, 1]) for b in loader]
    assert per_batch == [[8, 2]] * 6 + [[5, 5]] * 6 + [[2, 8]] * 6
    realised = loader.realised()
    assert [p["steps"] for p in realised["phases"]] == [[0, 3], [3, 6], [6, 9]]
    assert [p["ratio"] for p in realised["phases"]] == [s["ratios"] for s in schedule]
    assert realised["drawn"] == {"a": 90, "b": 90}


def test_cycle_alternates_pools_every_n_steps():
    loader = _loader({"cycle": ["a", "b", "b"], "every": 2}, total=12, batch_size=4)
    pools = [_counts(b, [0, 1]) for b in loader]
    assert pools == ([[4, 0]] * 2 + [[0, 4]] * 4) * 2
    assert loader.realised()["phases"][0]["target"] == {"a": 1 / 3, "b": 2 / 3}


def _stream(mix=None, **kw):
    g = torch.Generator().manual_seed(0)

    def data(c, n=40):
        return TensorData(x=torch.randn(n, 4, generator=g) + c, y=torch.full((n,), c % 2))

    tasks = (Task("a", data(0), data(0, 10)), Task("b", data(1), data(1, 10)))
    return Stream(
        tasks, n_outputs=2, setting="domain_il", sources={"gen": data(2, 30)}, mix=mix, **kw
    )


def test_realised_ratio_is_in_result_json_and_the_report():
    stream = _stream({"b": {"b": 0.75, "gen": 0.25}})
    cfg = RunConfig(train=TrainConfig(steps=6, batch_size=8))
    record = run(MLP(4, 2, [8]), stream, ["finetune"], cfg).record
    (entry,) = record.curriculum
    assert entry["task"] == "b" and entry["drawn"] == {"b": 36, "gen": 12}
    assert entry["phases"][0]["ratio"] == {"b": 0.75, "gen": 0.25}
    again = record_from_dict(record.to_dict())
    assert again.curriculum == record.curriculum
    text = to_markdown(again)
    data = text.split("## Data")[1]
    assert "| b | 0-6 | b 0.75, gen 0.25 | b 0.75, gen 0.25 | b 36, gen 12 |" in data
    old = record.to_dict()
    del old["curriculum"]  # records written before mixing existed still load and render
    assert record_from_dict(old).curriculum is None and "## Data" not in to_markdown(
        record_from_dict(old)
    )


def test_a_mix_keeps_the_task_budget():
    """Without train.steps the task trains as many steps as its own data gives."""
    stream = _stream({"b": {"b": 0.5, "a": 0.25, "gen": 0.25}})
    cfg = RunConfig(train=TrainConfig(epochs=2, batch_size=8))
    record = run(MLP(4, 2, [8]), stream, ["finetune"], cfg).record
    assert [t.steps for t in record.timing.per_task] == [10, 10]  # 40 samples / 8, two epochs
    assert record.curriculum[0]["drawn"] == {"b": 40, "a": 20, "gen": 20}


@pytest.mark.parametrize(
    ("mix", "error", "needle"),
    [
        ({"b": {"b": 0.7, "gen": 0.2}}, ConfigError, "ratios sum to 0.9, not 1"),
        ({"b": {"b": 1.2, "gen": -0.2}}, ConfigError, "ratio of 'gen' is negative"),
        ({"b": {"b": 0.5, "english": 0.5}}, ConfigError, "unknown pool 'english'; pools are"),
        ({"c": {"b": 1.0}}, ConfigError, "names task 'c', which the stream does not have"),
        (
            {"b": [{"until": 0.6, "ratios": {"b": 1}}, {"until": 0.3, "ratios": {"b": 1}}]},
            ConfigError,
            "phases must end at increasing fractions",
        ),
        ({"b": [{"until": 0.5, "ratios": {"b": 1}}]}, ConfigError, "it must end at 1"),
        ({"b": {"cycle": ["a", "b"]}}, ConfigError, "every must be a whole number"),
        ({"b": 0.5}, ConfigError, "must be ratios"),
    ],
)
def test_bad_mixes_are_one_line(mix, error, needle):
    with pytest.raises(error, match=needle) as e:
        _stream(mix)
    assert "\n" not in str(e.value)
    if "unknown pool" in needle:
        assert str(e.value).endswith("a, b, gen")  # the known pools are listed


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        (TensorData(x=torch.zeros(5, 3), y=torch.zeros(5, dtype=torch.long)), r"'x' is \(3,\)"),
        (TensorData(x=torch.zeros(5, 4)), r"has fields \['x'\] but task 'b' has \['x', 'y'\]"),
        (TensorData(x=torch.zeros(0, 4), y=torch.zeros(0, dtype=torch.long)), "is empty"),
    ],
)
def test_a_pool_of_another_kind_is_refused(source, needle):
    tasks = _stream().tasks
    with pytest.raises(DataError, match="pool 'gen'.*" + needle):
        Stream(tasks, n_outputs=2, sources={"gen": source}, mix={"b": {"b": 0.5, "gen": 0.5}})


def test_a_bad_mix_in_a_config_fails_in_one_line_before_a_run_directory(tmp_path, capsys):
    from retain.cli import main

    cfg = tmp_path / "mix.yaml"
    cfg.write_text(
        "stream: {dataset: digits, scenario: split, n_tasks: 2, classes: [0, 1, 2, 3], "
        "mix: {t2: {t2: 0.5, t1: 0.6}}}\nmodel: {hidden: [8]}\n"
    )
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stream.mix.t2: ratios sum to 1.1" in err
    assert not out.exists()


def test_token_blocks_mix_with_a_source(tiny_causal_lm):
    from retain.config import EvalConfig
    from retain.data.sources import lm_data

    def blocks(lo, n):
        return lm_data([[lo + (s + i) % 16 for i in range(8)] for s in range(n)], 8)

    stream = Stream(
        (Task("es", blocks(16, 12), blocks(16, 4)),),
        objective="causal_lm",
        setting="domain_il",
        sources={"english": blocks(0, 12)},
        mix={"es": {"es": 0.7, "english": 0.3}},
    )
    cfg = RunConfig(
        train=TrainConfig(steps=4, batch_size=4, optimizer="adamw"), eval=EvalConfig(batch_size=4)
    )
    record = run(tiny_causal_lm, stream, ["finetune"], cfg).record
    assert record.curriculum[0]["drawn"] == {"es": 11, "english": 5}  # 11.2 / 4.8 of 16


def test_processes_share_one_global_batch():
    """Under two processes each takes its stride of the same global batch: together they draw
    what one process with twice the batch size draws."""
    pools = {name: _pool(i) for i, name in enumerate("ab")}
    mix = Mix.parse({"a": 0.75, "b": 0.25})

    def loader(rank, world, bs):
        g = torch.Generator().manual_seed(3)
        return MixedLoader(pools, mix, bs, 5, 5, generator=g, rank=rank, world_size=world)

    one = [b["x"] for b in loader(0, 1, 8)]
    two = zip(loader(0, 2, 4), loader(1, 2, 4))
    for whole, (r0, r1) in zip(one, two):
        assert torch.equal(whole[0::2], r0["x"]) and torch.equal(whole[1::2], r1["x"])
