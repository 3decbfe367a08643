"""Task names and labels are the user's text: they reach the plots as written."""

from __future__ import annotations

from retain.report.render import write_reports


def test_dollar_signs_in_task_names_do_not_start_math_mode(tmp_path):
    # An unbalanced '$\frac{1}$' made matplotlib's math parser raise from the heat map.
    rec = {
        "kind": "run",
        "strategy": "cost $5",
        "tasks": ["$\\frac{1}$ x", "a$b_c$"],
        "score": "accuracy",
        "matrix": [[0, 0], [0.9, 0.1], [0.3, 0.8]],
        "metrics": {"avg_accuracy": 0.55},
    }
    written = {p.name for p in write_reports(tmp_path, rec)}
    assert {"heatmap-cost-5.png", "curves-cost-5.png"} <= written, written
    assert "a$b_c$" in (tmp_path / "report.md").read_text()
