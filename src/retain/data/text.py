"""Text for language models: documents read from files (:mod:`retain.data.text_files`),
tokenised, and cached.

A source is read into *documents*, the unit of the train/test split (a text is never cut between
train and test): a ``.txt`` file, or a blank-line-separated block or a line of it; a row of a
JSONL/JSON/CSV/Parquet file or of a Hugging Face ``datasets`` folder. A row is one of four kinds,
told from its fields:

==========  =======================================================================================
chat        a ``messages`` list of ``{role, content}``, rendered with the tokenizer's chat template;
            only the assistant's tokens are labelled (the loss is on the response)
prompt      ``prompt`` and ``response`` fields: the response's tokens are labelled, not the prompt's
tokens      ``input_ids`` (and optionally ``labels``): already tokenised, kept as integers
text        a text field (``text`` unless configured): every token is labelled
==========  =======================================================================================

A source with a ``label`` field is classification data: each row is one example, tokenised with
the tokenizer's own special tokens (``[CLS] ... [SEP]`` for an encoder) and truncated to the
block size, and its class is the label's value (:func:`classify`).

Tokens are cached (safetensors plus a JSON file, never pickle) under a key made of the files'
SHA-256, the tokenizer's identity (a hash of its full serialisation: vocabulary, merges, special
tokens, chat template) and the reader options, so a second run reads the tensors instead of
tokenising again. The block size is not part of the key: the cache holds whole documents, before
they are split and packed, so a new block size or seed reuses it. Classification examples are
truncated when tokenised, so there the block size is part of the key, and the cache holds each
example's class too.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from retain.config import TextSource
from retain.data.text_files import read_source
from retain.errors import DataError

CACHE_VERSION = 1
_BATCH = 512  # documents per tokenizer call


@dataclass
class Documents:
    """Tokenised documents: ``ids[i]`` and ``labels[i]`` (-100 where no loss) of document ``i``,
    its ``group`` (the by_column value), its class (``targets``, classification data only) and
    where the tokens came from."""

    ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    groups: list[str] | None
    kind: str
    files: list[dict[str, Any]]
    cached: bool = False
    facts: dict[str, Any] = field(default_factory=dict)
    targets: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def cache_folder(cache_dir: str | None) -> Path:
    """``cache_dir``, else ``$RETAIN_CACHE/tokens``, else ``~/.cache/retain/tokens``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    root = os.environ.get("RETAIN_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "retain") / "tokens"


def tokenizer_identity(tokenizer: Any) -> str:
    """A hash that changes when the tokenizer would tokenise differently."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation and padding are call options that the backend remembers after a call (a
        # truncating call leaves them set): not what the tokenizer makes of a text.
        serial = json.loads(backend.to_str())
        serial.pop("truncation", None)
        serial.pop("padding", None)
        h.update(json.dumps(serial, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extra = [
        type(tokenizer).__name__,
        getattr(tokenizer, "name_or_path", ""),
        tokenizer.eos_token,
        getattr(tokenizer, "chat_template", None),
        len(tokenizer),
    ]
    h.update(json.dumps(extra, default=str).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- tokenising


def _eos(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(
            "the tokenizer has no EOS token, which separates documents; use the model's own "
            "tokenizer or set its eos_token"
        )
    return int(eos)


def _encode_texts(tokenizer: Any, texts: list[str], offsets: bool = False) -> tuple[list, list]:
    ids, offs = [], []
    for i in range(0, len(texts), _BATCH):
        kw = {"return_offsets_mapping": True} if offsets else {}
        out = tokenizer(texts[i : i + _BATCH], add_special_tokens=False, **kw)
        ids += out["input_ids"]
        if offsets:
            offs += out["offset_mapping"]
    return ids, offs


def _chat(tokenizer: Any, rows: list[dict[str, Any]], key: str) -> tuple[list, list]:
    """Render each conversation; label the tokens inside the assistant's turns only."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{rows[0]['_where']}: chat data ('{key}') needs a tokenizer with a chat template, "
            "and this one has none; give prompt/response fields instead, or use the chat "
            "model's tokenizer"
        )
    texts, spans = [], []
    for r in rows:
        msgs = r[key]
        if not isinstance(msgs, list) or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in msgs
        ):
            raise DataError(f"{r['_where']}: '{key}' must be a list of {{role, content}} objects")
        full = tokenizer.apply_chat_template(msgs, tokenize=False)
        own = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            pre = tokenizer.apply_chat_template(
                msgs[:i], tokenize=False, add_generation_prompt=True
            )
            upto = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
            if not (full.startswith(upto) and upto.startswith(pre)):
                raise DataError(
                    f"{r['_where']}: the chat template does not render the conversation turn by "
                    "turn, so the assistant's tokens cannot be found; use prompt/response fields"
                )
            own.append((len(pre), len(upto)))
        if not own:
            raise DataError(f"{r['_where']}: the conversation has no assistant message to learn")
        texts.append(full)
        spans.append(own)
    try:
        ids, offs = _encode_texts(tokenizer, texts, offsets=True)
    except NotImplementedError:
        raise DataError("chat data needs a fast tokenizer (offsets of tokens)") from None
    labels = []
    for seq, off, own in zip(ids, offs, spans):
        lab = [t if any(a <= o[0] < b for a, b in own) else -100 for t, o in zip(seq, off)]
        labels.append(lab)
    return ids, labels


def _tokens(rows: list[dict[str, Any]]) -> tuple[list, list]:
    ids, labels = [], []
    for r in rows:
        seq = r["input_ids"]
        lab = r.get("labels") if r.get("labels") is not None else seq
        try:
            seq, lab = [int(t) for t in seq], [int(t) for t in lab]
        except (TypeError, ValueError):
            raise DataError(f"{r['_where']}: input_ids must be a list of integers") from None
        if len(lab) != len(seq):
            raise DataError(f"{r['_where']}: labels and input_ids differ in length")
        ids.append(seq)
        labels.append(lab)
    return ids, labels


def tokenize(tokenizer: Any, kind: str, rows: list[dict[str, Any]], spec: TextSource, field_: str):
    """Token ids and labels of every row, each document closed by the EOS token."""
    if kind == "tokens":
        ids, labels = _tokens(rows)
        return [torch.tensor(s, dtype=torch.long) for s in ids], [
            torch.tensor(s, dtype=torch.long) for s in labels
        ]
    eos = _eos(tokenizer)
    if kind == "text":
        ids, _ = _encode_texts(tokenizer, [str(r[field_]) for r in rows])
        labels = ids
    elif kind == "prompt":
        ps, _ = _encode_texts(tokenizer, [str(r[spec.prompt]) for r in rows])
        rs, _ = _encode_texts(tokenizer, [str(r[spec.response]) for r in rows])
        ids = [p + q for p, q in zip(ps, rs)]
        labels = [[-100] * len(p) + q for p, q in zip(ps, rs)]
    else:
        ids, labels = _chat(tokenizer, rows, spec.messages)
    out_ids, out_labels = [], []
    for seq, lab in zip(ids, labels):
        if not seq or seq[-1] != eos:
            # EOS separates documents. A chat template ends the assistant's turn with its own
            # token, which is learnt; the separator after it is not. A plain response learns to
            # end with EOS.
            seq, lab = [*seq, eos], [*lab, -100 if kind == "chat" else eos]
        out_ids.append(torch.tensor(seq, dtype=torch.long))
        out_labels.append(torch.tensor(lab, dtype=torch.long))
    return out_ids, out_labels


def classify(tokenizer: Any, texts: list[str], max_length: int) -> list[torch.Tensor]:
    """Each text as one example: the tokenizer's own special tokens (an encoder's ``[CLS]`` and
    ``[SEP]``), truncated to ``max_length`` tokens (the special tokens are kept)."""
    ids: list[list[int]] = []
    for i in range(0, len(texts), _BATCH):
        out = tokenizer(texts[i : i + _BATCH], truncation=True, max_length=max_length)
        ids += out["input_ids"]
    return [torch.tensor(s, dtype=torch.long) for s in ids]


# ----------------------------------------------------------------------------- cache


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _key(files: list[dict[str, Any]], tok_id: str, spec: TextSource, options: dict) -> str:
    blob = {
        "version": CACHE_VERSION,
        "files": [f["sha256"] for f in files],
        "tokenizer": tok_id,
        "reader": {**asdict(spec), "path": None, **options},
    }
    return _sha256(json.dumps(blob, sort_keys=True, default=str).encode())


def _load_cached(folder: Path, key: str) -> Documents | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path, data_path = folder / f"{key}.json", folder / f"{key}.safetensors"
    if not (meta_path.is_file() and data_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        t = load_file(str(data_path))
    except (OSError, ValueError, SafetensorError):
        return None  # a damaged entry is rebuilt
    bounds = t["lengths"].cumsum(0).tolist()
    ids = list(torch.tensor_split(t["ids"].long(), bounds[:-1]))
    if "labelled" in t:
        mask = torch.tensor_split(t["labelled"].bool(), bounds[:-1])
        labels = [s.masked_fill(~m, -100) for s, m in zip(ids, mask)]
    else:
        labels = [s.clone() for s in ids]
    return Documents(
        ids,
        labels,
        meta.get("groups"),
        meta["kind"],
        meta["files"],
        cached=True,
        targets=meta.get("targets"),
    )


def _save_cached(folder: Path, key: str, docs: Documents) -> None:
    from safetensors.torch import save_file

    from retain.utils.files import write_atomic

    flat = torch.cat(docs.ids)
    labels = torch.cat(docs.labels)
    t = {
        "ids": flat.to(torch.int32 if int(flat.max()) < 2**31 else torch.int64),
        "lengths": torch.tensor([len(s) for s in docs.ids], dtype=torch.int64),
    }
    labelled = labels != -100
    if not bool((labels == flat).all()):
        t["labelled"] = labelled.to(torch.uint8)
    meta = {"kind": docs.kind, "files": docs.files, "groups": docs.groups, "targets": docs.targets}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"{key}.safetensors", lambda p: save_file(t, str(p)))
        write_atomic(folder / f"{key}.json", json.dumps(meta))
    except OSError:
        pass  # a read-only cache costs time, not correctness


def load_documents(
    spec: TextSource,
    tokenizer: Any,
    *,
    text_field: str = "text",
    documents: str = "auto",
    cache_dir: str | None = None,
    cache: bool = True,
    tok_id: str | None = None,
    max_length: int | None = None,
) -> Documents:
    """The tokenised documents of ``spec`` (from the cache when it holds them). A source with a
    ``label`` is classification data: one example per row, truncated to ``max_length``."""
    kind, rows, files = read_source(spec, text_field, documents)
    field_ = spec.field or text_field
    options: dict[str, Any] = {"text_field": field_, "documents": spec.documents or documents}
    if spec.label:
        if max_length is None:
            raise ValueError("classification data needs max_length (the block size)")
        options.update(objective="classification", max_length=max_length)
    folder, key = None, None
    if cache:
        folder = cache_folder(cache_dir)
        key = _key(files, tok_id or tokenizer_identity(tokenizer), spec, options)
        hit = _load_cached(folder, key)
        if hit is not None and len(hit) == len(rows) and (hit.targets is None) != bool(spec.label):
            hit.files = files
            return hit
    targets = None
    if spec.label:
        ids = classify(tokenizer, [str(r[field_]) for r in rows], options["max_length"])
        labels = [s.clone() for s in ids]
        targets = [str(r[spec.label]).strip() for r in rows]
    else:
        ids, labels = tokenize(tokenizer, kind, rows, spec, field_)
    groups = [str(r[spec.by_column]) for r in rows] if spec.by_column else None
    docs = Documents(ids, labels, groups, kind, files, targets=targets)
    if folder is not None and key is not None:
        _save_cached(folder, key, docs)
    return docs
