"""LoRA per task: a bit-identical base, one base in memory, a continued adapter, routing without
task ids, PEFT's mixed-adapter batches, the adapter library loaded by plain PEFT, bad target
modules refused before training, and resume."""

from __future__ import annotations

import json

import pytest
import torch

from retain.api import run
from retain.cli import main
from retain.config import RunConfig, TrainConfig
from retain.data.stream import Stream, Task, TensorData
from retain.models import MLP, count_parameters
from retain.models.adapters import AdapterModel
from retain.strategies.lora import LoRA
from retain.utils.adapters import adapter_parameters, base_parameters

peft = pytest.importorskip("peft")

CFG = RunConfig(train=TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=0.01), seed=0)


def _mlp():
    torch.manual_seed(0)
    return MLP(64, 6, [32])


def _base_copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_base(peft_model, before):
    """Every base tensor, by its name before wrapping, is bit-identical to ``before``."""
    after = {
        k.removeprefix("base_model.model.").replace(".base_layer.", "."): v
        for k, v in base_parameters(peft_model).items()
    }
    assert after.keys() == before.keys()
    return all(torch.equal(after[k], before[k]) for k in before)


def test_base_is_bit_identical_and_held_once_on_an_mlp(tiny_stream):
    model = _mlp()
    before = _base_copy(model)
    r = run(model, tiny_stream, [LoRA(rank=4)], CFG)
    net = r.model
    assert isinstance(net, AdapterModel) and net.names == ["task_0", "task_1", "task_2"]
    assert _same_base(net.peft_model, before)
    # One base in memory plus three small adapters, not three models.
    per = adapter_parameters(net.peft_model, "task_0")
    assert 0 < per < sum(v.numel() for v in before.values()) // 4
    assert count_parameters(net) == sum(v.numel() for v in before.values()) + 3 * per
    assert r.record.strategy_stats[-1]["lora"]["adapters"] == 3
    # The adapters learned: the last task is well above chance with the model's routing.
    assert r.matrix[-1][-1] > 0.4  # chance: 1/6


def _lm_task(name, lo, n=12, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(lo, lo + 32, (n, 1), generator=g)
    ids = lo + (start - lo + torch.arange(length)) % 32
    data = TensorData(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())
    return Task(name, data, data[torch.arange(4)])


def test_base_is_bit_identical_on_a_tiny_llama(tiny_causal_lm):
    stream = Stream(
        (_lm_task("a", 0), _lm_task("b", 32, seed=1)), objective="causal_lm", setting="domain_il"
    )
    before = _base_copy(tiny_causal_lm)
    cfg = RunConfig(train=TrainConfig(steps=3, batch_size=4, optimizer="adamw", lr=3e-3))
    r = run(tiny_causal_lm, stream, [LoRA(rank=2)], cfg)
    assert r.model.names == ["task_0", "task_1"]
    # q_proj and v_proj, peft's defaults for Llama
    targets = r.model.peft_model.peft_config["task_0"].target_modules
    assert set(targets) == {"q_proj", "v_proj"}
    assert _same_base(r.model.peft_model, before)
    routed = r.record.strategy_stats[-1]["lora"]["routing_accuracy"]
    assert len(routed) == 2 and all(0.0 <= v <= 1.0 for v in routed)


def test_one_adapter_continued_across_tasks(tiny_stream, tmp_path):
    model = _mlp()
    before = _base_copy(model)
    cfg = RunConfig(train=CFG.train, seed=0)
    cfg.output.keep_checkpoints = 3
    r = run(model, tiny_stream, [LoRA(rank=4, per_task=False)], cfg, out_dir=tmp_path / "r")
    net = r.model
    assert net.names == ["shared"] and _same_base(net.peft_model, before)
    assert count_parameters(net) == sum(v.numel() for v in before.values()) + (
        adapter_parameters(net.peft_model, "shared")
    )
    # The same adapter changed with every task.
    from safetensors.torch import load_file

    key = "peft_model.base_model.model.net.1.lora_B.shared.weight"
    weights = [
        load_file(p / "model.safetensors")[key] for p in sorted(tmp_path.glob("r/c*/task-*"))
    ]
    assert len(weights) == 3
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    lib = tmp_path / "r" / "adapters"
    assert sorted(p.name for p in lib.iterdir() if p.is_dir()) == ["base", "shared"]


def _domains(setting="domain_il", n=60, dim=8, seed=0):
    """Three domains whose inputs sit in far-apart regions, with the same two classes in each,
    labelled by a different feature per domain: routing by prototypes must find the domain."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for k in range(3):
        centre = torch.zeros(dim)
        centre[k] = 6.0

        def data(m, centre=centre, k=k):
            x = centre + torch.randn(m, dim, generator=g)
            return TensorData(x=x, y=(x[:, 3 + k] > 0).long())

        tasks.append(Task(f"d{k}", data(n), data(n // 2), classes=(0, 1)))
    return Stream(tuple(tasks), setting=setting, n_outputs=2)


def _small():
    torch.manual_seed(0)
    return MLP(8, 2, [16])


def test_prototypes_route_an_easy_stream_correctly():
    cfg = RunConfig(train=TrainConfig(epochs=3, batch_size=16, optimizer="adam", lr=0.02), seed=0)
    r = run(_small(), _domains(), [LoRA(rank=4)], cfg)
    routing = r.record.strategy_stats[-1]["lora"]["routing_accuracy"]
    assert len(routing) == 3 and min(routing) >= 0.95, routing
    assert r.model.prototypes.shape == (3, 16)
    # ... and the report shows it, one row per task trained
    from retain.report.render import render_markdown

    md = render_markdown(r.record)
    assert "## Adapter routing" in md
    assert "| d2 | " + " | ".join(f"{v:.3f}" for v in routing) + " |" in md


def test_known_task_uses_its_own_adapter_and_mixed_batches_match():
    cfg = RunConfig(train=TrainConfig(epochs=1, batch_size=16, optimizer="adam", lr=0.02), seed=0)
    stream = _domains("task_il")
    r = run(_small(), stream, [LoRA(rank=4)], cfg)
    net, pm = r.model.eval(), r.model.peft_model
    # task_il gives ids: no routing is measured
    assert "routing_accuracy" not in r.record.strategy_stats[-1]["lora"]
    with torch.no_grad():
        torch.manual_seed(1)
        for lora_b in (p for n, p in pm.named_parameters() if "lora_B" in n):
            lora_b.add_(torch.randn_like(lora_b))  # distinct adapters, so a mix-up would show
        x = torch.randn(9, 8)
        task = torch.tensor([0, 1, 2, 2, 1, 0, 0, 2, 1])
        mixed = net(x, task=task)
        one = {}
        for k, name in enumerate(net.names):
            pm.set_adapter(name)
            one[k] = pm(x)
        for i, t in enumerate(task.tolist()):
            assert torch.allclose(mixed[i], one[t][i], atol=1e-6)
        assert not torch.allclose(one[0], one[1])


def test_entropy_routing_runs_and_regression_refuses_it():
    from retain.errors import Unsupported

    cfg = RunConfig(train=TrainConfig(epochs=1, batch_size=16, optimizer="adam", lr=0.02), seed=0)
    r = run(_small(), _domains(), [LoRA(rank=4, route="entropy")], cfg)
    assert len(r.record.strategy_stats[-1]["lora"]["routing_accuracy"]) == 3
    x = torch.randn(20, 8)
    reg = Stream(
        (Task("a", TensorData(x=x, y=x[:, 0]), TensorData(x=x, y=x[:, 0])),), objective="regression"
    )
    with pytest.raises(Unsupported, match="route=entropy"):
        LoRA(route="entropy").check(reg)
    routed = run(_small().net[:-1].append(torch.nn.Linear(16, 1)), reg, [LoRA(rank=2)], cfg)
    assert routed.record.strategy_stats[-1]["lora"]["routing_accuracy"] == [1.0]


def test_adapter_library_loads_with_plain_peft(tiny_stream, tmp_path):
    from safetensors.torch import load_model

    r = run(_mlp(), tiny_stream, [LoRA(rank=4)], CFG, out_dir=tmp_path / "r")
    lib = tmp_path / "r" / "adapters"
    assert sorted(p.name for p in lib.iterdir() if p.is_dir()) == [
        "base",
        "task_0",
        "task_1",
        "task_2",
    ]
    config = json.loads((lib / "task_1" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    base = MLP(64, 6, [32])  # other random weights: the saved base replaces them
    load_model(base, str(lib / "base" / "model.safetensors"))
    plain = peft.PeftModel.from_pretrained(base, str(lib / "task_1")).eval()
    x = tiny_stream.tasks[1].test.tensors["x"][:16]
    with torch.no_grad():
        ours = r.model.eval()(x, task=torch.ones(16, dtype=torch.long))
        assert torch.allclose(plain(x), ours, atol=1e-6)


def test_bad_target_module_is_one_line_before_training(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "stream: {dataset: digits, scenario: split, n_tasks: 2, classes: [0, 1, 2, 3]}\n"
        "model: {name: mlp, hidden: [32]}\n"
        "strategies: [{name: lora, target_modules: [q_proj]}]\n"
    )
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "target module 'q_proj' matches no layer" in err and "net.1" in err
    assert not out.exists()


def test_resume_rebuilds_the_adapters(tiny_stream, tmp_path, crash_and_resume):
    out = crash_and_resume(
        tiny_stream, lambda: [LoRA(rank=4)], CFG.train, tmp_path / "run", _mlp, seed=0
    )
    assert out.resumed.matrix == out.full.matrix
    assert out.strategies[0].adapters_ == ["task_0", "task_1", "task_2"]
    assert torch.equal(out.strategies[0].prototypes_, out.full_strategies[0].prototypes_)


def test_text_inputs_reach_a_task_aware_model_with_their_task():
    from retain.objectives import CausalLM, Classification

    seen = []

    class Spy(torch.nn.Module):
        task_aware = True

        def forward(self, input_ids=None, attention_mask=None, labels=None, task="missing"):
            seen.append(task)
            return torch.zeros(len(input_ids), 2)

    batch = {"input_ids": torch.ones(3, 4, dtype=torch.long), "task": torch.tensor([0, 1, 1])}
    for objective in (Classification(2), CausalLM()):
        objective.forward(Spy(), batch, task_known=True)
        objective.forward(Spy(), batch, task_known=False)
    assert [t if t is None else t.tolist() for t in seen] == [[0, 1, 1], None] * 2
    plain = torch.nn.Module()
    plain.forward = lambda input_ids=None, attention_mask=None: input_ids  # no task argument
    assert Classification(2).forward(plain, batch) is batch["input_ids"]


def test_sequence_classifier_gets_a_head_per_adapter_and_loads_with_plain_peft(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    before = _base_copy(model)
    g = torch.Generator().manual_seed(0)
    tasks = []
    for k in range(2):  # two vocabularies: pooled base features tell the domains apart
        ids = torch.randint(20 * k, 20 * k + 20, (24, 6), generator=g)
        data = TensorData(input_ids=ids, attention_mask=torch.ones_like(ids), y=(ids[:, 0] % 2))
        tasks.append(Task(f"d{k}", data, data[torch.arange(12)], classes=(0, 1)))
    stream = Stream(tuple(tasks), setting="domain_il", n_outputs=2)
    cfg = RunConfig(train=TrainConfig(epochs=2, batch_size=8, optimizer="adam", lr=0.01))
    r = run(model, stream, [LoRA(rank=2)], cfg, out_dir=tmp_path / "r")
    pm = r.model.peft_model
    assert {"query", "value"} == set(pm.peft_config["task_0"].target_modules)
    after = {
        k.removeprefix("base_model.model.")
        .replace(".base_layer.", ".")
        .replace(".original_module.", "."): v
        for k, v in base_parameters(pm).items()
    }
    assert all(torch.equal(after[k], before[k]) for k in after) and after.keys() <= before.keys()
    routing = r.record.strategy_stats[-1]["lora"]["routing_accuracy"]
    assert len(routing) == 2 and sum(routing) / 2 > 0.6  # a random encoder: above chance
    # The saved base (trained from scratch here) and one adapter, with plain transformers + PEFT.
    lib = tmp_path / "r" / "adapters"
    assert not (tmp_path / "r" / "model").exists()  # the unchanged base is not written again
    base = transformers.BertForSequenceClassification.from_pretrained(str(lib / "base"))
    plain = peft.PeftModel.from_pretrained(base, str(lib / "task_1")).eval()
    ids = tasks[1].test.tensors["input_ids"]
    with torch.no_grad():
        task = torch.ones(len(ids), dtype=torch.long)
        ours = r.model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids), task=task)
        assert torch.allclose(plain(input_ids=ids).logits, ours.logits, atol=1e-5)


def test_target_modules_resolve_per_model(tiny_causal_lm, monkeypatch):
    from retain.errors import ConfigError, Unsupported
    from retain.models import SmallCNN
    from retain.utils.adapters import resolve_targets

    mlp = MLP(8, 2, [16, 16])
    assert resolve_targets(mlp, "auto") == ["net.1", "net.3", "net.5"]  # output layer included
    assert resolve_targets(mlp, "all-linear") == ["net.1", "net.3", "net.5"]
    assert resolve_targets(mlp, ["net.3"]) == ["net.3"]
    assert resolve_targets(SmallCNN((1, 8, 8), 2, [4]), "auto") == ["features.0", "head"]
    assert resolve_targets(tiny_causal_lm, "auto") == ["q_proj", "v_proj"]
    assert resolve_targets(tiny_causal_lm, ["k_proj", "down_proj"]) == ["k_proj", "down_proj"]
    with pytest.raises(Unsupported, match="target module 'qproj' matches no layer"):
        resolve_targets(tiny_causal_lm, ["q_proj", "qproj"])
    from retain.utils.adapters import lora_config

    assert lora_config(mlp, ["net.1"], 2, 4.0, 0.0).modules_to_save is None
    assert lora_config(mlp, ["net.1"], 2, 4.0, 0.0, head_per_adapter=True).modules_to_save == [
        "net.5"
    ]
    assert lora_config(tiny_causal_lm, "all-linear", 2, 4.0, 0.0).task_type == "CAUSAL_LM"
    monkeypatch.setitem(__import__("sys").modules, "peft", None)  # peft not installed
    with pytest.raises(ConfigError, match=r'need peft: pip install -e "\.\[hf\]"'):
        LoRA().check_model(mlp)
