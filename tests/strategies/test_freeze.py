"""Freeze: which parameters train, layer-wise learning rates, validation, and its effect on
permuted digits (a plasticity/forgetting trade-off that depends on which layers train)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from retain.api import run
from retain.config import RunConfig, TrainConfig
from retain.models import MLP
from retain.strategies.freeze import Freeze, layer_depths
from retain.train.optim import build_optimizer, default_groups


def _ctx(task_index: int) -> SimpleNamespace:
    return SimpleNamespace(task_index=task_index, unwrap=lambda m: m)


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP(64, 4, [32, 16])  # layers net.1, net.3, net.5 (the output)


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_layer_depths_count_from_the_output():
    depths = layer_depths(_mlp())
    assert depths == {
        "net.1.weight": 2,
        "net.1.bias": 2,
        "net.3.weight": 1,
        "net.3.bias": 1,
        "net.5.weight": 0,
        "net.5.bias": 0,
    }


def test_freezing_starts_at_from_task_and_combines_last_k_with_patterns():
    model = _mlp()
    s = Freeze()
    s.setup(model, _ctx(0))
    s.before_task(model, _ctx(0))
    assert _trainable(model) == set(layer_depths(model))  # the first task trains everything
    s.before_task(model, _ctx(1))
    assert _trainable(model) == {"net.5.weight", "net.5.bias"}
    model = _mlp()  # Freeze never unfreezes: each setting on a fresh model
    Freeze(last_k=2, trainable=["net.1.w*"]).before_task(model, _ctx(1))
    assert _trainable(model) == {
        "net.1.weight",
        "net.3.weight",
        "net.3.bias",
        "net.5.weight",
        "net.5.bias",
    }
    model = _mlp()
    Freeze(last_k=0, trainable=["net.1.*"], from_task=0).before_task(model, _ctx(0))
    assert _trainable(model) == {"net.1.weight", "net.1.bias"}


def test_freeze_never_unfreezes():
    # Regression: before_task set requires_grad=True on every chosen parameter, so Freeze with
    # lr_decay alone (last_k=None) unfroze what the user or progressive had frozen.
    for spec in ({"last_k": None, "lr_decay": 0.5}, {"last_k": 1}):
        model = _mlp()
        model.net[5].bias.requires_grad_(False)  # frozen by someone else, in a chosen layer
        Freeze(**spec).before_task(model, _ctx(1))
        assert "net.5.bias" not in _trainable(model)


def test_lr_decay_gives_one_group_per_depth():
    model = _mlp()
    s = Freeze(last_k=None, lr_decay=0.5)
    s.before_task(model, _ctx(1))
    groups = default_groups(model)
    assert s.param_groups(groups, model, _ctx(0)) is groups  # before from_task: untouched
    out = s.param_groups(groups, model, _ctx(1))
    assert [(g["names"], g["lr_scale"]) for g in out] == [
        (["net.5.weight", "net.5.bias"], 1.0),
        (["net.3.weight", "net.3.bias"], 0.5),
        (["net.1.weight", "net.1.bias"], 0.25),
    ]
    opt = build_optimizer(out, TrainConfig(lr=0.1, optimizer="sgd"))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.05, 0.025])
    # An incoming scale (another strategy's) is kept and multiplied.
    scaled = [{**groups[0], "lr_scale": 2.0}]
    assert [g["lr_scale"] for g in s.param_groups(scaled, model, _ctx(1))] == [2.0, 1.0, 0.5]
    # Frozen layers are not in the optimizer at all.
    s2 = Freeze(last_k=2, lr_decay=0.5)
    s2.before_task(model, _ctx(1))
    out = s2.param_groups(default_groups(model), model, _ctx(1))
    assert [(g["names"][0], g["lr_scale"]) for g in out] == [
        ("net.5.weight", 1.0),
        ("net.3.weight", 0.5),
    ]


def test_validation():
    with pytest.raises(ValueError, match="matches no parameter.*net.1.weight"):
        Freeze(trainable=["head.*"]).setup(_mlp(), _ctx(0))
    with pytest.raises(ValueError, match="freeze every parameter"):
        Freeze(last_k=0)
    with pytest.raises(ValueError, match="last_k=0"):
        Freeze(last_k=None, trainable=["net.1.*"])
    with pytest.raises(ValueError, match="lr_decay"):
        Freeze(lr_decay=0.0)
    with pytest.raises(ValueError, match="from_task"):
        Freeze(from_task=-1)
    assert repr(Freeze(trainable=["net.1.*"])) == "Freeze(trainable=['net.1.*'])"


def test_frozen_layers_never_change(tiny_stream):
    model = MLP(64, 6, [16])
    start = copy.deepcopy(model.state_dict())
    r = run(model, tiny_stream, [Freeze(from_task=0)], RunConfig(train=TrainConfig(epochs=1)))
    end = r.model.state_dict()
    assert torch.equal(end["net.1.weight"], start["net.1.weight"])
    assert not torch.equal(end["net.3.weight"], start["net.3.weight"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec, forgetting_drop, max_avg_loss",
    [
        # Measured on seed 0 (finetune: avg 0.522, forgetting 0.360, plasticity 0.810):
        # train only the input layer (a permutation is an input-level change): 0.505 / 0.241.
        ({"last_k": 0, "trainable": ["net.1.*"]}, 0.08, 0.05),
        # train all layers, the input layer at 0.09x the head's rate: 0.484 / 0.261.
        ({"last_k": None, "lr_decay": 0.3}, 0.06, 0.08),
    ],
    ids=["input_layer_only", "lr_decay"],
)
def test_reduces_forgetting_on_permuted_digits(
    spec, forgetting_drop, max_avg_loss, digits_permuted, run_strategies, finetune_permuted
):
    m = run_strategies(digits_permuted, [Freeze(**spec)]).metrics
    assert m.forgetting < finetune_permuted.metrics.forgetting - forgetting_drop
    assert m.avg_accuracy > finetune_permuted.metrics.avg_accuracy - max_avg_loss


@pytest.mark.slow
def test_defaults_trade_plasticity_for_stability(
    digits_permuted, run_strategies, finetune_permuted
):
    # Measured: only the output layer trains after task 1, so a new permutation cannot be
    # learned well: forgetting 0.286 (finetune 0.360) but plasticity 0.438 (finetune 0.810).
    m = run_strategies(digits_permuted, ["freeze"]).metrics
    assert m.forgetting < finetune_permuted.metrics.forgetting - 0.03
    assert m.plasticity < finetune_permuted.metrics.plasticity - 0.2


# ---------------------------------------------------------------- transformers


def _tied_llama(layers: int = 3):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=32,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def test_last_k_counts_transformer_blocks_with_tied_embeddings():
    """With tied input and output embeddings the output layer's weight is listed under the input
    embeddings' name; counting modules from the output then chose a name no parameter has, and
    ``last_k: 1`` froze every parameter. On a transformer ``last_k`` counts blocks."""
    model = _tied_llama()
    Freeze(last_k=1).before_task(model, _ctx(1))
    chosen = _trainable(model)
    assert chosen, "last_k=1 froze every parameter"
    assert {n for n in chosen if n.startswith("model.layers.")} == {
        n for n, _ in model.named_parameters() if n.startswith("model.layers.2.")
    }
    assert "model.norm.weight" in chosen  # after the blocks: trained with the last one
    assert "model.embed_tokens.weight" not in chosen  # the tied embeddings stay frozen


def test_last_k_two_blocks_and_depths_per_block():
    model = _tied_llama()
    depths = layer_depths(model)
    assert depths["model.layers.2.mlp.up_proj.weight"] == 0
    assert depths["model.layers.0.self_attn.q_proj.weight"] == 2
    assert depths["model.embed_tokens.weight"] == 3
    Freeze(last_k=2).before_task(model, _ctx(1))
    blocks = {n.split(".")[2] for n in _trainable(model) if n.startswith("model.layers.")}
    assert blocks == {"1", "2"}


def test_patterns_with_layer_ranges_and_embeddings():
    model = _tied_llama(layers=4)
    Freeze(last_k=0, trainable=["model.layers.1-2", "embeddings"]).before_task(model, _ctx(1))
    chosen = _trainable(model)
    blocks = {n.split(".")[2] for n in chosen if n.startswith("model.layers.")}
    assert blocks == {"1", "2"}
    assert "model.embed_tokens.weight" in chosen
    assert "model.norm.weight" not in chosen


def test_a_range_that_matches_no_block_is_refused():
    from retain.errors import Unsupported

    with pytest.raises(Unsupported, match="model.layers.7-9"):
        Freeze(last_k=0, trainable=["model.layers.7-9"]).chosen(_tied_llama())


def test_freeze_that_would_start_after_the_last_task_is_refused():
    """On a one-task stream (a pretrained model trained on new data) the default from_task=1
    froze nothing, silently: the run was finetuning under another name."""
    import torch

    from retain.data.stream import Stream, Task, TensorData
    from retain.errors import Unsupported
    from retain.strategies.freeze import Freeze

    data = TensorData(x=torch.randn(8, 3), y=torch.randint(0, 2, (8,)))
    stream = Stream((Task("only", data, data),), n_outputs=2)
    with pytest.raises(Unsupported, match="set from_task=0"):
        Freeze().check(stream)
    Freeze(from_task=0).check(stream)
