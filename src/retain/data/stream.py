"""Tasks and streams: pure data, no model or strategy knowledge.

Data lives in memory as a :class:`TensorData`, a set of equally long tensors (``x``/``y`` for
classifiers and regressors, ``input_ids``/``attention_mask``/``labels`` for language models, and
``task``, the index of the task each sample came from). Batches are made by indexing those tensors
with a permutation, not by a per-sample ``__getitem__`` and a collate function: on small models the
Python per-sample path costs more than the model itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from retain.data.mixing import Mix, check_mixes, parse_mixes
from retain.errors import DataError

SETTINGS = ("class_il", "task_il", "domain_il")
OBJECTIVES = ("classification", "regression", "causal_lm")


class TensorData:
    """Equally long named tensors; ``data[idx]`` returns the rows ``idx`` as a new TensorData."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        if not tensors:
            raise ValueError("TensorData needs at least one tensor")
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"tensors have different lengths: {lengths}")
        self.tensors: dict[str, torch.Tensor] = dict(tensors)

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, idx: Any) -> TensorData:
        if isinstance(idx, int):
            idx = torch.tensor([idx])
        return TensorData(**{k: v[idx] for k, v in self.tensors.items()})

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{k}={tuple(v.shape)}:{str(v.dtype).replace('torch.', '')}"
            for k, v in self.tensors.items()
        )
        return f"TensorData(n={len(self)}, {shapes})"

    def get(self, key: str) -> torch.Tensor | None:
        return self.tensors.get(key)

    @property
    def x(self) -> torch.Tensor:
        return self.tensors["x"]

    @property
    def y(self) -> torch.Tensor:
        return self.tensors["y"]

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows ``idx`` as a dict of tensors (one ``index_select`` per tensor)."""
        return {k: v.index_select(0, idx) for k, v in self.tensors.items()}

    def with_tensor(self, key: str, value: torch.Tensor) -> TensorData:
        return TensorData(**{**self.tensors, key: value})

    def to(self, device: torch.device | str) -> TensorData:
        return TensorData(**{k: v.to(device) for k, v in self.tensors.items()})

    @staticmethod
    def concat(parts: Sequence[TensorData]) -> TensorData:
        if not parts:
            raise ValueError("nothing to concatenate")
        keys = list(parts[0].tensors)
        for p in parts[1:]:
            if list(p.tensors) != keys:
                raise DataError(f"cannot join data with fields {keys} and {list(p.tensors)}")
        return TensorData(**{k: torch.cat([p.tensors[k] for p in parts]) for k in keys})

    def split(self, fraction: float, generator: torch.Generator) -> tuple[TensorData, TensorData]:
        """Random (1 - fraction, fraction) split, e.g. to hold out a validation set."""
        n = len(self)
        perm = torch.randperm(n, generator=generator)
        k = int(round(n * fraction))
        return self[perm[k:].sort().values], self[perm[:k].sort().values]


@dataclass(frozen=True)
class Task:
    """One task: a name, train and test data, optional validation data, and what it is about.

    Attributes:
        classes: model output indices this task's labels use (for task-incremental masking and
            per-task reports); ``None`` for regression and language modelling.
        domain: free text, e.g. ``"permutation 3"`` or ``"sex=2"``.
    """

    name: str
    train: TensorData
    test: TensorData
    val: TensorData | None = None
    classes: tuple[int, ...] | None = None
    domain: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stream:
    """An ordered sequence of tasks with what every task shares.

    Attributes:
        setting: ``class_il``, ``task_il`` (the logits of other tasks' classes are masked at train
            and test time) or ``domain_il``.
        objective: ``classification``, ``regression`` or ``causal_lm``.
        n_outputs: width of the model's output (classes; 1 for regression).
        class_names: display names of the output classes.
        suites: named held-out evaluation sets that are not tasks (e.g. general English text
            while the tasks are Spanish): scored with every row of R, never trained on.
        sources: named training pools that are not tasks (e.g. an English corpus): what data
            mixing (``mix``) and a fixed replay source draw from.
        mix: per task, the pools its batches are drawn from and at which ratios (fixed, a
            schedule over training, or a cycle), e.g. ``{"spanish": {"spanish": 0.7,
            "english": 0.3}}``; pools are task names and source names (see
            :mod:`retain.data.mixing`).
        vocab: tokens added to the tokenizer that made the stream's token ids (vocabulary
            extension, :mod:`retain.vocab`), each with its id: the model needs a row for each.
    """

    tasks: tuple[Task, ...]
    setting: str = "class_il"
    objective: str = "classification"
    n_outputs: int | None = None
    class_names: tuple[str, ...] | None = None
    name: str = "stream"
    suites: dict[str, TensorData] = field(default_factory=dict)
    sources: dict[str, TensorData] = field(default_factory=dict)
    mix: dict[str, Mix] = field(default_factory=dict)
    vocab: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {SETTINGS}, got {self.setting!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not self.tasks:
            raise DataError("the stream has no tasks")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise DataError(f"task names must be unique, got {names}")
        # Every sample carries the index of its task: replay buffers keep it, task-IL masking
        # and per-task scoring read it.
        tasks = []
        for i, t in enumerate(self.tasks):

            def tag(d: TensorData | None, i: int = i) -> TensorData | None:
                if d is None:
                    return None
                return d.with_tensor("task", torch.full((len(d),), i, dtype=torch.long))

            tasks.append(
                dataclasses.replace(t, train=tag(t.train), test=tag(t.test), val=tag(t.val))
            )
        object.__setattr__(self, "tasks", tuple(tasks))
        object.__setattr__(self, "mix", parse_mixes(self.mix))
        validate_stream(self)
        check_mixes(self.mix, {t.name: t.train for t in self.tasks}, self.sources)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.tasks[0].train.x.shape[1:]) if "x" in self.tasks[0].train else ()

    def class_mask(self) -> torch.Tensor | None:
        """Boolean [n_tasks, n_outputs]: which outputs belong to each task (task-IL only)."""
        if self.setting != "task_il" or self.n_outputs is None:
            return None
        mask = torch.zeros(len(self.tasks), self.n_outputs, dtype=torch.bool)
        for i, t in enumerate(self.tasks):
            if t.classes is None:
                raise DataError(f"task-incremental setting needs the classes of task '{t.name}'")
            mask[i, list(t.classes)] = True
        return mask


def _check_finite(name: str, data: TensorData) -> None:
    for key, v in data.tensors.items():
        # In chunks: a mask of the whole tensor would be a quarter of its size again.
        finite = v.is_floating_point() and all(
            torch.isfinite(v[s : s + 65536]).all() for s in range(0, len(v), 65536)
        )
        if v.is_floating_point() and not finite:
            bad = int((~torch.isfinite(v)).reshape(len(v), -1).any(1).sum())
            raise DataError(
                f"{name}: '{key}' holds NaN or inf in {bad} sample(s); clean or impute them first"
            )


def validate_stream(stream: Stream) -> None:
    """Reject data that would train silently wrong: raises :class:`DataError` with the fix."""
    for name, data in stream.suites.items():
        if name in stream.task_names:
            raise DataError(f"evaluation suite '{name}' has the name of a task; rename the suite")
        if len(data) == 0:
            raise DataError(f"evaluation suite '{name}' is empty")
        _check_finite(f"evaluation suite '{name}'", data)
    shape = None
    for t in stream.tasks:
        for split, data in (("train", t.train), ("test", t.test), ("validation", t.val)):
            if data is None:
                continue
            where = f"task '{t.name}' ({split})"
            if len(data) == 0:
                if split == "validation":
                    continue
                raise DataError(
                    f"{where} is empty; check the scenario's class groups or column values"
                )
            _check_finite(where, data)
            if "x" in data:
                s = tuple(data.x.shape[1:])
                if shape is None:
                    shape = s
                elif s != shape:
                    raise DataError(
                        f"{where} has inputs of shape {s} but earlier tasks have {shape}; "
                        "every task must share one input shape"
                    )
            if stream.objective == "classification" and "y" in data:
                y = data.y
                if y.is_floating_point():
                    raise DataError(
                        f"{where}: classification labels must be integers, got {y.dtype}"
                    )
                if stream.n_outputs is not None and len(y):
                    lo, hi = int(y.min()), int(y.max())
                    if lo < 0 or hi >= stream.n_outputs:
                        raise DataError(
                            f"{where}: labels range over [{lo}, {hi}] but the model has "
                            f"{stream.n_outputs} outputs; labels must be in [0, {stream.n_outputs - 1}]"
                        )
