"""Every registered strategy, with default hyperparameters, on a tiny real stream: the loss stays
finite, the same seed gives the same matrix, its state survives a checkpoint, it composes with
replay, and its repr shows only what differs from the defaults."""

from __future__ import annotations

import math

import pytest
import torch

from retain import strategies as registry
from retain.api import run
from retain.config import RunConfig, TrainConfig
from retain.data.scenarios import split
from retain.models import MLP
from retain.strategies.joint import Joint
from retain.utils.checkpoint import RunDir
from retain.utils.state import flatten

CFG = RunConfig(train=TrainConfig(epochs=1, batch_size=32, optimizer="sgd", lr=0.05), seed=0)
NAMES = registry.available()


@pytest.fixture(scope="module")
def stream(digits):
    return split(digits, n_tasks=2, classes=[0, 1, 2, 3])


def _model():
    torch.manual_seed(0)
    return MLP(64, 4, [32])


def _finite(rec):
    losses = [loss for task in rec.curves.loss for _, loss in task]
    return (
        losses
        and all(math.isfinite(v) for v in losses)
        and all(math.isfinite(v) for row in rec.matrix for v in row)
    )


@pytest.mark.parametrize("name", NAMES)
def test_contract(name, stream, tmp_path):
    cls = registry.get(name)
    a = run(_model(), stream, [cls()], CFG, out_dir=tmp_path / "a")
    b = run(_model(), stream, [cls()], CFG)
    assert _finite(a.record)
    assert a.matrix == b.matrix
    # State round-trips through the checkpoint (safetensors + JSON).
    ckpt = RunDir(tmp_path / "a").load_checkpoint()
    fresh = cls()
    fresh.load_state_dict(ckpt["strategies"][0])
    saved, restored = {}, {}
    strategy_a = a.record.strategies[0]
    assert strategy_a["name"] == name
    assert flatten(ckpt["strategies"][0], saved) == flatten(fresh.state_dict(), restored)
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    assert repr(cls()) == f"{cls.__name__}()"


@pytest.mark.parametrize("name", [n for n in NAMES if n != "replay"])
def test_composes_with_replay(name, stream):
    if "replay" not in NAMES:
        pytest.skip("replay is not registered yet")
    cls = registry.get(name)
    if issubclass(cls, Joint):
        with pytest.raises(Exception, match="cannot be combined"):
            registry.build_all([cls(), registry.get("replay")()])
        return
    r = run(_model(), stream, [cls(), registry.get("replay")()], CFG)
    assert _finite(r.record)


def test_registry_rejects_bad_names_and_duplicates():
    from retain.strategies.base import Strategy

    with pytest.raises(ValueError, match="lowercase"):
        registry.register("BadName")
    with pytest.raises(ValueError, match="already registered"):

        @registry.register("finetune")
        class Other(Strategy):
            pass


def test_unknown_hyperparameter_is_a_config_error():
    from retain.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown strategy 'finetuen'.*did you mean 'finetune'"):
        registry.build({"name": "finetuen"})
    with pytest.raises(ConfigError, match="unknown hyperparameter 'lr' for strategy 'finetune'"):
        registry.build({"name": "finetune", "lr": 0.1})


def test_registered_dataclass_subclasses_keep_the_short_repr():
    from dataclasses import dataclass

    from retain.strategies.base import Strategy

    @dataclass
    class Tmp(Strategy):
        lam: float = 1.0

    registry.register("tmp_repr_check")(Tmp)
    try:
        assert repr(Tmp()) == "Tmp()" and repr(Tmp(lam=2.0)) == "Tmp(lam=2.0)"
    finally:
        registry._REGISTRY.pop("tmp_repr_check")
