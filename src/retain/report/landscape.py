"""The loss-landscape figure (``retain landscape``) and its section in a run's report.

``draw`` makes one PNG from the summary and the grid values :mod:`retain.landscape` computed:
the loss of D1, D2 and their mix on the plane (contours, log-spaced where the losses span more
than a factor of 3), the three models marked, the training path projected onto the plane; below,
the loss along the straight lines θ₁→θ₂ and θ₁→θ_joint with their barriers, and the path's own
losses with its distance to the plane. ``section`` reads ``RUN/landscape/*.json`` for the
report: the figure and its numbers, when ``retain landscape`` has been run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retain.report.plots import _figure, _save

FOLDER = "landscape"
MODES = ("plane", "random")
MARKS = {
    "theta1": ("o", "θ₁"),
    "theta2": ("s", "θ₂"),
    "joint": ("*", "θ_joint"),
    "theta": ("o", "θ"),
}
LOG_SPAN = 3.0  # losses spanning more than this factor get log-spaced levels: valleys stand out


def _scale(ax: Any, values: list[float]) -> None:
    """A log y-axis where the values span more than ``LOG_SPAN``, with plain tick labels."""
    from matplotlib.ticker import FuncFormatter

    lo, hi = max(min(values), 1e-8), max(values)
    if hi / lo > LOG_SPAN:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:.3g}")
        ax.yaxis.set_major_formatter(plain)
        if hi / lo < 10:  # within a decade the minor ticks are the only labels; else they crowd
            ax.yaxis.set_minor_formatter(plain)


def _colour(labels: dict[str, str], s: str) -> str:
    """One colour per dataset in every panel: D1, D2, mix."""
    return f"C{list(labels).index(s)}" if s in labels else "black"


def _labels(summary: dict[str, Any]) -> dict[str, str]:
    t = summary["tasks"]
    d1, d2 = t["D1"], t["D2"]
    if d1 == d2:
        return {d1: f"loss on {d1}"}
    return {d1: f"D1: loss on {d1}", d2: f"D2: loss on {d2}", "mix": f"mix: {d1} ∪ {d2}"}


def _contour(ax: Any, fig: Any, xs: Any, ys: Any, z: Any, title: str) -> None:
    import numpy as np
    from matplotlib.colors import LogNorm

    lo, hi = float(np.nanmin(z)), float(np.nanmax(z))
    lo = max(lo, 1e-8)
    if hi / lo > LOG_SPAN:
        levels = np.geomspace(lo, hi, 24)
        cs = ax.contourf(
            xs, ys, np.clip(z, lo, hi), levels=levels, norm=LogNorm(lo, hi), cmap="viridis"
        )
        scale = "log scale"
    else:
        levels = np.linspace(lo, hi, 24)
        cs = ax.contourf(xs, ys, z, levels=levels, cmap="viridis")
        scale = "linear scale"
    ax.contour(xs, ys, z, levels=levels[::2], colors="white", linewidths=0.4, alpha=0.6)
    bar = fig.colorbar(cs, ax=ax, shrink=0.85)
    ticks = np.geomspace(lo, hi, 6) if scale == "log scale" else np.linspace(lo, hi, 6)
    bar.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
    bar.minorticks_off()
    bar.set_label(f"loss ({scale})", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)


def _marks(ax: Any, summary: dict[str, Any]) -> None:
    path = summary.get("path") or []
    if path:
        px = [p["xy"][0] for p in path]
        py = [p["xy"][1] for p in path]
        far = max(p["distance"] for p in path)
        ax.plot(px, py, "-", color="#ff7f0e", linewidth=1.2, zorder=3)
        ax.plot(
            px,
            py,
            "o",
            color="#ff7f0e",
            markersize=2.5,
            zorder=3,
            label=f"training path (projected; ≤ {far:.2g} off the plane)",
        )
    for key, p in summary["points"].items():
        marker, label = MARKS[key]
        ax.plot(
            *p["xy"],
            marker,
            markersize=11 if marker == "*" else 8,
            markerfacecolor="white",
            markeredgecolor="black",
            zorder=4,
            label=label,
        )
        ax.annotate(
            label,
            p["xy"],
            xytext=(6, 6),
            textcoords="offset points",
            fontsize=9,
            color="white",
            fontweight="bold",
            zorder=5,
        )


def _line_panel(ax: Any, name: str, line: dict[str, Any], summary: dict[str, Any]) -> None:
    labels = _labels(summary)
    for s, v in line["losses"].items():
        b = line["barrier"][s]
        ax.plot(
            line["t"], v, color=_colour(labels, s), label=f"{labels.get(s, s)} (barrier {b:.3g})"
        )
    end = "θ₂" if name == "theta1-theta2" else "θ_joint"
    ax.set_xlabel(f"t: (1 - t) θ₁ + t {end}", fontsize=8)
    ax.set_ylabel("loss", fontsize=8)
    _scale(ax, [v for vs in line["losses"].values() for v in vs])
    ax.set_title(f"straight line θ₁ → {end}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)


def _path_panel(ax: Any, summary: dict[str, Any]) -> None:
    labels = _labels(summary)
    path = summary["path"]
    steps = list(range(len(path)))
    for s in path[0]["loss"]:
        ax.plot(
            steps,
            [p["loss"][s] for p in path],
            "-o",
            markersize=2.5,
            color=_colour(labels, s),
            label=labels.get(s, s),
        )
    _scale(ax, [v for p in path for v in p["loss"].values()])
    ax.set_ylabel("loss (the snapshot's own)", fontsize=8)
    ticks = [k for k, p in enumerate(path) if p["end"]]
    ax.set_xticks(ticks, [f"end of\n{path[k]['task_name']}" for k in ticks], fontsize=7)
    ax.set_xlabel("snapshot along the training path", fontsize=8)
    twin = ax.twinx()
    twin.plot(steps, [p["distance"] for p in path], ":", color="grey", label="distance to plane")
    twin.set_ylabel("distance to the plane", fontsize=8, color="grey")
    twin.tick_params(labelsize=7, colors="grey")
    ax.set_title("along the training path", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    ax.tick_params(labelsize=7)


def _slices(ax: Any, xs: Any, ys: Any, grids: dict[str, Any], summary: dict[str, Any]) -> None:
    import numpy as np

    labels = _labels(summary)
    iy, ix = int(np.argmin(np.abs(ys))), int(np.argmin(np.abs(xs)))
    for i, (s, z) in enumerate(grids.items()):
        ax.plot(xs, z[iy, :], color=f"C{i}", label=f"{labels.get(s, s)}, along δ")
        ax.plot(ys, z[:, ix], ":", color=f"C{i}", label=f"{labels.get(s, s)}, along η")
    _scale(ax, [float(v) for z in grids.values() for v in z.ravel()])
    ax.set_xlabel("step along the direction (filter-normalised units)", fontsize=8)
    ax.set_title("slices through θ", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)


def caption(summary: dict[str, Any]) -> str:
    """What the figure shows and how it was computed, in one line."""
    g = summary["grid"]
    rows = ", ".join(f"{n} {k}" for k, n in g["samples"].items())
    cpu = f", {g['cpu_seconds']:.1f} s of CPU time" if g.get("cpu_seconds") is not None else ""
    what = (
        "two filter-normalised random directions around θ (Li et al. 2018)"
        if summary["mode"] == "random"
        else "the plane through θ₁, θ₂ and θ_joint (orthonormal axes, parameter-space units)"
    )
    return (
        f"Loss on {what}; {g['n']}×{g['n']} grid, {g['split']} rows scored per dataset: {rows} "
        f"(fixed subsample, seed {g['seed']}); grid computed in {g['seconds']:.1f} s on "
        f"{g['device']} ({g['threads']} threads{cpu})."
    )


def draw(
    summary: dict[str, Any],
    xs: Any,
    ys: Any,
    grids: dict[str, Any],
    lines: dict[str, dict[str, Any]],
    path: Path,
) -> Path:
    """The landscape figure: contour panels above, lines and path below."""
    labels = _labels(summary)
    panels = [s for s in labels if s in grids]
    fig = _figure(15.0, 9.6)
    axes = fig.subplots(2, 3)
    for ax, s in zip(axes[0], panels):
        _contour(ax, fig, xs, ys, grids[s], labels[s])
        _marks(ax, summary)
        ax.set_xlim(xs[0], xs[-1])
        ax.set_ylim(ys[0], ys[-1])
    for ax in axes[0][len(panels) :]:
        ax.set_visible(False)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, 0.925))
    bottom = list(axes[1])
    if summary["mode"] == "random":
        _slices(bottom[0], xs, ys, {s: grids[s] for s in panels}, summary)
        used = 1
    else:
        for ax, (name, line) in zip(bottom, lines.items()):
            _line_panel(ax, name, line, summary)
        used = len(lines)
        if summary.get("path"):
            _path_panel(bottom[used], summary)
            used += 1
    for ax in bottom[used:]:
        ax.set_visible(False)
    head = summary.get("joint_vs_path", {}).get("finding", "")
    fig.suptitle(caption(summary) + ("\n" + head if head else ""), fontsize=8.5, wrap=True)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return _save(fig, path)


def section(run_dir: Path) -> tuple[list[tuple[Any, ...]], dict[str, Path]]:
    """The report's landscape blocks and images, from ``RUN/landscape`` (nothing if absent)."""
    blocks: list[tuple[Any, ...]] = []
    images: dict[str, Path] = {}
    for mode in MODES:
        summary_file = Path(run_dir) / FOLDER / f"{mode}.json"
        png = summary_file.with_suffix(".png")
        if not summary_file.is_file() or not png.is_file():
            continue
        try:
            s = json.loads(summary_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a damaged summary leaves the report without the section, not broken
        if not blocks:
            blocks.append(("h", 2, "Loss landscape"))
        key = f"landscape-{mode}"
        images[key] = png
        items = [caption(s)]
        for name, line in (s.get("lines") or {}).items():
            end = "θ₂" if name == "theta1-theta2" else "θ_joint"
            bars = ", ".join(f"{k} {v:.3g}" for k, v in line["barrier"].items())
            items.append(f"barrier on the straight line θ₁ → {end}: {bars}")
        for k, v in (s.get("distances") or {}).items():
            items.append(f"distance {k.replace('theta', 'θ').replace('-', ' to ')}: {v:.4g}")
        finding = (s.get("joint_vs_path") or {}).get("finding")
        blocks += [("p", finding)] if finding else []
        blocks += [("ul", items), ("img", key, f"loss landscape ({mode})")]
    return blocks, images
