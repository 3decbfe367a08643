"""Vocabulary extension for a new language: new tokens in the tokenizer, new rows in the model.

A tokenizer trained mostly on English cuts Spanish words into many pieces (`` corazón`` into
`` cor``, ``az``, ``ón``): more tokens per character, longer sequences, and each word's meaning
spread over pieces. Extension (``model.vocab``, :class:`~retain.config.VocabConfig`) adds whole
words as tokens: a given list, or the most frequent words of a source's *training* documents that
the tokenizer cuts into at least ``min_pieces`` pieces (ties broken alphabetically, so the same
data always gives the same tokens). A word is a run of letters with the space before it, the form
the pieces of a byte-level BPE tokenizer (GPT-2, Llama 3, SmolLM2) take.

Where it acts:

* :func:`extend` (``runner.prepare_stream``): the extended tokenizer tokenises every task, source
  and suite, and the stream carries the added tokens with their ids (``Stream.vocab``);
* :func:`extend_model` (``models.build_model``): the input embeddings and an untied output layer
  get a row per new token, initialised as the mean of the rows of the pieces the token replaces
  (``init: mean``) or of all old rows (``mean_all``); a tied output layer is the same matrix;
* :func:`row_steps` (``api.train_task``): the new rows' own learning rate;
* ``checkpointing.save_trained`` saves the extended tokenizer beside the model (``RUN/model``);
* :func:`record_tokens` keeps the tokens in ``RUN/vocab.json``; a resumed run must rebuild the
  same ones, id for id, or it stops with one line.

The tokens are ``AddedToken``s, matched in the raw text before the tokenizer's own splitting
(what ``tokenizer.add_tokens`` does): `` corazón`` also matches the start of `` corazones``,
which stays lossless (the rest is tokenised as before).

Why the new rows' learning rate is a scaled step rather than a param group: the rows live inside
one embedding matrix, and a param group needs a Parameter of its own (splitting the matrix would
change the model's structure and its saved format). Scaling their gradient does not work either:
Adam divides the gradient by its own running scale, so the step would not change. So the rows are
saved before the optimizer step (``after_backward``) and, after it, moved by ``lr_scale`` times
the step they took: ``w = w_before + lr_scale * (w_after - w_before)``. For SGD (with momentum),
Adam and AdamW, whose step is proportional to the learning rate and whose state does not depend on
it, this is exactly a learning rate of ``lr_scale * lr`` for those rows, weight decay included.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from retain.errors import ConfigError, DataError
from retain.strategies.base import Strategy

if TYPE_CHECKING:
    from torch import nn

    from retain.config import ModelConfig, RunConfig, VocabConfig
    from retain.strategies.context import TaskContext

WORD = re.compile(r" ?[^\W\d_]+")  # letters, with the space before them
_BATCH = 512


def words(texts: list[str]) -> Counter[str]:
    """How often each word (a run of letters with its leading space) occurs in ``texts``.

    Examples:
        >>> sorted(words(["El niño, el niño."]).items())
        [(' el', 1), (' niño', 2), ('El', 1)]
    """
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(WORD.findall(t))
    return counts


def n_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    """The number of tokens of each text (no special tokens)."""
    out: list[int] = []
    for i in range(0, len(texts), _BATCH):
        out += [
            len(s) for s in tokenizer(texts[i : i + _BATCH], add_special_tokens=False)["input_ids"]
        ]
    return out


def choose(
    tokenizer: Any, texts: list[str], count: int, min_pieces: int = 3, min_count: int = 2
) -> list[str]:
    """The ``count`` most frequent words of ``texts`` (occurring at least ``min_count`` times)
    that ``tokenizer`` cuts into at least ``min_pieces`` pieces; by frequency, then
    alphabetically."""
    freq = words(texts)
    common = sorted((w for w, c in freq.items() if c >= min_count), key=lambda w: (-freq[w], w))
    out: list[str] = []
    for i in range(0, len(common), _BATCH):
        batch = common[i : i + _BATCH]
        out += [w for w, n in zip(batch, n_tokens(tokenizer, batch)) if n >= min_pieces]
        if len(out) >= count:
            break
    return out[:count]


def extend_tokenizer(tokenizer: Any, tokens: list[str]) -> tuple[Any, dict[str, int]]:
    """A copy of ``tokenizer`` with ``tokens`` added (in order), and each token's id."""
    from tokenizers import AddedToken

    tok = copy.deepcopy(tokenizer)
    tok.add_tokens([AddedToken(t, normalized=False, single_word=False) for t in tokens])
    vocab = tok.get_vocab()
    return tok, {t: int(vocab[t]) for t in tokens}


# ----------------------------------------------------------------------------- the stream side


@dataclass
class Extension:
    """What :func:`extend` made: the extended tokenizer, the added tokens with their ids, the
    tokens given but already single tokens (left out), and how the tokens were found."""

    tokenizer: Any
    base: Any
    added: dict[str, int]
    skipped: list[str] = field(default_factory=list)
    found: dict[str, Any] | None = None


def _rows_texts(kind: str, rows: list[dict[str, Any]], spec: Any, field_: str) -> list[str]:
    if kind == "text":
        return [str(r[field_]) for r in rows]
    if kind == "prompt":
        return [str(r[k]) for r in rows for k in (spec.prompt, spec.response)]
    if kind == "chat":
        return [
            str(m.get("content", "")) for r in rows for m in r[spec.messages] if isinstance(m, dict)
        ]
    return []  # already token ids: no text


def _source_texts(cfg: RunConfig, spec: Any, train_of: tuple[str, int] | None = None) -> list[str]:
    """The texts of a source: all its documents, or (``train_of=(name, seed)``) its training
    documents, drawn as the stream draws them (:func:`retain.data.scenarios.text._source`)."""
    from retain.data.text_files import read_source

    o = cfg.stream.options
    kind, rows, _ = read_source(spec, o.text_field, o.documents)
    if train_of is not None and not spec.by_column:
        from retain.data.scenarios.text import split_documents, split_generator

        name, seed = train_of
        g = split_generator(seed, name)
        train, _, _ = split_documents(
            len(rows), cfg.stream.test_fraction, cfg.stream.validation, g, f"source '{name}'"
        )
        rows = [rows[i] for i in train]
    return _rows_texts(kind, rows, spec, spec.field or o.text_field)


def _specs(cfg: RunConfig) -> dict[str, Any]:
    from retain.config import TextSource

    sources = cfg.stream.options.sources or {}
    return {
        n: v if isinstance(v, TextSource) else TextSource.parse(n, v) for n, v in sources.items()
    }


def extend(cfg: RunConfig, tokenizer: Any, seed: int) -> Extension | None:
    """The tokenizer extended as ``cfg.model.vocab`` says (None when it says nothing)."""
    v = cfg.model.vocab
    if not v.enabled:
        return None
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ConfigError(
            f"model.vocab needs a fast (Rust) tokenizer, and {type(tokenizer).__name__} is not "
            "one: give model.tokenizer a folder with a tokenizer.json"
        )
    tokens, found = list(dict.fromkeys(v.tokens)), None
    if v.from_task is not None:
        specs = _specs(cfg)
        if v.from_task not in specs:
            raise ConfigError(
                f"model.vocab.from_task '{v.from_task}' is not a source of the stream; sources: "
                f"{', '.join(specs) or 'none'}"
            )
        texts = _source_texts(cfg, specs[v.from_task], (v.from_task, seed))
        picked = choose(tokenizer, texts, v.count, v.min_pieces, v.min_count)
        if not picked:
            raise DataError(
                f"model.vocab.from_task '{v.from_task}': no word occurs {v.min_count}+ times and "
                f"is cut into {v.min_pieces}+ pieces; lower model.vocab.min_pieces or min_count"
            )
        found = {
            "source": v.from_task,
            "characters": sum(map(len, texts)),
            "words": len(picked),
        }
        tokens += [t for t in picked if t not in tokens]
    vocab = tokenizer.get_vocab()
    pieces = n_tokens(tokenizer, tokens)
    skipped = [t for t, n in zip(tokens, pieces) if n <= 1 or t in vocab]
    tokens = [t for t in tokens if t not in skipped]
    if not tokens:
        raise ConfigError(
            f"model.vocab.tokens: every token is already one token of the tokenizer "
            f"({', '.join(map(repr, skipped[:3]))}); give tokens the tokenizer cuts into pieces"
        )
    ext, added = extend_tokenizer(tokenizer, tokens)
    return Extension(ext, tokenizer, added, skipped, found)


def _tokens_per_char(cfg: RunConfig, e: Extension, spec: Any) -> dict[str, Any]:
    """The characters of a source's text and the tokens the stream holds for it (one EOS per
    document included: it is scored too), with the old and the new tokenizer. The tokens come
    from the token cache where it holds them (the new ones always: the stream was just built)."""
    from retain.data.text import load_documents

    o = cfg.stream.options
    opts = {"text_field": o.text_field, "documents": o.documents, "cache_dir": o.cache_dir}
    kw = {**opts, "cache": o.cache, "max_length": o.block_size if spec.label else None}
    chars = sum(map(len, _source_texts(cfg, spec)))
    before = sum(len(x) for x in load_documents(spec, e.base, **kw).ids)
    after = sum(len(x) for x in load_documents(spec, e.tokenizer, **kw).ids)
    return {
        "characters": chars,
        "tokens_before": before,
        "tokens_after": after,
        "tokens_per_char_before": before / chars if chars else None,
        "tokens_per_char_after": after / chars if chars else None,
    }


def facts(cfg: RunConfig, e: Extension) -> dict[str, Any]:
    """What result.json keeps under ``data.vocab`` (see docs/vocab.md): the added tokens, and
    the tokens per character of every source's and suite's text with the old and new tokenizer."""
    from retain.config import TextSource

    v = cfg.model.vocab
    specs = _specs(cfg)
    sources = {n: _tokens_per_char(cfg, e, s) for n, s in specs.items()}
    suites: dict[str, Any] = {}
    for name, value in (cfg.stream.suites or {}).items():
        if value in sources:
            suites[name] = {"source": value, **sources[value]}
        else:
            spec = TextSource.parse(f"(suite {name})", value)
            suites[name] = _tokens_per_char(cfg, e, spec)
    return {
        "tokens": list(e.added),
        "ids": list(e.added.values()),
        "skipped": e.skipped,
        "found": e.found,
        "init": v.init,
        "lr_scale": v.lr_scale,
        "base_size": len(e.base),
        "size": len(e.tokenizer),
        "sources": sources,
        "suites": suites,
    }


def record_tokens(out: Path, added: dict[str, int], resume: bool) -> None:
    """Write ``out/vocab.json``; on resume, refuse tokens that differ from the ones written."""
    from retain.utils.checkpoint import is_main_process
    from retain.utils.files import write_atomic

    path = out / "vocab.json"
    if resume and path.is_file():
        saved = json.loads(path.read_text())["tokens"]
        if saved != added:
            raise ConfigError(
                f"model.vocab now adds {len(added)} tokens, not the {len(saved)} this run was "
                f"started with ({path}): resume with the same config and data, or start a new run"
            )
        return
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"tokens": added}, ensure_ascii=False, indent=1))


def bits_per_char(data: dict[str, Any], record: Any) -> dict[str, Any] | None:
    """Per task and per suite, for each row of R: the model's loss in bits per character of the
    text (the per-token loss times the text's tokens per character, over ln 2); comparable
    across tokenizers, unlike per-token perplexity. None when the run has no per-token loss."""
    v = (data or {}).get("vocab")
    if (data or {}).get("objective") != "causal_lm":
        return None  # a classifier's loss is per example, not per token
    losses = (record.matrices or {}).get("loss") or (
        record.matrix if record.score == "loss" else None
    )
    if not v or not losses:
        return None
    text = data.get("text", {})
    ratio = {}
    for name, src in text.get("sources", {}).items():
        for task in src.get("tasks") or [name]:
            if name in v["sources"]:
                ratio[task] = v["sources"][name]["tokens_per_char_after"]
    out: dict[str, Any] = {"tasks": {}, "suites": {}}
    for j, task in enumerate(record.tasks):
        if ratio.get(task) is not None:
            out["tasks"][task] = [_bpc(row[j], ratio[task]) for row in losses]
    for name, rows in (record.suites or {}).items():
        r = v["suites"].get(name, {}).get("tokens_per_char_after")
        if r is not None:
            out["suites"][name] = [_bpc(row.get("loss"), r) for row in rows]
    return out


def _bpc(loss: float | None, tokens_per_char: float) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return loss * tokens_per_char / math.log(2)


# ----------------------------------------------------------------------------- the model side


def _matrices(model: nn.Module) -> list[torch.Tensor]:
    """The input embedding matrix and, when it is not the same tensor, the output layer's."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    emb = model.get_input_embeddings().weight
    out = (
        model.get_output_embeddings()
        if callable(getattr(model, "get_output_embeddings", None))
        else None
    )
    return [emb] if out is None or out.weight is emb else [emb, out.weight]


def grow(model: nn.Module, added: dict[str, int], pieces: dict[str, list[int]], init: str) -> None:
    """Give ``model`` a row for each added token's id (resizing its embeddings when needed), set
    to the mean of its ``pieces``' rows (``init="mean"``) or of all old rows (``mean_all``), in
    the input embeddings and an untied output layer alike; every old row is kept as it was."""
    mats = _matrices(model)
    old = mats[0].shape[0]
    tied = len(mats) == 1 and model.get_output_embeddings() is not None

    def means(w: torch.Tensor) -> torch.Tensor:
        w = w.detach().float()
        if init == "mean_all":
            return w[:old].mean(0).expand(len(added), -1).clone()
        return torch.stack([w[pieces[t]].mean(0) for t in added])

    new_in = [means(w) for w in mats]
    bias = getattr(model.get_output_embeddings(), "bias", None) if len(mats) > 1 else None
    new_bias = None
    if bias is not None:
        b = bias.detach().float()
        new_bias = (
            b[:old].mean().expand(len(added)).clone()
            if init == "mean_all"
            else torch.stack([b[pieces[t]].mean() for t in added])
        )
    need = max(old, max(added.values()) + 1)
    if need > old:
        model.resize_token_embeddings(need, mean_resizing=False)
        if tied:
            model.tie_weights()
    ids = torch.tensor(list(added.values()))
    with torch.no_grad():
        for w, m in zip(_matrices(model), new_in):
            w[ids.to(w.device)] = m.to(w.device, w.dtype)
        out = model.get_output_embeddings()
        if new_bias is not None and getattr(out, "bias", None) is not None:
            out.bias[ids.to(out.bias.device)] = new_bias.to(out.bias.device, out.bias.dtype)


def extend_model(model: nn.Module, cfg: ModelConfig, added: dict[str, int]) -> None:
    """:func:`grow` ``model`` for the stream's added tokens; a token's pieces are what the
    model's own tokenizer (before extension) makes of it."""
    from retain.utils.hf import load_tokenizer

    if not callable(getattr(model, "get_input_embeddings", None)):
        raise ConfigError("model.vocab needs a transformers model with input embeddings")
    base = load_tokenizer(cfg)
    ids = base(list(added), add_special_tokens=False)["input_ids"]
    grow(model, added, dict(zip(added, ids)), cfg.vocab.init)


@dataclass
class NewRowsStep(Strategy):
    """The new rows' learning rate: their step scaled by ``scale`` (see the module docstring).
    Not registered: ``api.train_task`` adds it for ``model.vocab.lr_scale``."""

    name: ClassVar[str] = "vocab_lr"
    rows: list[int] = field(default_factory=list)
    scale: float = 1.0

    def after_backward(self, model: nn.Module, ctx: TaskContext | None) -> None:
        self._saved = []
        for w in _matrices(model):
            idx = torch.tensor(self.rows, device=w.device)
            self._saved.append((w, idx, w.detach()[idx].clone()))

    def after_step(self, model: nn.Module, ctx: TaskContext | None) -> None:
        with torch.no_grad():
            for w, idx, before in self._saved:
                w[idx] = before + self.scale * (w[idx] - before)
        self._saved = []


def row_steps(v: VocabConfig, added: dict[str, int]) -> list[Strategy]:
    """The loop's addition for the new rows' learning rate (none when it is ``train.lr``)."""
    if not added or v.lr_scale == 1.0:
        return []
    return [NewRowsStep(rows=sorted(added.values()), scale=v.lr_scale)]
