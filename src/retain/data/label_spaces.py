"""One label space for several files (scenario ``files``): how their classes become outputs.

``stream.labels`` says how, and the same data gives the same outputs whether it is named
(``mnist``) or given as paths:

- ``ids`` (default): a class id means the same class in every file: label 3 of file 1 and label 3
  of file 2 are output 3 (one shared head, as in domain-incremental learning). Files whose
  labels are text have no ids of their own: their classes are matched by name. When two files
  name the same id differently (MNIST's ``0`` and Fashion-MNIST's ``T-shirt/top``) they still
  share it, and a warning says so.
- ``names``: classes with the same name share one output and every other class gets its own, in
  the order the files bring them (MNIST then Fashion-MNIST: 20 outputs, class-incremental).
  Integer labels without names are named by their number.

Text labels in one file and integer labels in another are refused: whether ``yes`` is ``1`` is
not retain's guess to make.

The setting follows from the tasks' classes (:func:`files_setting`): ``class_il`` when a later
file brings a class no earlier file has, else ``domain_il``; ``task_il`` (each file's outputs
masked to its own classes) when the files' classes differ.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from retain.data.sources import Source
from retain.errors import ConfigError, DataError

LABEL_MODES = ("ids", "names")


def _text(s: Source) -> bool:
    """Labels identified by name only: text a reader numbered, or names given with a Source.
    Readers of integer labels that also have display names (MNIST's, an HF ``ClassLabel``'s)
    say so with ``facts["label_ids"]``."""
    return bool(s.class_names) and not s.facts.get("label_ids")


def _few(names: list[str] | None, n: int | None) -> str:
    shown = list(names or [str(i) for i in range(n or 0)])[:4]
    return ", ".join(shown) + (", ..." if len(names or range(n or 0)) > 4 else "")


def _remap(s: Source, lut: torch.Tensor, names: list[str]) -> Source:
    return replace(
        s,
        y_train=lut[s.y_train],
        y_test=lut[s.y_test] if s.y_test is not None else None,
        class_names=names,
    )


def merge_labels(
    srcs: list[Source], names: list[str], mode: str = "ids"
) -> tuple[list[Source], list[str] | None, list[str]]:
    """The sources with their labels in one label space (see the module docstring), the names of
    its outputs (``None`` when no file names them), and warnings."""
    if mode not in LABEL_MODES:
        raise ConfigError(f"stream.labels must be one of {', '.join(LABEL_MODES)}; got {mode!r}")
    if srcs[0].objective != "classification":
        return srcs, None, []
    text = [_text(s) for s in srcs]
    if any(text) and not all(text):
        a, b = text.index(True), text.index(False)
        raise DataError(
            f"'{names[a]}' has text labels ({_few(srcs[a].class_names, None)}) but '{names[b]}' "
            f"has integer labels ({_few(None, srcs[b].n_classes)}); give the labels the same way "
            "in every file"
        )
    if all(text):
        union = sorted({n for s in srcs for n in s.class_names or []})
        if mode == "names":
            union = list(dict.fromkeys(n for s in srcs for n in s.class_names or []))
        index = {n: i for i, n in enumerate(union)}
        out = [_remap(s, torch.tensor([index[n] for n in s.class_names]), union) for s in srcs]
        return out, union, []
    if mode == "names":
        own = [list(s.class_names or [str(i) for i in range(s.n_classes or 0)]) for s in srcs]
        union = list(dict.fromkeys(n for o in own for n in o))
        index = {n: i for i, n in enumerate(union)}
        out = [
            _remap(s, torch.tensor([index[n] for n in o], dtype=torch.long), union)
            for s, o in zip(srcs, own)
        ]
        return out, union, []
    return srcs, *_id_names(srcs, names)


def _id_names(srcs: list[Source], names: list[str]) -> tuple[list[str] | None, list[str]]:
    """Output names when the files share ids: each id's name(s), and a warning when files name
    the same id differently."""
    if not any(s.class_names for s in srcs):
        return None, []
    k = max(s.n_classes or 0 for s in srcs)
    per_id: list[dict[str, str]] = [{} for _ in range(k)]
    for s, file in zip(srcs, names):
        for i, n in enumerate(s.class_names or []):
            if i < k:
                per_id[i].setdefault(n, file)
    out = [" | ".join(d) if d else str(i) for i, d in enumerate(per_id)]
    warnings = []
    clash = next((i for i, d in enumerate(per_id) if len(d) > 1), None)
    if clash is not None:
        (n1, f1), (n2, f2) = list(per_id[clash].items())[:2]
        warnings.append(
            f"files '{f1}' and '{f2}' name the same label ids differently (label {clash} is "
            f"'{n1}' in '{f1}' and '{n2}' in '{f2}'); they share one output per id "
            "(stream.labels: ids): set stream.labels: names to give each class its own output"
        )
    return out, warnings


def files_setting(setting: str, mode: str, classes: list[set[int]], names: list[str]) -> str:
    """The setting of a ``files`` stream whose tasks hold ``classes`` (see the module docstring):
    ``auto`` resolved, an explicit one checked against the data."""
    new = next((t for t in range(1, len(classes)) if classes[t] - set().union(*classes[:t])), None)
    if setting == "auto":
        return "class_il" if new is not None else "domain_il"
    if setting == "task_il" and all(c == classes[0] for c in classes):
        raise ConfigError(
            "stream.setting task_il masks each task's outputs to its own classes, and every "
            "file has the same classes, so nothing would be masked: use setting domain_il"
        )
    if setting == "domain_il" and mode == "names" and new is not None:
        raise ConfigError(
            f"stream.setting domain_il shares one label space, but with stream.labels: names "
            f"'{names[new]}' brings classes no earlier file has: set stream.setting class_il or "
            "task_il, or stream.labels: ids to share the label ids"
        )
    return setting
