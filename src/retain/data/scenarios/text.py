"""Scenario ``text``: a stream of language-modelling or text-classification tasks from named
text sources.

Each source is read and tokenised (:mod:`retain.data.text`), split into train, validation and test
**by document** (a document is never cut between splits), and each split is packed into blocks of
``block_size`` tokens with the EOS token between documents. A source is one task (a domain, a
language), or one task per value of a column (``by_column``). Every source's training blocks are
also a named pool in ``Stream.sources`` (data mixing and fixed replay draw from them), and a suite
that names a source is scored on that source's test blocks; a suite that names a file is read
whole.

Classification (sources with a ``label`` field): each row is one example, its tokens truncated
and padded to ``block_size``, its class ``y`` an index into the sorted labels of all sources.
The setting decides the outputs as in scenario ``split``: one head over every class
(``class_il``), the same with other tasks' classes masked (``task_il``), or each task's classes
mapped onto outputs 0, 1, ... (``domain_il``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from retain.config import TextSource
from retain.data.stream import Stream, Task, TensorData
from retain.data.text import Documents, cache_folder, load_documents, tokenizer_identity
from retain.errors import ConfigError, DataError
from retain.utils.seed import generator

# A tokenizer with no limit reports a huge sentinel as its model_max_length.
_NO_LIMIT = 10**9
SPLITS = ("train", "validation", "test")


def pack(
    ids: list[torch.Tensor], labels: list[torch.Tensor], block_size: int, pad_id: int, packing: bool
) -> TensorData:
    """Blocks of ``block_size`` tokens: the documents joined (``packing``) or each on its own,
    the last block padded (attention mask 0, label -100).

    Examples:
        >>> d = pack([torch.tensor([1, 2, 3]), torch.tensor([4])], [torch.tensor([1, 2, 3]),
        ...     torch.tensor([4])], 3, 0, True)
        >>> d.get("input_ids").tolist(), d.get("labels").tolist()
        ([[1, 2, 3], [4, 0, 0]], [[1, 2, 3], [4, -100, -100]])
    """
    groups = [(torch.cat(ids), torch.cat(labels))] if packing and ids else list(zip(ids, labels))
    parts_ids, parts_lab, parts_mask = [], [], []
    for x, y in groups:
        pad = (-len(x)) % block_size
        parts_ids.append(torch.cat([x, torch.full((pad,), pad_id, dtype=torch.long)]))
        parts_lab.append(torch.cat([y, torch.full((pad,), -100, dtype=torch.long)]))
        parts_mask.append(
            torch.cat([torch.ones(len(x), dtype=torch.long), torch.zeros(pad, dtype=torch.long)])
        )
    if not parts_ids:
        empty = torch.zeros((0, block_size), dtype=torch.long)
        return TensorData(input_ids=empty, attention_mask=empty.clone(), labels=empty.clone())
    shape = (-1, block_size)
    return TensorData(
        input_ids=torch.cat(parts_ids).view(shape),
        attention_mask=torch.cat(parts_mask).view(shape),
        labels=torch.cat(parts_lab).view(shape),
    )


def split_documents(
    n: int, test_fraction: float, validation: float, g: torch.Generator, where: str
) -> tuple[list[int], list[int], list[int]]:
    """Document indices for (train, validation, test), drawn at random, in reading order."""
    if n < 2:
        raise DataError(
            f"{where} has {n} document(s); a train/test split by document needs at least 2: "
            "give more files, or cut the text into documents (documents: blank_line or line)"
        )
    perm = torch.randperm(n, generator=g).tolist()
    k = min(n - 1, max(1, round(n * test_fraction)))
    test, rest = perm[:k], perm[k:]
    v = min(len(rest) - 1, max(1, round(len(rest) * validation))) if validation > 0 else 0
    val, train = rest[:v], rest[v:]
    return sorted(train), sorted(val), sorted(test)


class _Packer:
    def __init__(self, block_size: int, pad_id: int, packing: bool) -> None:
        self.block_size, self.pad_id, self.packing = block_size, pad_id, packing

    def __call__(self, docs: Documents, idx: list[int]) -> TensorData:
        return pack(
            [docs.ids[i] for i in idx],
            [docs.labels[i] for i in idx],
            self.block_size,
            self.pad_id,
            self.packing,
        )


def _check_limits(block_size: int, tokenizer: Any, context: int | None) -> None:
    limit = getattr(tokenizer, "model_max_length", None)
    for n, what in ((context, "the model's context"), (limit, "the tokenizer's model_max_length")):
        if n is not None and n < _NO_LIMIT and block_size > n:
            raise ConfigError(
                f"stream.block_size {block_size} is longer than {what} ({n} tokens); "
                f"set stream.block_size to at most {n}"
            )


def _check_vocab(name: str, docs: Documents, vocab: int | None) -> None:
    if vocab is None or not docs.ids:
        return
    top = max(int(s.max()) for s in docs.ids if len(s))
    if top >= vocab:
        raise DataError(
            f"source '{name}' has token id {top} but the model's vocabulary holds {vocab} "
            f"tokens; use the model's own tokenizer (or model.hf_config.vocab_size >= {top + 1})"
        )


def text_stream(
    sources: dict[str, Any],
    tokenizer: Any,
    *,
    tasks: list[str] | None = None,
    suites: dict[str, str] | None = None,
    block_size: int = 128,
    text_field: str = "text",
    documents: str = "auto",
    packing: bool = True,
    cache_dir: str | None = None,
    cache: bool = True,
    validation: float = 0.0,
    test_fraction: float = 0.2,
    seed: int = 0,
    context: int | None = None,
    vocab_size: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    objective: str = "auto",
    setting: str = "auto",
) -> tuple[Stream, dict[str, Any]]:
    """The stream of scenario ``text`` and facts about its data (see the module docstring).

    ``sources`` maps a name to a path or a :class:`~retain.config.TextSource` (or its mapping);
    ``context`` and ``vocab_size`` are the model's, checked against the block size and the
    tokens before anything trains. ``objective`` is ``causal_lm`` or ``classification`` (auto:
    classification when every source has a label field); ``setting`` applies to classification
    (auto: ``class_il``).
    """
    specs = {
        n: TextSource.parse(n, v) if not isinstance(v, TextSource) else v
        for n, v in sources.items()
    }
    if objective == "auto":
        objective = "classification" if all(sp.label for sp in specs.values()) else "causal_lm"
    if objective == "classification":
        from retain.data.scenarios.text_classes import classification_stream

        return classification_stream(
            specs,
            tokenizer,
            tasks=tasks,
            suites=dict(suites or {}),
            block_size=block_size,
            setting="class_il" if setting == "auto" else setting,
            opts=dict(text_field=text_field, documents=documents, cache_dir=cache_dir, cache=cache),
            split={"validation": validation, "test_fraction": test_fraction, "seed": seed},
            limits=(limit_train, limit_test),
            context=context,
            vocab_size=vocab_size,
        )
    for name, spec in specs.items():
        if spec.label:
            raise ConfigError(
                f"source '{name}' gives label '{spec.label}', which a language model does not "
                "read: set stream.objective: classification, or remove the label"
            )
    suites = dict(suites or {})
    if tasks is None:
        tasks = [n for n in specs if n not in suites.values()] or list(specs)
    for t in tasks:
        if t not in specs:
            raise ConfigError(
                f"stream.tasks names '{t}', which is not a source; sources: {', '.join(specs)}"
            )
    _check_limits(block_size, tokenizer, context)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    packer = _Packer(block_size, int(pad_id or 0), packing)
    tok_id = tokenizer_identity(tokenizer) if cache else None
    opts = dict(
        text_field=text_field, documents=documents, cache_dir=cache_dir, cache=cache, tok_id=tok_id
    )
    facts: dict[str, Any] = {}
    per_source: dict[str, list[Task]] = {}
    pools: dict[str, TensorData] = {}
    held_out: dict[str, TensorData] = {}
    split = {"validation": validation, "test_fraction": test_fraction, "seed": seed}
    limits = (limit_train, limit_test)
    for name, spec in specs.items():
        docs = load_documents(spec, tokenizer, **opts)
        _check_vocab(name, docs, vocab_size)
        task_data, pools[name], held_out[name], counts = _source(name, spec, docs, packer, split)
        if name in tasks:
            per_source[name] = [_task(n, parts, limits) for n, parts in task_data]
        facts[name] = {
            "path": spec.path,
            "kind": docs.kind,
            "files": docs.files,
            **counts,
            "tasks": [t.name for t in per_source.get(name, [])],
            "tokenized": "read from the cache" if docs.cached else "tokenised now",
        }
    task_list = [t for n in tasks for t in per_source[n]]
    suite_data, suite_facts = {}, {}
    for suite, value in suites.items():
        if value in specs:
            suite_data[suite] = spread(held_out[value], limit_test)
            suite_facts[suite] = {
                "source": value,
                "split": "test",
                "blocks": len(suite_data[suite]),
            }
            continue
        spec = TextSource.parse(f"(suite {suite})", value)
        docs = load_documents(spec, tokenizer, **opts)
        _check_vocab(f"suite {suite}", docs, vocab_size)
        suite_data[suite] = spread(packer(docs, list(range(len(docs)))), limit_test)
        suite_facts[suite] = {
            "path": spec.path,
            "files": docs.files,
            "documents": len(docs),
            "tokens": sum(len(x) for x in docs.ids),
            "blocks": len(suite_data[suite]),
        }
    stream = Stream(
        tuple(task_list),
        setting="domain_il",
        objective="causal_lm",
        n_outputs=None,
        name="text",
        suites=suite_data,
        sources=pools,
    )
    info = {
        "objective": "causal_lm",
        "sources": [
            *(f for fs in facts.values() for f in _listed(fs["path"], fs["files"])),
            *(f for fs in suite_facts.values() for f in _listed(fs.get("path"), fs.get("files"))),
        ],
        "text": {
            "block_size": block_size,
            "packing": packing,
            "tokenizer": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
            "cache": str(cache_folder(cache_dir)) if cache else None,
            "sources": facts,
            "suites": suite_facts,
        },
        "standardized": False,
    }
    return stream, info


def _source(
    name: str, spec: TextSource, docs: Documents, packer: _Packer, split: dict[str, Any]
) -> tuple[list[tuple[str, dict[str, TensorData]]], TensorData, TensorData, dict[str, Any]]:
    """One source split by document and packed: ``(task name, {split: blocks})`` per task (one,
    or one per by_column value), the pool of all its training blocks, all its test blocks, and
    the documents, tokens and blocks of each split."""
    counts = {k: dict.fromkeys(SPLITS, 0) for k in ("documents", "tokens", "blocks")}
    out, train_parts, test_parts = [], [], []
    for gi, (gname, members) in enumerate(_groups(name, spec, docs)):
        where = f"source '{name}'" + (f" ({spec.by_column}={gname})" if spec.by_column else "")
        g = generator(split["seed"], _stable(name), gi)
        parts = split_documents(len(members), split["test_fraction"], split["validation"], g, where)
        data = {}
        for k, idx in zip(SPLITS, parts):
            idx = [members[i] for i in idx]
            data[k] = packer(docs, idx)
            counts["documents"][k] += len(idx)
            counts["tokens"][k] += sum(len(docs.ids[i]) for i in idx)
            counts["blocks"][k] += len(data[k])
        train_parts.append(data["train"])
        test_parts.append(data["test"])
        out.append((gname if spec.by_column else name, data))
    return out, TensorData.concat(train_parts), TensorData.concat(test_parts), counts


def spread(data: TensorData, limit: int | None) -> TensorData:
    """At most ``limit`` blocks taken at evenly spaced positions: the blocks are in reading
    order, so the first ones would all come from the first few documents (one book, one topic).

    Examples:
        >>> d = TensorData(input_ids=torch.arange(10).view(10, 1))
        >>> spread(d, 4).get("input_ids").view(-1).tolist()
        [0, 3, 6, 9]
    """
    if limit is None or len(data) <= limit:
        return data
    return data[torch.linspace(0, len(data) - 1, limit).floor().long()]


def _task(
    name: str,
    data: dict[str, TensorData],
    limits: tuple[int | None, int | None],
    classes: tuple[int, ...] | None = None,
) -> Task:
    train, test = spread(data["train"], limits[0]), spread(data["test"], limits[1])
    val = data["validation"] if len(data["validation"]) else None
    return Task(name, train, test, val, classes, domain=name)


def _listed(path: str | None, files: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The files of a source as the report lists them: a folder of many files as one entry,
    with one SHA-256 over its files' hashes."""
    if not files:
        return []
    if len(files) <= 5:
        return files
    h = hashlib.sha256("".join(f["sha256"] for f in files).encode()).hexdigest()
    size = sum(f["bytes"] for f in files)
    return [{"file": f"{path} ({len(files)} files)", "bytes": size, "sha256": h}]


def _stable(name: str) -> int:
    """A number for ``name`` that is the same in every process: a source's split depends on its
    name and the seed, not on which other sources the config lists."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


def split_generator(seed: int, name: str, group: int = 0) -> torch.Generator:
    """The generator that draws the train/test split of source ``name`` (its ``group``-th
    by_column group): what :func:`_source` uses, for code that must draw the same split."""
    return generator(seed, _stable(name), group)


def _groups(name: str, spec: TextSource, docs: Documents) -> list[tuple[str, list[int]]]:
    """``[(value, document indices)]``: one group per by_column value, else the whole source."""
    if not spec.by_column:
        return [(name, list(range(len(docs))))]
    assert docs.groups is not None
    present = sorted(set(docs.groups))
    values = [str(v) for v in spec.values] if spec.values is not None else present
    missing = [v for v in values if v not in present]
    if missing:
        raise DataError(
            f"source '{name}': {spec.by_column} has no value {missing[0]!r}; values: {', '.join(present)}"
        )
    return [(v, [i for i, g in enumerate(docs.groups) if g == v]) for v in values]
