"""The learned-against-kept scatter of a comparison whose runs have evaluation suites."""

from __future__ import annotations

from pathlib import Path

from test_render import make_compare, make_run

from retain.report import tradeoff
from retain.report.render import render_markdown, write_reports


def _with_suites(label: str, R: list[list[float]], general: list[float], **kw: object):
    run = make_run(label, R, tasks=["es"], score="loss", **kw)
    run.initial = "pretrained"
    run.suites = {"general": [{"loss": g, "perplexity": 2.0 * g} for g in general]}
    run.matrices["perplexity"] = [[2.0 * v for v in row] for row in R]
    return run


def test_points_are_the_first_and_last_rows_in_the_suites_score() -> None:
    run = _with_suites("finetune", [[4.0], [3.0]], [3.5, 3.9])
    # The suites speak in perplexity, so the tasks' axis is R's perplexity matrix.
    assert tradeoff.points(run, "perplexity") == [(8.0, {"general": 7.0}), (6.0, {"general": 7.8})]


def test_drawn_for_a_comparison_with_suites_only(tmp_path: Path) -> None:
    with_suites = make_compare(
        {
            "finetune": _with_suites("finetune", [[4.0], [3.0]], [3.5, 3.9]),
            "replay": _with_suites("replay", [[4.0], [3.1]], [3.5, 3.6]),
        }
    )
    assert tradeoff.drawable(with_suites)
    assert tradeoff.TITLE in render_markdown(with_suites)
    write_reports(tmp_path, with_suites)
    png = tmp_path / "plots" / f"{tradeoff.KEY}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    without = make_compare({"finetune": make_run("finetune", [[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]])})
    assert not tradeoff.drawable(without)
    assert tradeoff.TITLE not in render_markdown(without)
    # A single run is not a comparison: its suites have their own table.
    assert not tradeoff.drawable(with_suites.runs["finetune"])
