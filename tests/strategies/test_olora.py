"""O-LoRA: the penalty is the paper's formula, its gradient moves the new adapter out of the old
ones' subspace, earlier adapters and the base never change, inference uses every adapter, the
adapters load with plain PEFT, resume rebuilds them, and a wrong target module is one line."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from retain.api import run
from retain.config import RunConfig, TrainConfig
from retain.data.scenarios import split
from retain.errors import Unsupported
from retain.models import MLP
from retain.strategies.base import Strategy
from retain.strategies.olora import OLoRA, orthogonality

peft = pytest.importorskip("peft")

CFG = RunConfig(train=TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=1e-2), seed=0)


def _base_weights(model):
    """The base's own weights in a model PEFT injected adapters into (in place)."""
    return {
        k.replace(".base_layer.", "."): v
        for k, v in model.state_dict().items()
        if ".lora_" not in k
    }


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _ctx(i, model=None):
    return SimpleNamespace(
        task_index=i, task=SimpleNamespace(name=f"t{i}"), unwrap=lambda m: m, model=model
    )


def _three_adapters(strategy, model):
    model = strategy.setup(model, _ctx(0))
    for i in range(3):
        model = strategy.before_task(model, _ctx(i))
    return model


def test_penalty_is_the_formula_by_hand():
    # PEFT's layout, [rank, in_features]. A_0 A_2^T = [[1, 0], [2, 0]] -> 1 + 4 = 5;
    # A_1 A_2^T = [[6, 1], [0, 0]] -> 36 + 1 = 37.
    a0 = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    a1 = torch.tensor([[1.0, 1, 1], [0, 0, 0]])
    a2 = torch.tensor([[1.0, 2, 3], [0, 0, 1]])
    assert float(orthogonality([a0], a2)) == 5.0
    assert float(orthogonality([a0, a1], a2)) == 42.0
    assert float(orthogonality([], a2)) == 0.0

    strategy = OLoRA(rank=2, alpha=2.0, dropout=0.0, lam1=0.5, lam2=0.1)
    model = _three_adapters(strategy, nn.Sequential(nn.Linear(3, 2)))
    layer = model.base_model.model[0]
    with torch.no_grad():
        for name, a in zip(strategy.adapters_, (a0, a1, a2)):
            layer.lora_A[name].weight.copy_(a)
        layer.lora_B["t2"].weight.copy_(torch.tensor([[1.0, 0], [0, 2]]))
    # 0.5 * 42 + 0.1 * (||A_2||^2 + ||B_2||^2) = 21 + 0.1 * (15 + 5) = 23
    assert float(strategy.penalty(model).detach()) == pytest.approx(23.0)
    loss = torch.tensor(1.0)
    assert float(strategy.loss(loss, None, {}, _ctx(2, model)).detach()) == pytest.approx(24.0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "base_model.model.0.lora_A.t2.weight",
        "base_model.model.0.lora_B.t2.weight",
    }


def test_penalty_gradient_moves_the_new_adapter_out_of_the_old_subspace():
    torch.manual_seed(0)
    strategy = OLoRA(rank=4, dropout=0.0)
    model = strategy.setup(nn.Sequential(nn.Linear(16, 8)), _ctx(0))
    for i in range(2):
        model = strategy.before_task(model, _ctx(i))
    layer = model.base_model.model[0]
    old, new = layer.lora_A["t0"].weight, layer.lora_A["t1"].weight
    with torch.no_grad():  # orthonormal rows: the penalty's curvature is the same everywhere
        old.copy_(torch.linalg.qr(torch.randn(16, 4))[0].T)
    outside = torch.eye(16) - old.detach().T @ old.detach()  # projects out old's row space
    before, old_before = new.detach().clone(), old.detach().clone()
    start = float(orthogonality([old], new).detach())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        strategy.penalty(model).backward()
        opt.step()
    assert float(orthogonality([old], new).detach()) < 1e-3 * start
    # The gradient 2 A_t A_0^T A_0 lies in A_0's row space: only that part of A_t moves.
    assert torch.allclose(new.detach() @ outside, before @ outside, atol=1e-6)
    assert torch.equal(old.detach(), old_before)


class Snapshots(Strategy):
    """Records every parameter after each task."""

    def __init__(self):
        self.seen = []

    def after_task(self, model, ctx):
        self.seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return model


@pytest.fixture(scope="module")
def trained(digits):
    stream = split(digits, n_tasks=3, classes=[0, 1, 2, 3, 4, 5])
    torch.manual_seed(0)
    base = MLP(64, 6, [32])
    original = {k: v.clone() for k, v in base.state_dict().items()}
    snaps = Snapshots()
    r = run(base, stream, [OLoRA(), snaps], CFG)
    return SimpleNamespace(stream=stream, base=base, original=original, snaps=snaps, result=r)


def test_base_and_earlier_adapters_never_change(trained):
    model = trained.result.model
    assert _same(_base_weights(trained.base), trained.original)
    first, *later = trained.snaps.seen
    for snap in later:
        for n, p in first.items():
            assert torch.equal(snap[n], p), n  # the base and adapter t0 (incl. its B)
    # ... while each task's own adapter did train.
    b = "base_model.model.net.1.lora_B.{}.weight"
    assert first[b.format("t1")].abs().sum() > 0 and b.format("t2") not in first
    assert later[-1][b.format("t3")].abs().sum() > 0
    stats = trained.result.record.strategy_stats
    assert [s["olora"]["adapters"] for s in stats] == [1, 2, 3]
    assert stats[0]["olora"]["orthogonality"] == 0.0 and stats[2]["olora"]["orthogonality"] > 0
    assert model.active_adapters == ["t1", "t2", "t3"]


def test_inference_without_task_id_is_base_plus_every_adapter(trained):
    model = trained.result.model.eval()
    s = 32.0 / 8  # alpha / rank
    merged = MLP(64, 6, [32])
    state = {k: v.clone() for k, v in trained.original.items()}
    lora = dict(model.named_parameters())
    for layer in ("net.1", "net.3"):
        for name in ("t1", "t2", "t3"):
            a = lora[f"base_model.model.{layer}.lora_A.{name}.weight"]
            b = lora[f"base_model.model.{layer}.lora_B.{name}.weight"]
            state[f"{layer}.weight"] += s * b.detach() @ a.detach()
    merged.load_state_dict(state)
    x = trained.stream.tasks[0].test.tensors["x"][:16]
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(out, merged(x), atol=1e-5)
        plain = MLP(64, 6, [32])
        plain.load_state_dict(trained.original)
        assert not torch.allclose(out, plain(x), atol=1e-3)  # the adapters matter


def test_adapters_load_with_plain_peft_and_the_model_with_plain_transformers(
    tiny_causal_lm, tiny_llama_config, tmp_path
):
    import transformers
    from peft import PeftModel

    from retain.data.stream import Stream, Task, TensorData

    def task(name, lo):
        ids = lo + (torch.randint(0, 32, (8, 1)) + torch.arange(10)) % 32
        data = TensorData(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())
        return Task(name, data, data[torch.arange(4)])

    stream = Stream((task("en", 0), task("es", 32)), objective="causal_lm", setting="domain_il")
    original = {k: v.clone() for k, v in tiny_causal_lm.state_dict().items()}
    cfg = RunConfig(train=TrainConfig(steps=3, batch_size=4, optimizer="adamw", lr=1e-2))
    r = run(tiny_causal_lm, stream, [OLoRA(dropout=0.0)], cfg, out_dir=tmp_path / "run")
    assert _same(_base_weights(tiny_causal_lm), original)
    for name in ("en", "es"):
        folder = tmp_path / "run" / "adapters" / name
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["r"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
        torch.manual_seed(1)
        fresh = transformers.LlamaForCausalLM(tiny_llama_config)
        fresh.load_state_dict(original)
        loaded = PeftModel.from_pretrained(fresh, folder)
        trained = dict(r.model.named_parameters())
        for n, p in loaded.named_parameters():
            if ".lora_" in n:
                assert torch.equal(p, trained[n.replace(".default.", f".{name}.")]), n
    ids = stream.tasks[1].test.tensors["input_ids"]
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    with torch.no_grad():
        expected = r.model.eval()(input_ids=ids).logits
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)


def test_target_modules_and_adapter_names():
    from retain.strategies.olora import OLoRA as _OLoRA
    from retain.utils.adapters import safe_name

    assert safe_name("es/2024", 1, []) == "es_2024"
    # Names a module dict or PEFT's "lora_" prefix would confuse, and repeats, get task<i>.
    assert [safe_name(n, 2, ["b"]) for n in ("train", "a", "b", "")] == ["task2"] * 4

    transformers = pytest.importorskip("transformers")
    bert = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
        )
    )
    assert _OLoRA()._resolve(bert) == ["query", "value", "classifier"]
    mlp = MLP(64, 6, [32])
    assert _OLoRA()._resolve(mlp) == ["net.1", "net.3"]
    assert _OLoRA(target_modules=["3"])._resolve(mlp) == ["3"]
    with pytest.raises(Unsupported, match="'q_proj' matches no layer.*some are: net.1, net.3") as e:
        OLoRA(target_modules=["q_proj"]).check_model(mlp)
    assert "\n" not in str(e.value)
    with pytest.raises(Unsupported, match="'net.2' matches no layer"):  # a ReLU
        OLoRA(target_modules=["net.2"]).check_model(mlp)


def test_resume_rebuilds_the_adapters(digits, tmp_path, crash_and_resume):
    stream = split(digits, n_tasks=3, classes=[0, 1, 2, 3, 4, 5])

    def mlp():
        torch.manual_seed(0)
        return MLP(64, 6, [32])

    r = crash_and_resume(stream, lambda: [OLoRA()], CFG.train, tmp_path / "run", mlp)
    (strategy,), resumed = r.strategies, r.resumed
    assert resumed.matrix == r.full.matrix
    assert strategy.adapters_ == ["t1", "t2", "t3"]
    library = {p.name for p in (tmp_path / "run" / "adapters").iterdir() if p.is_dir()}
    assert library == {"t1", "t2", "t3", "base"}  # the base: an MLP trained from scratch


def test_cli_refuses_a_missing_target_module(tmp_path, capsys):
    from retain.cli import main

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "stream: {dataset: digits, scenario: split, n_tasks: 2, classes: [0, 1, 2, 3]}\n"
        "model: {name: mlp, hidden: [32]}\n"
        "strategies: [{name: olora, target_modules: [q_proj]}]\n"
    )
    assert main(["run", str(cfg), "-q", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "target module 'q_proj' matches no layer" in err
    assert not (tmp_path / "run").exists()
