"""The PEFT plumbing O-LoRA needs: which layers get adapters, adding an adapter, the adapter
library on disk.

A private stand-in for the shared adapter helpers (``retain.utils.adapters``, written alongside
the ``lora`` strategy); the functions keep to the same responsibilities so ``olora`` can switch
to the shared module by changing its imports:

* :func:`require_peft`: peft (the ``hf`` extra) or one line saying how to install it.
* :func:`resolve_targets`: ``auto`` / ``all-linear`` / a list of names -> the module names
  handed to ``LoraConfig.target_modules``; a name that matches no Linear layer is refused.
* :func:`add_adapter`: wrap a model in a ``PeftModel`` on the first call, add an adapter after.
* :func:`lora_layers`: the LoRA-wrapped layers, for penalties on their ``A`` and ``B`` matrices.
* :func:`save_adapters`: every adapter in PEFT's own format, one folder each, loadable with
  plain ``PeftModel.from_pretrained(base, folder)``.

peft is imported inside the functions only: it is an optional dependency.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from retain.errors import ConfigError, Unsupported

if TYPE_CHECKING:
    from peft import PeftModel


def require_peft(who: str) -> Any:
    """The ``peft`` module, or a :class:`ConfigError` naming the install command."""
    try:
        import peft
    except ImportError:
        raise ConfigError(
            f"strategy '{who}' needs peft (LoRA adapters): pip install -e \".[hf]\""
        ) from None
    return peft


def is_peft(model: nn.Module) -> bool:
    """Whether ``model`` is a ``PeftModel`` (already carries adapters)."""
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


def _adaptable(m: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2) is a Linear with its weight transposed; PEFT adapts both.
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def _matches(name: str, target: str) -> bool:
    """PEFT's rule for a name in ``target_modules``: the full module name or its dotted tail."""
    return name == target or name.endswith("." + target)


def _is_transformers(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers") and hasattr(model, "config")


def resolve_targets(model: nn.Module, targets: str | list[str], who: str) -> list[str]:
    """The module names to adapt (``LoraConfig.target_modules``).

    ``auto``: for a transformers model, PEFT's default for its architecture (Llama: ``q_proj``,
    ``v_proj``; BERT: ``query``, ``value``), plus a sequence classifier's head (modules named
    ``classifier`` or ``score``), which is freshly initialised and would otherwise stay random;
    for any other model (retain's MLPs and CNNs) every ``nn.Linear``. ``all-linear``: every
    Linear layer except a language model's output layer (as PEFT's ``all-linear``). A list:
    module names or their dotted tails (``q_proj`` matches ``model.layers.0.self_attn.q_proj``);
    each must match at least one Linear layer, or :class:`Unsupported` is raised with one line.
    """
    linears = [n for n, m in model.named_modules() if n and _adaptable(m)]
    if not linears:
        raise Unsupported(
            f"strategy '{who}': the model has no Linear layer to put LoRA adapters on"
        )
    hf = _is_transformers(model)
    out_layer = model.get_output_embeddings() if hf else None
    head = {n for n, m in model.named_modules() if out_layer is not None and m is out_layer}
    if targets == "all-linear":
        return [n for n in linears if n not in head]
    if targets == "auto":
        if not hf:
            return linears
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

        names = list(defaults.get(getattr(model.config, "model_type", ""), []))
        names = [t for t in names if any(_matches(n, t) for n in linears)]
        if out_layer is None:  # a classifier: its new head must learn too
            names += [n for n in linears if n.split(".")[0] in ("classifier", "score")]
        return names or [n for n in linears if n not in head]
    modules = dict(model.named_modules())
    for t in targets:
        hits = [n for n in modules if n and _matches(n, t)]
        if not hits:
            tails = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise Unsupported(
                f"strategy '{who}': target module '{t}' matches no module of the model; its "
                f"Linear layers are named {', '.join(tails[:8])}"
                + (", ..." if len(tails) > 8 else "")
                + "; name some of them, or use target_modules=auto"
            )
        if not any(_adaptable(modules[n]) for n in hits):
            raise Unsupported(
                f"strategy '{who}': target module '{t}' is a {type(modules[hits[0]]).__name__}, "
                "not a Linear layer; LoRA adapters go on Linear layers"
            )
    return list(targets)


def add_adapter(model: nn.Module, name: str, config: Any) -> PeftModel:
    """``model`` with a new LoRA adapter ``name`` (a ``peft.LoraConfig``): wrapped in a
    ``PeftModel`` if it is not one yet. The base's weights are untouched."""
    from peft import get_peft_model

    if is_peft(model):
        model.add_adapter(name, config)
        return model
    return get_peft_model(model, config, adapter_name=name)


def lora_layers(model: nn.Module) -> list[tuple[str, Any]]:
    """``(module name, LoraLayer)`` for every layer that carries LoRA adapters; each has
    ``lora_A[name].weight`` (``[r, in_features]``) and ``lora_B[name].weight`` (``[out, r]``)."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def safe_name(task: str, index: int, taken: list[str]) -> str:
    """An adapter name for task ``task`` (the ``index``-th): the task's name where it can be a
    module key and a folder name, else ``task<index>``."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", task)
    # PEFT finds an adapter's weights by name: one inside "lora_" (e.g. "a") confuses it.
    if not name or name in taken or name in "lora_" or hasattr(nn.ModuleDict(), name):
        name = f"task{index}"
    return name


def save_adapters(model: nn.Module, folder: Path) -> list[Path]:
    """Every adapter of the ``PeftModel`` ``model`` in PEFT's format, in ``folder/<adapter>/``
    (``adapter_config.json`` and ``adapter_model.safetensors``); returns the folders."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out = []
    for name, config in model.peft_config.items():
        where = Path(folder) / name
        where.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(model, adapter_name=name)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state.items()},
            str(where / "adapter_model.safetensors"),
            metadata={"format": "pt"},
        )
        inference = config.inference_mode
        config.inference_mode = True  # as PEFT saves it: loaded for inference unless asked
        try:
            config.save_pretrained(str(where))
        finally:
            config.inference_mode = inference
        out.append(where)
    return out
