"""Reference models and the builder that sizes them from a stream.

Any ``torch.nn.Module`` works through the Python API; these are what a config file can name.
A model that sets ``task_aware = True`` is called as ``model(x, task=task_ids)`` (multi-head,
progressive and per-task-adapter models use this to pick the right part for each sample).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from retain.errors import ConfigError

if TYPE_CHECKING:
    from retain.config import ModelConfig
    from retain.data.stream import Stream

_ACT = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """A feed-forward network: flatten, then ``Linear -> activation [-> dropout]`` per hidden width.

    Examples:
        >>> MLP(784, 10, [100, 100])(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        hidden: list[int] | tuple[int, ...] = (100, 100),
        activation: str = "relu",
        dropout: float = 0.0,
        init: str = "default",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = n_inputs
        for h in hidden:
            layers += [nn.Linear(width, h), _ACT[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)
        if init == "xavier":
            xavier_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """``[conv3x3 -> activation -> maxpool2]`` per channel count, then a linear head.

    Examples:
        >>> SmallCNN((1, 28, 28), 10)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_outputs: int,
        channels: list[int] | tuple[int, ...] = (32, 64),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(
                f"model 'cnn' needs image inputs of shape (channels, height, width), got {input_shape}; "
                "use model.name=mlp for flat features"
            )
        c, h, w = input_shape
        blocks: list[nn.Module] = []
        for out in channels:
            blocks += [nn.Conv2d(c, out, 3, padding=1), _ACT[activation]()]
            if min(h, w) >= 2:
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.head = nn.Linear(c * h * w, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def xavier_init(model: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every Linear layer (mammoth's ``xavier``)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_model(cfg: ModelConfig, stream: Stream) -> nn.Module:
    """The model named by ``cfg``, with its input and output sizes taken from ``stream``."""
    if cfg.name == "hf":
        from retain.utils.hf import build_hf_model

        return build_hf_model(cfg, stream.objective, stream.n_outputs)
    if "input_ids" in stream.tasks[0].train:
        raise ConfigError(
            f"the stream holds token ids (text), which model '{cfg.name}' cannot read; set "
            "model.name=hf with model.pretrained (a local transformers folder) or model.hf_config"
        )
    n_out = stream.n_outputs or 1
    shape = stream.input_shape
    if cfg.name == "mlp":
        return MLP(math.prod(shape), n_out, cfg.hidden, cfg.activation, cfg.dropout, cfg.init)
    if cfg.name == "cnn":
        model = SmallCNN(shape, n_out, cfg.channels, cfg.activation)
        if cfg.init == "xavier":
            xavier_init(model)
        return model
    raise ConfigError(f"unknown model '{cfg.name}'")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
