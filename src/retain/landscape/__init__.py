"""``retain landscape``: the loss surfaces of two tasks and their mix on a plane of parameter space.

Through θ₁ (the model after task i), θ₂ (after task j, trained from θ₁ through the tasks between)
and θ_joint (a model trained on all the tasks at once), the plane shows where sequential training
went: the loss of D1, D2 and their union on a grid, the three points, the training path projected
onto the plane (from the run's snapshots, each with its distance to the plane), and the loss along
the straight lines θ₁→θ₂ and θ₁→θ_joint with their barriers (linear mode connectivity, Frankle et
al. 2020). With ``random=True`` the plane is two filter-normalised random directions around one
model instead (Li et al. 2018).

Everything is scored on a fixed subsample of each task (``samples`` rows, drawn with ``seed``)
and written to ``RUN/landscape/``: ``plane.png`` (or ``random.png``), the grid values
(``plane.safetensors``) and the summary (``plane.json``), which the run's report then shows.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from retain.errors import ConfigError
from retain.landscape.plane import Evaluator, Plane, barrier, dot, plane_through, random_plane
from retain.landscape.points import Run, check_joint, resolve, train_joint

__all__ = ["landscape"]

SPLITS = ("train", "val", "test")


def landscape(
    run_dir: str | Path,
    *,
    joint: str | Path | None = None,
    train_joint_model: bool = False,
    tasks: tuple[int, int] | None = None,
    run: str | None = None,
    random: bool = False,
    path: bool | None = None,
    grid: int = 41,
    margin: float = 0.25,
    samples: int = 512,
    split: str = "train",
    line_points: int = 21,
    seed: int = 0,
    out: str | Path | None = None,
    report: bool = True,
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compute and draw the landscape of a run; return its summary (also ``plane.json``).

    Args:
        run_dir: a run directory, or a comparison's (its first sequential run, or ``run``; its
            ``joint`` run is θ_joint).
        joint: a joint run's directory (strategy ``joint``, same tasks and model) for θ_joint.
        train_joint_model: without a joint run, train one with the run's config (strategy
            ``joint``) into ``OUT/joint``, or reuse the one trained there before.
        tasks: the two tasks ``(i, j)``, 1-based, ``i < j`` (default ``(1, 2)``).
        run: the run of a comparison to draw (its folder or label).
        random: two filter-normalised random directions around the model after task j.
        path: draw the training path (needs ``output.snapshots``); None: when there are
            snapshots.
        grid: points per side of the grid; margin: space around the points, as a fraction of
            their extent.
        samples: rows per task scored (a fixed subsample); split: ``train``, ``val`` or ``test``.
        line_points: points on each straight line. seed: the subsample's and directions' seed.
        out: where to write (default ``RUN/landscape``). report: re-render the run's report.

    Returns:
        The summary: points and their coordinates and losses, distances, barriers, the path,
        where θ_joint lies relative to the path, the grid's extent and timing.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    if grid < 3 or samples < 1 or line_points < 3 or not 0 <= margin <= 10:
        raise ConfigError(
            "--grid must be at least 3, --samples at least 1 and --margin within [0, 10], got "
            f"grid={grid}, samples={samples}, margin={margin}"
        )
    run_dir = Path(run_dir)
    seq, joint_run, home = resolve(run_dir, Path(joint) if joint is not None else None, run)
    out = Path(out) if out is not None else home / "landscape"
    n_tasks = len(seq.record.tasks)
    i, j = tasks or ((max(1, seq.trained - 1), seq.trained) if random else (1, 2))
    if not random and (seq.record.joint or n_tasks < 2):
        raise ConfigError(
            f"'{seq.path}' trained "
            + ("all tasks at once (joint)" if seq.record.joint else "one task")
            + ": a landscape plane needs θ₁ and θ₂ of a sequential run of two or more tasks "
            "(--random draws one model)"
        )
    done = seq.trained
    if not (1 <= i <= done and 1 <= j <= done and (i < j or (random and i <= j))):
        raise ConfigError(
            f"--tasks {i},{j}: need 1 <= i < j <= {done} (the tasks '{seq.path}' has trained)"
        )
    snaps = seq.snapshots()
    if path and not snaps:
        raise ConfigError(
            f"'{seq.path}' has no snapshots to draw the training path from: rerun it with "
            "output.snapshots=10, or leave out --path"
        )
    draw_path = bool(snaps) if path is None else path
    for k in dict.fromkeys((i, j)):  # before a joint model is trained for nothing
        seq.end_file(k)
    if not random:
        if joint_run is None and train_joint_model:
            joint_run = train_joint(seq, out / "joint", progress, warn)
            joint_source = f"trained for this landscape with the run's config: {out / 'joint'}"
        elif joint_run is None:
            raise ConfigError(
                f"no joint model for '{run_dir}': pass --joint DIR (a run with strategy joint), "
                "give a comparison with joint, or pass --train-joint to train one"
            )
        else:
            joint_source = f"joint run {joint_run.path}"
        check_joint(seq, joint_run)

    t_start = time.perf_counter()
    setup = _setup(seq, (i, j), samples, split, seed)
    names = setup["names"]
    if random:
        theta = seq.end(j, names)
        plane = random_plane(theta, setup["params"], seed)
        points = {"theta": {"task": j, "xy": [0.0, 0.0]}}
        models = [theta]
    else:
        t1, t2 = seq.end(i, names), seq.end(j, names)
        tj = joint_run.end(1, names)
        try:
            plane, coords = plane_through(t1, t2, tj, setup["params"])
        except ValueError as e:
            raise ConfigError(f"no plane through θ₁, θ₂ and θ_joint: {e}") from None
        points = {
            "theta1": {"task": i, "xy": list(coords[0])},
            "theta2": {"task": j, "xy": list(coords[1])},
            "joint": {"source": joint_source, "xy": list(coords[2])},
        }
        models = [t1, t2, tj]
    ev: Evaluator = setup["evaluator"]
    sets = [*ev.names, "mix"]
    exact = ev.of(models)
    for key, row in zip(points, exact.tolist()):
        points[key]["loss"] = dict(zip(sets, row))
    trail = _path(seq, plane, ev, names, i, j, sets) if draw_path and not random else []
    xs, ys = _extent(plane, points, trail, grid, margin, random)
    t0, c0 = time.perf_counter(), time.process_time()
    xy = torch.cartesian_prod(xs, ys)
    values = ev.at(plane, xy).reshape(len(xs), len(ys), -1).permute(1, 0, 2)  # [y, x, set]
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    lines = {} if random else _lines(plane, ev, points, line_points, sets)
    summary = {
        "mode": "random" if random else "plane",
        "run": str(seq.path),
        "tasks": {"D1": ev.names[0], "D2": ev.names[-1], "indices": [i, j]},
        "points": points,
        "grid": {
            "n": grid,
            "x": [float(xs[0]), float(xs[-1])],
            "y": [float(ys[0]), float(ys[-1])],
            "samples": setup["counts"],
            "split": split,
            "seed": seed,
            "seconds": seconds,
            "cpu_seconds": cpu,  # all threads: on a shared machine, the work itself
            "evaluation": ev.how,
            "threads": torch.get_num_threads(),
            "device": str(ev.device),
        },
        "parameters": sum(t.numel() for n, t in models[0].items() if n in setup["params"]),
        "buffers": _buffer_note(setup, random),
        "path": trail,
        "lines": {k: {kk: vv for kk, vv in v.items() if kk != "losses"} for k, v in lines.items()},
        "seconds": time.perf_counter() - t_start,
    }
    if not random:
        summary["distances"] = _distances(models, setup["params"])
        summary["joint_vs_path"] = _joint_vs_path(points, trail, summary["distances"], sets)
    _write(out, summary, xs, ys, values, lines, sets)
    if report:
        _rerender(home)
    return summary


def _setup(seq: Run, tasks: tuple[int, int], samples: int, split: str, seed: int) -> dict[str, Any]:
    """The model as the run builds it, its tensor names, and an evaluator on the subsamples."""
    from retain.objectives import task_known
    from retain.packaging import session
    from retain.runner import prepare_stream

    cfg = seq.config
    stream, _ = prepare_stream(cfg)
    r, model, _ = session(stream, cfg, None, where=f"run '{seq.path}'")
    model = r.acc.unwrap_model(model)
    params = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    buffers = tuple(n for n, b in model.named_buffers() if b.is_floating_point())
    if not params:
        raise ConfigError(f"the model of '{seq.path}' has no trainable parameters")
    g = torch.Generator().manual_seed(seed)
    sets, counts = {}, {}
    for k in dict.fromkeys(tasks):
        task = stream.tasks[k - 1]
        data = getattr(task, split)
        if data is None or len(data) == 0:
            raise ConfigError(
                f"task '{task.name}' has no {split} split; use --split train or set "
                "stream.validation"
            )
        keep = torch.randperm(len(data), generator=g)[: min(samples, len(data))].sort().values
        sets[task.name] = data[keep]
        counts[task.name] = len(keep)
    ev = Evaluator(
        model,
        r.objective,
        sets,
        task_known(stream.setting),
        r.class_mask,
        r.acc.device,
    )
    return {
        "names": [*params, *buffers],
        "params": params,
        "buffers": buffers,
        "evaluator": ev,
        "counts": counts,
    }


def _buffer_note(setup: dict[str, Any], random: bool) -> str:
    if not setup["buffers"]:
        return "none (the model has no floating-point buffers)"
    if random:
        return "kept at the model's (they have no direction)"
    return (
        f"{len(setup['buffers'])} buffers (BatchNorm statistics) carried along affinely: each of "
        "the three points has its own model's, the plane between them the matching mixture"
    )


def _path(
    seq: Run, plane: Plane, ev: Evaluator, names: list[str], i: int, j: int, sets: list[str]
) -> list[dict[str, Any]]:
    """The snapshots from the end of task i to the end of task j: coordinates, distance to the
    plane, and their own (not projected) losses."""
    chosen = [s for s in seq.snapshots() if (s.task == i and s.end) or i < s.task <= j]
    models = [_load(s.path, names) for s in chosen]
    losses = ev.of(models).tolist()
    out = []
    for s, m, loss in zip(chosen, models, losses):
        x, y, d = plane.project(m)
        out.append(
            {
                "task": s.task,
                "task_name": s.task_name,
                "step": s.step,
                "end": s.end,
                "xy": [x, y],
                "distance": d,
                "loss": dict(zip(sets, loss)),
            }
        )
    return out


def _load(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    from retain.landscape.points import pick

    return pick(path, names, f"snapshot '{path}'")


def _extent(
    plane: Plane,
    points: dict[str, Any],
    trail: list[dict[str, Any]],
    n: int,
    margin: float,
    random: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid's coordinates: the three points and the path, with ``margin`` of their extent
    around them; ``[-1, 1]`` on a random plane (in units of the filter-normalised directions)."""
    if random:
        xs = torch.linspace(-1.0, 1.0, n)
        return xs, xs.clone()
    pts = [p["xy"] for p in points.values()] + [p["xy"] for p in trail]
    lo_x, hi_x = min(p[0] for p in pts), max(p[0] for p in pts)
    lo_y, hi_y = min(p[1] for p in pts), max(p[1] for p in pts)
    pad = margin * max(hi_x - lo_x, hi_y - lo_y)
    return (
        torch.linspace(lo_x - pad, hi_x + pad, n, dtype=torch.float64),
        torch.linspace(lo_y - pad, hi_y + pad, n, dtype=torch.float64),
    )


def _lines(
    plane: Plane, ev: Evaluator, points: dict[str, Any], k: int, sets: list[str]
) -> dict[str, dict[str, Any]]:
    """The losses on the straight lines θ₁→θ₂ and θ₁→θ_joint, and each one's barrier per set."""
    t = torch.linspace(0.0, 1.0, k, dtype=torch.float64)
    out = {}
    for name, end in (("theta1-theta2", "theta2"), ("theta1-joint", "joint")):
        x, y = points[end]["xy"]
        losses = ev.at(plane, torch.stack([t * x, t * y], 1))
        cols = {s: losses[:, c].tolist() for c, s in enumerate(sets)}
        out[name] = {
            "t": t.tolist(),
            "losses": cols,
            "barrier": {s: barrier(v) for s, v in cols.items()},
            "max": {s: max(v) for s, v in cols.items()},
        }
    return out


def _distances(models: list[dict[str, torch.Tensor]], params: tuple[str, ...]) -> dict[str, float]:
    def dist(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        d = {n: a[n].double() - b[n].double() for n in params}
        return math.sqrt(dot(d, d, params))

    t1, t2, tj = models
    return {
        "theta1-theta2": dist(t1, t2),
        "theta1-joint": dist(t1, tj),
        "theta2-joint": dist(t2, tj),
    }


def _joint_vs_path(
    points: dict[str, Any], trail: list[dict[str, Any]], dist: dict[str, float], sets: list[str]
) -> dict[str, Any]:
    """Where θ_joint lies relative to the sequential path, in numbers and one plain sentence."""
    a = points["theta2"]["xy"][0]
    b, c = points["joint"]["xy"]
    out: dict[str, Any] = {"along": b / a, "off_line": c}
    mix_joint = points["joint"]["loss"]["mix"]
    text = (
        f"θ_joint projects onto the line θ₁→θ₂ at {b / a:.2f} of the way (0 = θ₁, 1 = θ₂) and "
        f"lies {c:.3g} away from it (|θ₂ - θ₁| = {a:.3g})"
    )
    if trail:
        jx, jy = points["joint"]["xy"]
        near = min(
            trail,
            key=lambda p: (p["xy"][0] - jx) ** 2 + (p["xy"][1] - jy) ** 2 + p["distance"] ** 2,
        )
        gap = math.sqrt(
            (near["xy"][0] - jx) ** 2 + (near["xy"][1] - jy) ** 2 + near["distance"] ** 2
        )
        best = min(trail, key=lambda p: p["loss"]["mix"])
        out["nearest_snapshot"] = {"task": near["task_name"], "step": near["step"], "distance": gap}
        out["path_best_mix"] = {
            "task": best["task_name"],
            "step": best["step"],
            "loss": best["loss"]["mix"],
        }
        text += (
            f"; the nearest snapshot of the path is {gap:.3g} from it ({near['task_name']}, step "
            f"{near['step']}). The path's lowest loss on the mix is {best['loss']['mix']:.3g} "
            f"({best['task_name']}, step {best['step']}); θ_joint's is {mix_joint:.3g}"
        )
    out["mix_loss_joint"] = mix_joint
    out["finding"] = text + "."
    return out


def _write(
    out: Path,
    summary: dict[str, Any],
    xs: torch.Tensor,
    ys: torch.Tensor,
    values: torch.Tensor,
    lines: dict[str, dict[str, Any]],
    sets: list[str],
) -> None:
    from safetensors.torch import save_file

    from retain.report.landscape import draw
    from retain.utils.files import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    stem = summary["mode"]
    tensors = {"x": xs.float(), "y": ys.float()}
    for c, s in enumerate(sets):
        tensors[f"loss/{s}"] = values[:, :, c].float().contiguous()
    for name, line in lines.items():
        tensors[f"line/{name}/t"] = torch.tensor(line["t"])
        for s, v in line["losses"].items():
            tensors[f"line/{name}/{s}"] = torch.tensor(v)
    write_atomic(out / f"{stem}.safetensors", lambda p: save_file(tensors, str(p)))
    summary["files"] = {
        "figure": str(out / f"{stem}.png"),
        "grid": str(out / f"{stem}.safetensors"),
        "summary": str(out / f"{stem}.json"),
    }
    grids = {s: values[:, :, c].numpy() for c, s in enumerate(sets)}
    draw(summary, xs.numpy(), ys.numpy(), grids, lines, out / f"{stem}.png")
    write_atomic(out / f"{stem}.json", json.dumps(summary, indent=1, ensure_ascii=False))


def _rerender(home: Path) -> None:
    """The run's report again, now with the landscape section."""
    from retain.config import load_config
    from retain.report.record import load_record
    from retain.report.render import write_reports

    result = home / "result.json"
    if result.is_file():
        plots = load_config(home / "config.resolved.yaml").output.plots
        write_reports(home, load_record(result), plots=plots)
