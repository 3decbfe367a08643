"""PEFT plumbing shared by the adapter strategies (``lora``, and others that train LoRA adapters).

peft is the ``hf`` extra: it is imported inside these functions, never at module import, and a
run that needs it without it gets one line naming the install command. Everything here works on
the MLPs and CNNs retain trains and on transformers models:

- :func:`resolve_targets`: which modules get an adapter (``auto``, ``all-linear``, or names);
  a name that matches nothing is refused before training.
- :func:`wrap` / :func:`add_adapter` / :func:`train_only`: a PEFT model with named adapters, the
  base frozen; one base model in memory whatever the number of adapters.
- :func:`save_library`: the adapters in PEFT's own format, one folder per adapter, loadable with
  ``PeftModel.from_pretrained(base, folder)`` without retain.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retain.errors import ConfigError, Unsupported

if TYPE_CHECKING:
    from torch import nn

INSTALL = 'pip install -e ".[hf]"'


def peft_module(what: str = "LoRA adapters") -> Any:
    """The ``peft`` package, or one line saying that ``what`` needs it and how to install it."""
    try:
        import peft
    except ImportError:
        raise ConfigError(f"{what} need peft: {INSTALL}") from None
    return peft


def is_peft(model: nn.Module) -> bool:
    """Whether ``model`` is a ``PeftModel`` (already carries adapters)."""
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


def lora_layers(model: nn.Module) -> list[tuple[str, Any]]:
    """``(module name, LoraLayer)`` for every layer that carries LoRA adapters; each has
    ``lora_A[name].weight`` (``[r, in_features]``) and ``lora_B[name].weight`` (``[out, r]``)."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def safe_name(task: str, index: int, taken: list[str]) -> str:
    """An adapter name for task ``task`` (the ``index``-th): the task's name where it can be a
    module key and a folder name, else ``task<index>``."""
    from torch import nn as _nn

    name = re.sub(r"[^A-Za-z0-9_-]", "_", task)
    # PEFT finds an adapter's weights by name: one inside "lora_" (e.g. "a") confuses it, and
    # "default" would be saved at the top of the library instead of in its own folder.
    reserved = name in taken or name in "lora_" or name == "default"
    if not name or reserved or hasattr(_nn.ModuleDict(), name):
        name = f"task{index}"
    return name


def is_transformers(model: nn.Module) -> bool:
    """A transformers ``PreTrainedModel`` (told without importing transformers)."""
    return hasattr(model, "config") and callable(getattr(model, "save_pretrained", None))


def _adaptable(model: nn.Module) -> dict[str, nn.Module]:
    """Every module LoRA can adapt (Linear, Conv1d/2d, Embedding, GPT-2's Conv1D), by name."""
    from torch import nn as _nn

    kinds = (_nn.Linear, _nn.Conv1d, _nn.Conv2d, _nn.Embedding)
    return {
        name: m
        for name, m in model.named_modules()
        if name and (isinstance(m, kinds) or type(m).__name__ == "Conv1D")
    }


def output_layer(model: nn.Module) -> str | None:
    """The name of a plain model's output layer: its last Linear (in registration order),
    also once PEFT has wrapped it (the wrapper holds the Linear as ``base_layer``)."""
    from torch import nn as _nn

    inner = ("lora_", "base_layer", "original_module", "modules_to_save")
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(getattr(m, "base_layer", m), _nn.Linear)
        and not any(part in n.split(".")[-2:] or part in n for part in inner)
    ]
    return names[-1] if names else None


def resolve_targets(model: nn.Module, targets: str | list[str], who: str = "lora") -> Any:
    """What LoRA adapts in ``model``: a ``target_modules`` value for ``peft.LoraConfig``.

    ``auto``: for a transformers model, peft's defaults for its architecture (``q_proj``,
    ``v_proj`` for Llama; ``query``, ``value`` for BERT), the choice of the LoRA paper; for a
    plain model (retain's MLP or CNN), every Linear and Conv2d layer, the output layer included:
    in class-incremental learning the head must learn classes the base never saw, and its frozen
    rows for those classes are untrained, so a head without an adapter could not learn them.
    ``all-linear``: every Linear layer (for a transformers model, peft's ``all-linear``, which
    leaves out the output layer). A list: module names or name suffixes (``net.1``, ``q_proj``);
    each must match a module LoRA can adapt.

    Raises:
        Unsupported: one line, when a name matches nothing or ``auto`` knows no defaults for
            the architecture.
    """
    from torch import nn as _nn

    adaptable = _adaptable(model)
    hf = is_transformers(model)
    if targets == "auto":
        if hf:
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

            kind = getattr(model.config, "model_type", None)
            if kind not in defaults:
                raise Unsupported(
                    f"strategy '{who}': peft has no default target modules for model type "
                    f"'{kind}'; set target_modules to all-linear or a list of module names"
                )
            return sorted(defaults[kind])
        kinds = (_nn.Linear, _nn.Conv2d)
        found = [n for n, m in adaptable.items() if isinstance(m, kinds)]
    elif targets == "all-linear":
        if hf:
            return "all-linear"
        found = [n for n, m in adaptable.items() if isinstance(m, _nn.Linear)]
    else:
        names = [targets] if isinstance(targets, str) else list(targets)
        for t in names:
            if not any(n == t or n.endswith("." + t) for n in adaptable):
                some = ", ".join(list(adaptable)[:6]) or "none"
                raise Unsupported(
                    f"strategy '{who}': target module '{t}' matches no layer of "
                    f"{type(model).__name__} that LoRA can adapt (some are: {some}); name "
                    "existing modules, or use target_modules=auto"
                )
        return names
    if not found:
        raise Unsupported(
            f"strategy '{who}': {type(model).__name__} has no Linear or Conv2d layer to adapt"
        )
    return found


def lora_config(
    model: nn.Module,
    targets: Any,
    rank: int,
    alpha: float,
    dropout: float,
    head_per_adapter: bool | None = None,
) -> Any:
    """A ``peft.LoraConfig`` for ``model``. A transformers sequence classifier gets its
    classification head copied into every adapter (peft's ``modules_to_save``), since a
    pretrained encoder comes with an untrained head that LoRA alone would leave random; the
    base's head itself stays untouched. ``head_per_adapter`` overrides that choice."""
    peft = peft_module()
    task_type = None
    if is_transformers(model):
        arch = type(model).__name__
        if arch.endswith("ForSequenceClassification"):
            task_type = peft.TaskType.SEQ_CLS
        elif arch.endswith("ForCausalLM"):
            task_type = peft.TaskType.CAUSAL_LM
    modules_to_save = None
    if head_per_adapter is False and task_type == peft.TaskType.SEQ_CLS:
        task_type = None  # peft adds the head to modules_to_save for SEQ_CLS by itself
    elif head_per_adapter and task_type != peft.TaskType.SEQ_CLS:
        head = output_layer(model)
        modules_to_save = [head] if head else None
    return peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=modules_to_save,
        task_type=task_type,
    )


def wrap(model: nn.Module, config: Any, name: str) -> nn.Module:
    """``model`` wrapped in a ``peft.PeftModel`` with one adapter, ``name``; the base frozen.

    The base's own tensors stay in place (LoRA layers hold a reference to them), so wrapping
    copies nothing; the base's weights are never written by training, only the adapters'."""
    peft = peft_module()
    if isinstance(model, peft.PeftModel):
        raise Unsupported("the model already has PEFT adapters; give the base model")
    return peft.get_peft_model(model, config, adapter_name=name)


def add_adapter(peft_model: nn.Module, config: Any, name: str) -> None:
    """A new adapter ``name`` beside the existing ones (a no-op if it exists)."""
    if name not in peft_model.peft_config:
        peft_model.add_adapter(name, config)


def train_only(peft_model: nn.Module, name: str) -> None:
    """Make ``name`` the active adapter and the only trainable parameters (the base and every
    other adapter frozen, so they get no gradient and no optimizer state)."""
    peft_model.set_adapter(name)
    marker = f".{name}."
    for pname, p in peft_model.named_parameters():
        p.requires_grad_(marker in pname + ".")


def adapter_parameters(peft_model: nn.Module, name: str) -> int:
    """How many parameters adapter ``name`` adds (its LoRA matrices and copied heads)."""
    marker = f".{name}."
    return sum(p.numel() for n, p in peft_model.named_parameters() if marker in n + ".")


def base_parameters(peft_model: nn.Module) -> dict[str, Any]:
    """The base model's tensors by their PEFT names (for checking that they never change)."""
    names = set(peft_model.peft_config)
    return {
        n: p
        for n, p in peft_model.named_parameters()
        if not any(f".{a}." in n + "." for a in names) and "lora_" not in n
    }


def save_library(model: nn.Module, folder: str | Path) -> bool:
    """Save the adapters of ``model`` (a model with a ``peft_model`` attribute, or a
    ``PeftModel``) in PEFT's format: ``folder/<adapter>/adapter_config.json`` and
    ``adapter_model.safetensors`` per adapter. Each loads without retain:
    ``PeftModel.from_pretrained(base, folder / "task_1")``. A base that cannot be loaded from
    elsewhere (a model trained from scratch: no ``config._name_or_path``) is written once to
    ``folder/base`` (``save_pretrained`` for transformers, ``model.safetensors`` otherwise); it
    never changes, so it is not written again. Written beside ``folder`` and swapped in, so an
    interrupted save leaves the previous library. False for a model without adapters
    (peft is not imported for it).
    """
    peft_model = getattr(model, "peft_model", None)
    if peft_model is None and hasattr(model, "peft_config") and hasattr(model, "base_model"):
        peft_model = model
    if peft_model is None:
        return False
    names = list(peft_model.peft_config)
    if "default" in names:  # peft writes an adapter called "default" at the top level
        raise ValueError("name adapters other than 'default' to keep one folder per adapter")
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    peft_model.save_pretrained(str(tmp), selected_adapters=names, safe_serialization=True)
    base = folder / "base"
    if base.is_dir():
        os.replace(base, tmp / "base")
    elif not getattr(getattr(peft_model.get_base_model(), "config", None), "_name_or_path", ""):
        _save_base(peft_model, tmp / "base")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return True


def _save_base(peft_model: nn.Module, folder: Path) -> None:
    """The base's tensors under their own names (``model.safetensors``), with the config of a
    transformers model, so ``from_pretrained(folder)`` (or ``load_model``) rebuilds it."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    base = peft_model.get_base_model()
    # Cloned: tied tensors (a language model's embeddings and output layer) share storage, which
    # safetensors refuses.
    state = {
        k.replace(".base_layer.", ".").replace(".original_module.", "."): v.detach().cpu().clone()
        for k, v in base.state_dict().items()
        if "lora_" not in k and ".modules_to_save." not in k
    }
    if is_transformers(base):
        base.config.save_pretrained(str(folder))
    save_file(state, str(folder / "model.safetensors"))
