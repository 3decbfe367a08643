"""Report blocks that make the HTML page readable on its own: the colouring of a heat table (R
as a heat map in the page's own table) and the run's full settings, folded away.

Only the standard library and PyYAML are imported (PyYAML writes the settings as the run's
config.resolved.yaml reads).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from retain.report.columns import ACCURACY_LIKE
from retain.report.summary import report_title

if TYPE_CHECKING:
    from retain.report.record import Record, RunRecord


def heat(R: list[list[float]], key: str, higher: bool) -> dict[str, Any]:
    """How a heat table colours its cells: ``values`` (R, without the row labels), the range of
    the colour scale and the score's direction. Accuracy-like scores use [0, 1], so tables of
    different runs compare by eye; other scores their own finite range."""
    finite = [v for row in R for v in row if isinstance(v, (int, float)) and math.isfinite(v)]
    if key in ACCURACY_LIKE:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    return {"values": R, "lo": lo, "hi": hi, "higher": higher}


SETTINGS_NOTE = (
    "The settings the run was started with, as in its config.resolved.yaml: the run is "
    "reproducible from them alone."
)


def settings_blocks(record: Record, runs: dict[str, RunRecord]) -> list[tuple[Any, ...]]:
    """The run's full settings, folded away; one per distinct configuration when the runs of a
    report come from several run directories."""
    import yaml

    configs: dict[str, dict[str, Any]] = {}
    if record.config:
        configs[report_title(record)] = record.config
    else:
        for label, run in runs.items():
            if run.config and run.config not in configs.values():
                configs[label] = run.config
    if not configs:
        return []
    blocks: list[tuple[Any, ...]] = [("h", 2, "Settings"), ("p", SETTINGS_NOTE)]
    for name, config in configs.items():
        text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        blocks.append(("details", f"{name}: config.resolved.yaml", text))
    return blocks
