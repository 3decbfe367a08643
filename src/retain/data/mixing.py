"""Data mixing: a task's training batches drawn from several named pools at set ratios.

A pool is a task of the stream (its training data) or one of the stream's sources
(``Stream.sources``, training data that is not a task, e.g. an English corpus while the tasks are
Spanish). A task's mix is written in one of three forms (``Stream(mix={task: form})`` or
``stream.mix`` in a config file)::

    {spanish: 0.7, english: 0.3}                      # fixed ratios (they sum to 1)
    [{until: 0.33, ratios: {spanish: 0.8, english: 0.2}},   # a ratio schedule: each phase runs
     {until: 0.66, ratios: {spanish: 0.5, english: 0.5}},   # until this fraction of the task's
     {until: 1.0, ratios: {spanish: 0.2, english: 0.8}}]    # steps (the last ends at 1)
    {cycle: [spanish, english], every: 10}            # cyclical interleaving: each batch from one
                                                      # pool, the next pool every 10 steps

Composition is deterministic, not sampled: each batch has ``train.batch_size`` samples split
among the pools so that, within a phase, every pool's count of samples drawn so far stays within
one sample of its ratio times the samples drawn (largest-remainder rounding on the running
totals; 0.7/0.3 at batch 8 gives batches of 6+2 and 5+3 that average 5.6+2.4). Which samples a
pool gives is random: each pool is walked through in its own shuffled order, reshuffled when used
up (so a small pool repeats, a large one is partly seen). The budget does not change: a task
with a mix trains for as many steps as without one (``train.steps``, or ``train.epochs`` over the
task's own training data); the other pools replace part of the task's data in each batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from retain.errors import ConfigError, DataError, did_you_mean

if TYPE_CHECKING:
    from retain.data.stream import TensorData

TOLERANCE = 1e-6


@dataclass(frozen=True)
class Phase:
    """Ratios that hold until ``until`` (a fraction of the task's steps, in (0, 1])."""

    until: float
    ratios: dict[str, float]


@dataclass(frozen=True)
class Mix:
    """How one task's batches are drawn from pools: ``phases`` (fixed ratios are one phase),
    or ``cycle`` with ``every`` (the pools take turns, ``every`` steps each).

    Examples:
        >>> Mix.parse({"es": 0.7, "en": 0.3}).pools
        ['es', 'en']
        >>> Mix.parse({"cycle": ["es", "en"], "every": 2}).ratios_at(2, 10)
        {'en': 1.0}
    """

    phases: tuple[Phase, ...] = ()
    cycle: tuple[str, ...] = ()
    every: int | None = None

    @classmethod
    def parse(cls, value: Any, where: str = "mix") -> Mix:
        """One of the three forms of the module docstring (or a ``Mix``); a ConfigError names
        the problem in one line."""
        if isinstance(value, Mix):
            return value
        if isinstance(value, Mapping) and "cycle" in value:
            return _parse_cycle(value, where)
        if isinstance(value, Mapping):
            return cls(phases=(Phase(1.0, _ratios(value, where)),))
        if isinstance(value, (list, tuple)):
            return cls(phases=_parse_schedule(value, where))
        raise ConfigError(
            f"{where} must be ratios ({{a: 0.7, b: 0.3}}), a schedule ([{{until: 0.5, ratios: "
            f"{{...}}}}, ...]) or a cycle ({{cycle: [a, b], every: 10}}); got {value!r}"
        )

    @property
    def pools(self) -> list[str]:
        """Every pool named, in order of first mention."""
        names = list(self.cycle) + [p for ph in self.phases for p in ph.ratios]
        return list(dict.fromkeys(names))

    def to_config(self) -> Any:
        """The config form (what ``parse`` reads)."""
        if self.cycle:
            return {"cycle": list(self.cycle), "every": self.every}
        if len(self.phases) == 1:
            return dict(self.phases[0].ratios)
        return [{"until": p.until, "ratios": dict(p.ratios)} for p in self.phases]

    def segments(self, total: int) -> list[tuple[int, int, dict[str, float]]]:
        """``(first step, end step, target ratios)`` of each recorded phase of a task of
        ``total`` steps; a cycle is one phase whose target is each pool's share of the turns."""
        if self.cycle:
            share = {p: self.cycle.count(p) / len(self.cycle) for p in dict.fromkeys(self.cycle)}
            return [(0, total, share)]
        out, start = [], 0
        for i, ph in enumerate(self.phases):
            end = total if i == len(self.phases) - 1 else min(total, round(ph.until * total))
            out.append((start, max(start, end), dict(ph.ratios)))
            start = max(start, end)
        return out

    def segment_at(self, step: int, total: int) -> tuple[int, int]:
        """``(recorded phase, composition segment)`` of ``step``: the running totals restart
        with every segment (every phase; every turn of a cycle)."""
        if self.cycle:
            return 0, step // self.every  # type: ignore[operator]
        for i, (_, end, _) in enumerate(self.segments(total)):
            if step < end:
                return i, i
        return len(self.phases) - 1, len(self.phases) - 1

    def ratios_at(self, step: int, total: int) -> dict[str, float]:
        """The target ratios of ``step`` in a task of ``total`` steps."""
        if self.cycle:
            return {self.cycle[(step // self.every) % len(self.cycle)]: 1.0}  # type: ignore[operator]
        return dict(self.phases[self.segment_at(step, total)[0]].ratios)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    return float(value)


def _ratios(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"{where} must map pool names to ratios, e.g. {{a: 0.7, b: 0.3}}")
    out = {str(k): _number(v, f"{where}.{k}") for k, v in value.items()}
    negative = [k for k, v in out.items() if v < 0]
    if negative:
        raise ConfigError(f"{where}: ratio of '{negative[0]}' is negative ({out[negative[0]]})")
    total = sum(out.values())
    if abs(total - 1.0) > TOLERANCE:
        raise ConfigError(
            f"{where}: ratios sum to {total:g}, not 1 "
            f"({', '.join(f'{k}: {v:g}' for k, v in out.items())}); make them sum to 1"
        )
    return out


def _parse_schedule(value: list[Any] | tuple[Any, ...], where: str) -> tuple[Phase, ...]:
    if not value:
        raise ConfigError(f"{where}: the schedule has no phases")
    phases, last = [], 0.0
    for i, item in enumerate(value):
        at = f"{where}.{i}"
        if isinstance(item, Phase):
            item = {"until": item.until, "ratios": item.ratios}
        if not isinstance(item, Mapping) or set(item) != {"until", "ratios"}:
            raise ConfigError(f"{at} must be {{until: FRACTION, ratios: {{...}}}}, got {item!r}")
        until = _number(item["until"], f"{at}.until")
        if not last < until <= 1.0 + TOLERANCE:
            raise ConfigError(
                f"{at}.until is {until:g}: phases must end at increasing fractions of the task's "
                f"steps in (0, 1] (the previous phase ends at {last:g})"
            )
        phases.append(Phase(min(until, 1.0), _ratios(item["ratios"], f"{at}.ratios")))
        last = until
    if abs(last - 1.0) > TOLERANCE:
        raise ConfigError(
            f"{where}: the last phase ends at until={last:g}; it must end at 1 (the whole task)"
        )
    return tuple(phases)


def _parse_cycle(value: Mapping[str, Any], where: str) -> Mix:
    extra = set(value) - {"cycle", "every"}
    if extra:
        raise ConfigError(f"{where}: a cycle takes 'cycle' and 'every' only, not {sorted(extra)}")
    pools = value["cycle"]
    if (
        not isinstance(pools, (list, tuple))
        or not pools
        or not all(isinstance(p, str) for p in pools)
    ):
        raise ConfigError(f"{where}.cycle must be a list of pool names, e.g. [spanish, english]")
    every = value.get("every")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"{where}.every must be a whole number of steps >= 1, got {every!r}")
    return Mix(cycle=tuple(pools), every=every)


def parse_mixes(mix: Mapping[str, Any] | None) -> dict[str, Mix]:
    """``{task: Mix}`` from ``{task: form}`` (see the module docstring)."""
    if mix is None:
        return {}
    if not isinstance(mix, Mapping):
        raise ConfigError(f"stream.mix must map task names to mixes, got {mix!r}")
    return {str(task): Mix.parse(v, f"stream.mix.{task}") for task, v in mix.items()}


def check_mixes(
    mixes: Mapping[str, Mix], tasks: Mapping[str, TensorData], sources: Mapping[str, TensorData]
) -> None:
    """Every mixed task and every pool exists, and every pool's samples fit the task's batches
    (the same fields, shapes and dtypes); one-line errors before anything trains."""
    for task, mix in mixes.items():
        if task not in tasks:
            raise ConfigError(
                f"stream.mix names task '{task}', which the stream does not have "
                f"(tasks: {', '.join(tasks)})"
            )
        for pool in mix.pools:
            if pool not in tasks and pool not in sources:
                known = [*tasks, *sources]
                raise ConfigError(
                    f"stream.mix.{task}: unknown pool '{pool}'{did_you_mean(pool, known)}; pools "
                    f"are the stream's tasks and sources: {', '.join(known)}"
                )
            data = tasks[pool] if pool in tasks else sources[pool]
            check_fits(tasks[task], data, f"stream.mix.{task}: pool '{pool}'", task)


def check_fits(own: TensorData, other: TensorData, where: str, task: str) -> None:
    """``other``'s samples can join a batch of task ``task`` (data ``own``): the same fields
    (``task`` aside), shapes and dtypes; a DataError naming ``where`` if not."""
    if len(other) == 0:
        raise DataError(f"{where} is empty; give it samples or leave it out")
    need = {k: v for k, v in own.tensors.items() if k != "task"}
    have = {k: v for k, v in other.tensors.items() if k != "task"}
    if set(need) != set(have):
        raise DataError(
            f"{where} has fields {sorted(have)} but task '{task}' has {sorted(need)}; "
            "a pool must hold the same kind of samples as the task"
        )
    for k, v in need.items():
        w = have[k]
        if v.shape[1:] != w.shape[1:] or v.dtype != w.dtype:
            raise DataError(
                f"{where}: '{k}' is {tuple(w.shape[1:])} {w.dtype} but task '{task}' has "
                f"{tuple(v.shape[1:])} {v.dtype} (e.g. another block size); they must match"
            )


def apportion(ratios: list[float], drawn: list[int], n: int) -> list[int]:
    """Split ``n`` new samples among pools so each pool's running total stays within one sample
    of its ratio times the new total (largest remainder; ties go to the earlier pool).

    Examples:
        >>> apportion([0.7, 0.3], [0, 0], 8), apportion([0.7, 0.3], [6, 2], 8)
        ([6, 2], [5, 3])
    """
    total = sum(drawn) + n
    want = [r * total - d for r, d in zip(ratios, drawn)]
    count = [max(0, math.floor(w)) if r > 0 else 0 for w, r in zip(want, ratios)]
    by_shortfall = sorted(range(len(want)), key=lambda i: (count[i] - want[i], i))
    i = 0
    while sum(count) < n:  # the largest shortfalls first
        j = by_shortfall[i % len(by_shortfall)]
        if ratios[j] > 0:
            count[j] += 1
        i += 1
    for j in reversed(by_shortfall):  # clamping at 0 can overshoot: the largest excess gives back
        while sum(count) > n and count[j] > 0:
            count[j] -= 1
    return count


class _Pool:
    """One pool's samples, walked through in shuffled order (or in its given order)."""

    def __init__(self, data: TensorData, shuffle: bool, generator: torch.Generator | None):
        self.data, self.shuffle, self.generator = data, shuffle, generator
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def take(self, n: int) -> torch.Tensor:
        parts, left = [], n
        while left > 0:
            if self.pos >= len(self.order):
                size = len(self.data)
                perm = torch.randperm(size, generator=self.generator) if self.shuffle else None
                self.order = perm if perm is not None else torch.arange(size)
                self.pos = 0
            part = self.order[self.pos : self.pos + left]
            self.pos += len(part)
            left -= len(part)
            parts.append(part)
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


class MixedLoader:
    """Batches of ``batch_size`` samples from ``pools`` at the ratios of ``mix``.

    Args:
        pools: every pool the mix names (each with the same fields, ``task`` included).
        mix: the ratios, schedule or cycle.
        batch_size: samples per batch on this process.
        batches_per_epoch: batches one pass of ``__iter__`` yields (the loop's epoch).
        total_steps: the task's optimizer steps (where the schedule's phases end).
        grad_accum: batches per optimizer step.
        ordered: pools walked in their given order rather than shuffled (a difficulty order).
        generator, device, rank, world_size: as for :class:`~retain.data.loader.TensorLoader`;
            every process composes the same global batch and takes its own stride of it.
    """

    def __init__(
        self,
        pools: dict[str, TensorData],
        mix: Mix,
        batch_size: int,
        batches_per_epoch: int,
        total_steps: int,
        grad_accum: int = 1,
        ordered: tuple[str, ...] = (),
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.mix, self.batch_size, self.batches = mix, batch_size, max(1, batches_per_epoch)
        self.total, self.grad_accum = max(1, total_steps), grad_accum
        self.device = torch.device(device) if device is not None else None
        self.rank, self.world_size = rank, world_size
        self.pools = {
            name: _Pool(pools[name], name not in ordered, generator) for name in mix.pools
        }
        self.micro = 0  # batches drawn so far, over every epoch
        self.segment: int | None = None
        self.running = {name: 0 for name in self.pools}  # drawn in the current segment
        self.drawn = [{name: 0 for name in self.pools} for _ in mix.segments(self.total)]
        self._position = 0  # batches given in the current pass
        self._skip = 0  # batches the next pass starts after (a resumed pass)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        skip, self._skip = self._skip, 0
        self._position = skip
        for _ in range(skip, self.batches):
            self._position += 1
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Everything the next batch depends on besides the generator (its pools' orders and
        positions, the running counts) and the batches given in the current pass."""
        return {
            "position": self._position,
            "micro": self.micro,
            "segment": self.segment,
            "running": dict(self.running),
            "drawn": [dict(d) for d in self.drawn],
            "pools": {n: {"order": p.order, "pos": p.pos} for n, p in self.pools.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The next pass continues after the saved pass's given batches (see ``state_dict``)."""
        self.micro, self.segment = int(state["micro"]), state["segment"]
        self.running = {n: int(v) for n, v in state["running"].items()}
        self.drawn = [{n: int(v) for n, v in d.items()} for d in state["drawn"]]
        for name, pool in state["pools"].items():
            self.pools[name].order, self.pools[name].pos = pool["order"], int(pool["pos"])
        self._skip = int(state["position"])

    def next_batch(self) -> dict[str, torch.Tensor]:
        step = self.micro // self.grad_accum
        self.micro += 1
        phase, segment = self.mix.segment_at(step, self.total)
        if segment != self.segment:
            self.segment, self.running = segment, dict.fromkeys(self.running, 0)
        ratios = self.mix.ratios_at(step, self.total)
        names = [n for n in self.pools if ratios.get(n, 0.0) > 0]
        counts = apportion(
            [ratios[n] for n in names],
            [self.running[n] for n in names],
            self.batch_size * self.world_size,
        )
        parts = []
        for name, c in zip(names, counts):
            if c == 0:
                continue
            self.running[name] += c
            self.drawn[phase][name] += c
            pool = self.pools[name]
            parts.append(pool.data.batch(pool.take(c).to(_device_of(pool.data))))
        batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        if self.world_size > 1:
            batch = {k: v[self.rank :: self.world_size] for k, v in batch.items()}
        if self.device is not None:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return batch

    def realised(self) -> dict[str, Any]:
        """What was drawn: per phase its steps, target and realised ratios and sample counts
        (over every process), and the totals; the run record keeps it per task."""
        phases = []
        for (start, end, target), counts in zip(self.mix.segments(self.total), self.drawn):
            drawn = {name: counts[name] for name in target}  # a pool not in a phase draws 0
            phases.append(
                {
                    "steps": [start, end],
                    "target": target,
                    "drawn": dict(drawn),
                    "ratio": _shares(drawn),
                }
            )
        totals = {name: sum(d[name] for d in self.drawn) for name in self.pools}
        out: dict[str, Any] = {"mix": self.mix.to_config(), "drawn": totals}
        out["ratio"] = _shares(totals)
        out["phases"] = phases
        return out


def _shares(counts: dict[str, int]) -> dict[str, float]:
    n = sum(counts.values())
    return {k: round(v / n, 4) if n else 0.0 for k, v in counts.items()}


def _device_of(data: TensorData) -> torch.device:
    return next(iter(data.tensors.values())).device
