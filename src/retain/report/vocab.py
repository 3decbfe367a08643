"""Vocabulary extension in a report: tokens per character before and after, and the loss in
bits per character (``data.vocab`` of result.json, written by :mod:`retain.vocab`).

Per-token perplexity is not comparable across tokenizers: with more tokens per word, each token
is easier to predict. Bits per character (the per-token loss times the text's tokens per
character, over ln 2) is the same quantity for every tokenizer, so a run with an extended
vocabulary and one without can be compared on it. Only the standard library is imported.
"""

from __future__ import annotations

from typing import Any

from retain.report.record import RunRecord
from retain.report.summary import row_labels

VOCAB_NOTE = (
    "Tokens per character: the tokens the tokenizer makes of a text, divided by its characters, "
    "with the model's own tokenizer (before) and the extended one (after); lower means shorter "
    "sequences. Bits per character: the model's loss on a text per character instead of per "
    "token (per-token loss x tokens per character / ln 2), comparable between runs with "
    "different tokenizers, where per-token perplexity is not. Lower is better."
)


def _pct(before: float | None, after: float | None) -> str:
    if not before or after is None:
        return ""
    return f"{100 * (after - before) / before:+.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def vocab_blocks(runs: dict[str, RunRecord]) -> list[tuple[Any, ...]]:
    """The added tokens, tokens per character of every text, and each run's bits per character
    after each row of R; nothing for runs without a vocabulary extension."""
    runs = {k: r for k, r in runs.items() if (r.data or {}).get("vocab")}
    if not runs:
        return []
    v = next(iter(runs.values())).data["vocab"]  # type: ignore[index]
    shown = ", ".join(repr(t) for t in v["tokens"][:12])
    more = f" and {len(v['tokens']) - 12} more" if len(v["tokens"]) > 12 else ""
    where = f" from the training text of '{v['found']['source']}'" if v.get("found") else ""
    intro = (
        f"{len(v['tokens'])} tokens added{where} (vocabulary {v['base_size']} -> {v['size']}; "
        f"new rows initialised as {'the mean of their pieces' if v['init'] == 'mean' else 'the mean of all rows'}, "
        f"learning rate x {v['lr_scale']:g}): {shown}{more}."
    )
    rows = []
    for kind, items in (("source", v.get("sources", {})), ("suite", v.get("suites", {}))):
        for name, s in items.items():
            if kind == "suite" and s.get("source"):
                continue  # the same text as its source
            b, a = s.get("tokens_per_char_before"), s.get("tokens_per_char_after")
            rows.append([f"{name} ({kind})", str(s["characters"]), _num(b), _num(a), _pct(b, a)])
    head = ["text", "characters", "tokens/char before", "tokens/char after", "change"]
    blocks: list[tuple[Any, ...]] = [
        ("h", 2, "Vocabulary extension"),
        ("p", intro),
        ("table", head, rows, None),
        ("p", VOCAB_NOTE),
    ]
    for label, run in runs.items():
        bpc = run.data.get("vocab", {}).get("bits_per_char") if run.data else None
        if not bpc:
            continue
        named = {
            **bpc.get("tasks", {}),
            **{f"{n} (suite)": x for n, x in bpc.get("suites", {}).items()},
        }
        table = [
            [lab] + [_num(vals[i] if i < len(vals) else None) for vals in named.values()]
            for i, lab in enumerate(row_labels(run))
        ]
        blocks += [
            ("h", 3, f"{label}: bits per character (lower is better)"),
            ("table", ["model", *named], table, None),
        ]
    return blocks
