"""Scenario ``text`` with classification sources (a ``label`` field): each row of a source is
one example, tokenised with the tokenizer's own special tokens (``[CLS] ... [SEP]`` for an
encoder), truncated and padded to ``block_size``, with its class ``y`` an index into the sorted
label values of all sources.

Tasks, the split by row, the pools in ``Stream.sources`` and the suites are made as for language
models (:mod:`retain.data.scenarios.text`). The setting decides the outputs as in scenario
``split``: one head over every class (``class_il``), the same with the logits of other tasks'
classes masked (``task_il``), or each task's classes mapped onto outputs 0, 1, ...
(``domain_il``, the k-th class of every task sharing output k).
"""

from __future__ import annotations

from typing import Any

import torch

from retain.config import TextSource
from retain.data.scenarios.text import (
    SPLITS,
    _check_limits,
    _check_vocab,
    _groups,
    _listed,
    _stable,
    _task,
    split_documents,
    spread,
)
from retain.data.stream import Stream, Task, TensorData
from retain.data.text import Documents, cache_folder, load_documents, tokenizer_identity
from retain.errors import ConfigError, DataError
from retain.utils.seed import generator


def examples(
    docs: Documents, idx: list[int], y: list[int] | dict[int, int], block_size: int, pad_id: int
) -> TensorData:
    """Rows ``idx`` as classification examples: ``input_ids`` padded to ``block_size`` with
    ``pad_id`` (attention mask 0 there) and the class ``y[i]`` of each row ``i``.

    Examples:
        >>> d = Documents([torch.tensor([101, 7, 102]), torch.tensor([101, 102])], [], None,
        ...     "text", [])
        >>> e = examples(d, [1, 0], [0, 1], 4, 0)
        >>> e.get("input_ids").tolist(), e.get("attention_mask").tolist(), e.get("y").tolist()
        ([[101, 102, 0, 0], [101, 7, 102, 0]], [[1, 1, 0, 0], [1, 1, 1, 0]], [1, 0])
    """
    ids = torch.full((len(idx), block_size), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), block_size), dtype=torch.long)
    for r, i in enumerate(idx):
        seq = docs.ids[i][:block_size]
        ids[r, : len(seq)] = seq
        mask[r, : len(seq)] = 1
    return TensorData(
        input_ids=ids, attention_mask=mask, y=torch.tensor([y[i] for i in idx], dtype=torch.long)
    )


def classification_stream(
    specs: dict[str, TextSource],
    tokenizer: Any,
    *,
    tasks: list[str] | None,
    suites: dict[str, str],
    block_size: int,
    setting: str,
    opts: dict[str, Any],
    split: dict[str, Any],
    limits: tuple[int | None, int | None],
    context: int | None,
    vocab_size: int | None,
) -> tuple[Stream, dict[str, Any]]:
    """Scenario ``text`` with ``objective: classification`` (see the module docstring)."""
    if tasks is None:
        tasks = [n for n in specs if n not in suites.values()] or list(specs)
    for t in tasks:
        if t not in specs:
            raise ConfigError(
                f"stream.tasks names '{t}', which is not a source; sources: {', '.join(specs)}"
            )
    for name, spec in specs.items():
        if not spec.label:
            raise ConfigError(
                f"source '{name}' has no label field, which classification needs: add label: "
                "COLUMN (the field holding each row's class)"
            )
    _check_limits(block_size, tokenizer, context)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad_id = int(pad or 0)
    load = dict(opts, tok_id=tokenizer_identity(tokenizer) if opts["cache"] else None)
    docs = {}
    for name, spec in specs.items():
        docs[name] = load_documents(spec, tokenizer, max_length=block_size, **load)
        _check_vocab(name, docs[name], vocab_size)
    names = sorted({c for d in docs.values() for c in d.targets or []})
    index = {c: i for i, c in enumerate(names)}

    facts: dict[str, Any] = {}
    per_source: dict[str, list[Task]] = {}
    pools: dict[str, TensorData] = {}
    held_out: dict[str, TensorData] = {}
    present: dict[str, list[list[int]]] = {}  # the classes of each task of each source
    for name, spec in specs.items():
        d = docs[name]
        counts = {k: dict.fromkeys(SPLITS, 0) for k in ("rows", "tokens")}
        made, train_parts, test_parts, classes = [], [], [], {}
        for gi, (gname, members) in enumerate(_groups(name, spec, d)):
            where = f"source '{name}'" + (f" ({spec.by_column}={gname})" if spec.by_column else "")
            targets = d.targets or []
            own = sorted({index[targets[i]] for i in members})
            pos = {c: p for p, c in enumerate(own)} if setting == "domain_il" else None
            y = {i: index[targets[i]] if pos is None else pos[index[targets[i]]] for i in members}
            g = generator(split["seed"], _stable(name), gi)
            parts = split_documents(
                len(members), split["test_fraction"], split["validation"], g, where
            )
            data = {}
            for k, idx in zip(SPLITS, parts):
                idx = [members[i] for i in idx]
                data[k] = examples(d, idx, y, block_size, pad_id)
                counts["rows"][k] += len(idx)
                counts["tokens"][k] += int(data[k].get("attention_mask").sum())
            train_parts.append(data["train"])
            test_parts.append(data["test"])
            tname = gname if spec.by_column else name
            kept = tuple(range(len(own))) if pos is not None else tuple(own)
            made.append(_task(tname, data, limits, kept))
            classes[tname] = [names[c] for c in own]
            present.setdefault(name, []).append(own)
        if name in tasks:
            per_source[name] = made
        pools[name] = TensorData.concat(train_parts)
        held_out[name] = TensorData.concat(test_parts)
        facts[name] = {
            "path": spec.path,
            "kind": "classification",
            "label": spec.label,
            "files": d.files,
            **counts,
            "classes": classes,
            "tasks": [t.name for t in per_source.get(name, [])],
            "tokenized": "read from the cache" if d.cached else "tokenised now",
        }
    task_list = [t for n in tasks for t in per_source[n]]

    suite_data, suite_facts = {}, {}
    first = specs[tasks[0]]
    for suite, value in suites.items():
        if value in specs:
            suite_data[suite] = spread(held_out[value], limits[1])
            suite_facts[suite] = {"source": value, "split": "test", "rows": len(suite_data[suite])}
            continue
        if setting == "domain_il":
            raise ConfigError(
                f"stream.suites.{suite} is a file, whose labels have no task to be mapped within "
                "in the domain_il setting; name a source instead, or use class_il"
            )
        # A suite file is read like the first task's source: the same text and label fields.
        spec = TextSource(path=value, field=first.field, label=first.label)
        sd = load_documents(spec, tokenizer, max_length=block_size, **load)
        _check_vocab(f"suite {suite}", sd, vocab_size)
        unknown = sorted({t for t in sd.targets or [] if t not in index})
        if unknown:
            raise DataError(
                f"stream.suites.{suite} ({value}) has label {unknown[0]!r}, which no source has; "
                f"classes: {', '.join(names)}"
            )
        y = [index[t] for t in sd.targets or []]
        suite_data[suite] = spread(
            examples(sd, list(range(len(sd))), y, block_size, pad_id), limits[1]
        )
        suite_facts[suite] = {
            "path": value,
            "files": sd.files,
            "documents": len(sd),
            "rows": len(sd),
            "tokens": int(suite_data[suite].get("attention_mask").sum()),
        }

    if setting == "domain_il":
        ordered = [c for n in tasks for c in present[n]]
        n_out = max(len(c) for c in ordered)
        class_names = tuple(
            "/".join(names[c[p]] for c in ordered if p < len(c)) for p in range(n_out)
        )
    else:
        n_out, class_names = len(names), tuple(names)
    stream = Stream(
        tuple(task_list),
        setting=setting,
        objective="classification",
        n_outputs=n_out,
        class_names=class_names,
        name="text",
        suites=suite_data,
        sources=pools,
    )
    info = {
        "objective": "classification",
        "sources": [
            *(f for fs in facts.values() for f in _listed(fs["path"], fs["files"])),
            *(f for fs in suite_facts.values() for f in _listed(fs.get("path"), fs.get("files"))),
        ],
        "text": {
            "objective": "classification",
            "block_size": block_size,
            "tokenizer": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
            "cache": str(cache_folder(opts["cache_dir"])) if opts["cache"] else None,
            "classes": names,
            "setting": setting,
            "sources": facts,
            "suites": suite_facts,
        },
        "standardized": False,
    }
    return stream, info
