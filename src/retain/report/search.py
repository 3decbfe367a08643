"""The trade-off ``retain update --strategy auto`` found: what each trial learned against what it
lost.

One point per trial (colour: its strategy): across, the worst drop on the earlier tasks and
suites (lower is better, so the axis is reversed: right is better); up, the gain on the new
data's validation split. The Pareto front is joined by a line, the chosen trial is a star, and
the gate's ``max_drop`` is a dashed line: trials left of it would fail the gate.
"""

from __future__ import annotations

import io
from typing import Any


def png(search: dict[str, Any]) -> bytes:
    """The scatter as PNG bytes (written into the new package as ``search.png``)."""
    from retain.report.plots import DPI, _figure

    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    ok = [t for t in search["trials"] if t.get("error") is None]
    names = list(dict.fromkeys(t["strategy"] for t in ok))
    for i, name in enumerate(names):
        pts = [t for t in ok if t["strategy"] == name]
        ax.plot(
            [t["worst_drop"] for t in pts],
            [t["gain"] for t in pts],
            marker="o",
            linestyle="",
            color=f"C{i}",
            label=name,
        )
    front = sorted((t for t in ok if t.get("pareto")), key=lambda t: t["worst_drop"])
    if len(front) > 1:
        ax.plot(
            [t["worst_drop"] for t in front],
            [t["gain"] for t in front],
            color="grey",
            linewidth=0.8,
            label="Pareto front",
        )
    chosen = next((t for t in ok if t["number"] == search["chosen"]), None)
    if chosen is not None:
        ax.plot(
            chosen["worst_drop"],
            chosen["gain"],
            marker="*",
            markersize=14,
            color="black",
            linestyle="",
            label=f"chosen (trial {chosen['number']})",
        )
    ax.axvline(search["thresholds"]["max_drop"], color="red", linestyle="--", linewidth=0.8)
    ax.invert_xaxis()
    ax.set_xlabel(f"worst drop on earlier tasks and suites ({search['metric']}; right is better)")
    ax.set_ylabel(f"gain on '{search['task']}' validation")
    ax.set_title(f"--strategy auto: {len(search['trials'])} trial(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
