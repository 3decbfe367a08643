"""The model folders ``retain merge`` reads and the folder it writes.

Three kinds of input: a retain run directory (its saved ``model/`` folder when there is one, else
its latest checkpoint's ``model.safetensors``), a saved transformers model (``config.json`` and
``*.safetensors``) and a PEFT LoRA adapter (``adapter_config.json`` and
``adapter_model.safetensors``). An adapter is read as the full model it makes of the base:
``W + scale * B @ A`` on each adapted weight (``scale = lora_alpha / r``, or ``/ sqrt(r)`` with
rsLoRA), every other tensor the base's; so its task vector is its LoRA delta.

Shapes are compared from the safetensors headers (``safe_open`` keys and ``get_slice``), before
any tensor is read, so models of different architectures or vocabularies are refused at once.
Tensors are then read one name at a time: merging holds the output and one tensor per input.
"""

from __future__ import annotations

import json
import math
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from retain.errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
ADAPTER_PREFIX = "base_model.model."


@dataclass
class Source:
    """One input folder: what it is and the safetensors files that hold its tensors."""

    path: Path
    kind: str  # "run", "hf", "checkpoint" (a run without model/), "adapter"
    files: list[Path]
    folder: Path  # where config.json and the tokenizer are (hf), or the adapter folder
    shapes: dict[str, list[int]] = field(default_factory=dict)
    adapter: dict[str, Any] = field(default_factory=dict)  # adapter_config.json

    @property
    def describe(self) -> str:
        return {
            "run": "run directory (model/)",
            "checkpoint": "run directory (latest checkpoint)",
            "hf": "transformers model",
            "adapter": "LoRA adapter",
        }[self.kind]


def find_source(path: str | Path) -> Source:
    """What ``path`` is; one line (``ConfigError``) when it is missing or none of the kinds."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"'{p}' is a file; give the folder of a run, a model or an adapter")
    if not p.is_dir():
        raise ConfigError(
            f"model folder '{p}' does not exist; give a run directory, a saved "
            "transformers model or a PEFT adapter folder"
        )
    if (p / "adapter_config.json").is_file():
        weights = p / "adapter_model.safetensors"
        if not weights.is_file():
            raise ConfigError(
                f"adapter '{p}' has no adapter_model.safetensors (only safetensors "
                "adapters can be merged: save it with safe_serialization=True)"
            )
        return Source(
            p, "adapter", [weights], p, adapter=json.loads((p / "adapter_config.json").read_text())
        )
    if (p / "model" / "config.json").is_file():
        return _hf(p / "model", "run", p)
    if (p / "config.json").is_file():
        return _hf(p, "hf", p)
    latest = p / "checkpoints" / "LATEST.json"
    if latest.is_file():
        d = p / "checkpoints" / json.loads(latest.read_text())["dir"]
        return Source(p, "checkpoint", [d / "model.safetensors"], p)
    raise ConfigError(
        f"'{p}' is neither a retain run directory, a saved transformers model (config.json and "
        "*.safetensors) nor a PEFT adapter (adapter_config.json)"
    )


def _hf(folder: Path, kind: str, path: Path) -> Source:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(
            f"'{folder}' has a config.json but no *.safetensors weights; save it "
            "with save_pretrained(..., safe_serialization=True)"
        )
    return Source(path, kind, files, folder)


def read_shapes(src: Source) -> None:
    """Fill ``src.shapes`` from the safetensors headers (no tensor is read)."""
    from safetensors import safe_open

    for f in src.files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():  # noqa: SIM118 (safe_open is not iterable)
                src.shapes[k] = list(h.get_slice(k).get_shape())


def _adapter_targets(src: Source) -> dict[str, tuple[str, str]]:
    """Base tensor name -> (lora_A name, lora_B name) of a LoRA adapter's file."""
    cfg = src.adapter
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora"):
        what = "DoRA" if cfg.get("use_dora") else cfg.get("peft_type")
        raise ConfigError(f"adapter '{src.path}' is {what}; only plain LoRA adapters can be merged")
    out: dict[str, tuple[str, str]] = {}
    for k in src.shapes:
        if ".lora_A." not in k:
            if ".lora_B." not in k:
                raise ConfigError(
                    f"adapter '{src.path}' holds '{k}', which is not a LoRA A or B matrix "
                    "(modules_to_save, embeddings); only LoRA deltas of linear layers can be merged"
                )
            continue
        module = k.split(".lora_A.")[0]
        name = module.removeprefix(ADAPTER_PREFIX) + ".weight"
        out[name] = (k, k.replace(".lora_A.", ".lora_B."))
    return out


def check_compatible(base: Source, other: Source) -> None:
    """One line naming the first tensor whose name or shape differs from the base's."""
    if other.kind == "adapter":
        for name, (a, b) in _adapter_targets(other).items():
            if b not in other.shapes:
                raise ConfigError(f"adapter '{other.path}' has {a} but no {b}")
            shape = [other.shapes[b][0], other.shapes[a][1]]
            if other.adapter.get("fan_in_fan_out"):
                shape = shape[::-1]
            if base.shapes.get(name) != shape:
                _mismatch(base, other, name, base.shapes.get(name), shape)
        return
    for name in base.shapes:
        if other.shapes.get(name) != base.shapes[name]:
            _mismatch(base, other, name, base.shapes[name], other.shapes.get(name))
    for name in other.shapes:
        if name not in base.shapes:
            _mismatch(base, other, name, None, other.shapes[name])


def _mismatch(base: Source, other: Source, name: str, a: Any, b: Any) -> None:
    def shape(s: Any) -> str:
        return "absent" if s is None else f"[{', '.join(map(str, s))}]"

    raise ConfigError(
        f"cannot merge '{other.path}' with base '{base.path}': tensor {name} is {shape(a)} in "
        f"the base and {shape(b)} in '{other.path}' (different architectures or vocabularies)"
    )


class Reader:
    """Tensors of the inputs by base name, one at a time (adapters as ``W + scale B A``)."""

    def __init__(self, base: Source, sources: list[Source]) -> None:
        from safetensors import safe_open

        self._stack = ExitStack()
        self._where: list[dict[str, Any]] = []
        for src in [base, *sources]:
            where = {}
            for f in src.files:
                h = self._stack.enter_context(safe_open(str(f), framework="pt"))
                for k in h.keys():  # noqa: SIM118 (safe_open is not iterable)
                    where[k] = h
            self._where.append(where)
        self.base, self.sources = base, sources
        self._targets = [_adapter_targets(s) if s.kind == "adapter" else {} for s in sources]

    def close(self) -> None:
        self._stack.close()

    def base_tensor(self, name: str) -> torch.Tensor:
        return self._where[0][name].get_tensor(name)

    def tensor(self, i: int, name: str, base: torch.Tensor) -> torch.Tensor:
        src = self.sources[i]
        if src.kind != "adapter":
            return self._where[i + 1][name].get_tensor(name)
        if name not in self._targets[i]:
            return base
        a_name, b_name = self._targets[i][name]
        a = self._where[i + 1][a_name].get_tensor(a_name).float()
        b = self._where[i + 1][b_name].get_tensor(b_name).float()
        r, alpha = a.shape[0], src.adapter.get("lora_alpha", a.shape[0])
        scale = alpha / math.sqrt(r) if src.adapter.get("use_rslora") else alpha / r
        delta = scale * (b @ a)
        if src.adapter.get("fan_in_fan_out"):
            delta = delta.T
        return (base.float() + delta).to(base.dtype)


def copy_companions(base: Source, out: Path) -> list[str]:
    """Copy every file of the base's folder that is not a weight file (config.json, tokenizer
    files, generation config, chat template) byte for byte into ``out``; their names."""
    if base.kind == "checkpoint":
        return []
    copied = []
    for f in sorted(base.folder.iterdir()):
        if not f.is_file() or f.name.endswith(WEIGHT_SUFFIXES) or f.name.endswith(".index.json"):
            continue
        shutil.copyfile(f, out / f.name)
        copied.append(f.name)
    return copied
