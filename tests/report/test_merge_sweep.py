"""The merge weight sweep in a report: the table of the last sweep and the retention plot."""

from __future__ import annotations

import pytest
import torch

from retain.api import run
from retain.config import RunConfig, TrainConfig
from retain.models import MLP
from retain.report.merging import curve, sweeps
from retain.report.render import write_reports

pytest.importorskip("peft")


def test_report_shows_the_sweep_table_and_plot(tiny_stream, tmp_path):
    torch.manual_seed(0)
    cfg = RunConfig(train=TrainConfig(epochs=1, batch_size=32, lr=0.05))
    r = run(MLP(64, 6, [16]), tiny_stream, [{"name": "merge", "sweep": 3}], cfg)
    last = sweeps(r.record)[-1]
    c = curve(r.record, last)
    assert c["weight"] == [0.0, 0.5, 1.0]
    # earlier tasks at weight w: the mean of tasks 0 and 1 in that point's scores
    p = last["points"][1]["tasks"]
    assert c["earlier"][1] == pytest.approx((p[0]["accuracy"] + p[1]["accuracy"]) / 2)
    written = write_reports(tmp_path, r.record)
    md = (tmp_path / "report.md").read_text()
    assert "## Merge weight sweep" in md and "| 0.5 |" in md
    assert (tmp_path / "plots" / "merge-sweep-merge.png") in written
    assert "merge.sweep=" not in md  # not dumped into the strategy-state table
