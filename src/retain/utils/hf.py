"""Hugging Face specifics: loading pretrained models and tokenizers from local files, saving them.

transformers is an optional dependency (``pip install "retain[hf]"``); it is imported here only.
Nothing here reaches the network: every load passes ``local_files_only``, so a model id that is
not a local folder (nor in the Hugging Face cache) fails at once with one line, instead of
waiting on a download that cannot happen on an offline machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from retain.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from retain.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "model.name 'hf' needs transformers: pip install \"retain[hf]\""
        ) from None
    return transformers


def head_for(cfg: ModelConfig, objective: str) -> str:
    """``causal_lm`` or ``classification``: ``model.head``, or the stream's objective (``auto``)."""
    head = cfg.head if cfg.head != "auto" else objective
    if head not in ("causal_lm", "classification"):
        raise ConfigError(
            f"model.name 'hf' trains a causal LM or a classifier, and the stream's objective is "
            f"{objective}; use a text stream (objective causal_lm) or a classification stream"
        )
    if cfg.head != "auto" and head != objective:
        raise ConfigError(
            f"model.head '{head}' does not fit the stream's objective '{objective}'; "
            f"set model.head=auto or model.head={objective}"
        )
    return head


def source(cfg: ModelConfig) -> tuple[str, dict[str, Any]]:
    """The folder to load from and the keyword arguments every ``from_pretrained`` call gets
    (``gguf_file``, ``local_files_only``); one-line errors for missing files."""
    folder, kwargs = cfg.pretrained, {"local_files_only": True}
    if cfg.gguf_file:
        gguf = Path(cfg.gguf_file).expanduser()
        if folder and not gguf.is_absolute():
            gguf = Path(folder).expanduser() / gguf
        if not gguf.is_file():
            raise ConfigError(
                f"model.gguf_file '{gguf}' does not exist; give the path of a .gguf file (or its "
                "name inside model.pretrained)"
            )
        folder, kwargs["gguf_file"] = str(gguf.parent), gguf.name
    if not folder:
        raise ConfigError("set model.pretrained to a local model folder (or model.gguf_file)")
    local = Path(folder).expanduser()
    if local.is_dir():
        return str(local), kwargs
    return _cached(folder), kwargs


def _cached(repo_id: str) -> str:
    """The folder of ``repo_id`` in the local Hugging Face cache. Asked for an id, transformers
    looks for optional files (a PEFT adapter) on the hub even with ``local_files_only``, and
    retries for half a minute on a machine without network; a folder is read locally only."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001  not a valid repo id either: a path that does not exist
        hit = None
    if isinstance(hit, str):
        return str(Path(hit).parent)
    raise ConfigError(
        f"model.pretrained '{repo_id}' is not a local folder, and retain never downloads: "
        "download the model once (e.g. huggingface-cli download, or save_pretrained) and pass "
        "its folder"
    )


def _not_local(folder: str, error: Exception) -> ConfigError:
    return ConfigError(
        f"cannot load model.pretrained '{folder}': {str(error).strip().splitlines()[0]}"
    )


def build_hf_model(cfg: ModelConfig, objective: str, n_outputs: int | None = None) -> nn.Module:
    """A causal LM or a sequence classifier with ``n_outputs`` classes (``head_for`` the
    stream's ``objective``), pretrained from local files (``model.pretrained``,
    ``model.gguf_file``) or fresh from ``model.hf_config``, in ``model.dtype``."""
    tf = _transformers()
    head = head_for(cfg, objective)
    auto = tf.AutoModelForCausalLM if head == "causal_lm" else tf.AutoModelForSequenceClassification
    extra: dict[str, Any] = {}
    if head == "classification":
        if not n_outputs:
            raise ConfigError("a classification head needs the stream's number of classes")
        extra["num_labels"] = n_outputs
    dtype = DTYPES[cfg.dtype]
    if cfg.pretrained or cfg.gguf_file:
        folder, kwargs = source(cfg)
        try:
            model = auto.from_pretrained(folder, dtype=dtype, **kwargs, **extra)
        except (OSError, ValueError) as e:
            raise _not_local(folder, e) from None
        return plain(model) if "gguf_file" in kwargs else model
    conf = dict(cfg.hf_config or {})
    model_type = conf.pop("model_type", "llama")
    try:
        config = tf.AutoConfig.for_model(model_type, **conf, **extra)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.hf_config is not a valid '{model_type}' config: {e}") from None
    return auto.from_config(config).to(dtype)


def build_causal_lm(cfg: ModelConfig) -> nn.Module:
    """A causal LM from local files or ``hf_config`` (see :func:`build_hf_model`)."""
    return build_hf_model(cfg, "causal_lm")


def plain(model: nn.Module) -> nn.Module:
    """The weights of a de-quantised GGUF model in a plain model of the same class.

    transformers marks a model loaded from GGUF as quantised, and ``save_pretrained`` refuses it,
    although its weights are ordinary tensors after de-quantisation. The new model takes the
    tensors themselves (``assign``), so the loaded weights are not copied.
    """
    config = model.config
    if "quantization_config" in config.__dict__:
        del config.quantization_config
    out = type(model)(config)  # its random weights are freed as the loaded ones are assigned
    out.load_state_dict(model.state_dict(), assign=True)
    out.tie_weights()
    out.generation_config = model.generation_config
    return out.eval()


# Tokenizers read so far, by where they were read from: a run reads its tokenizer to tokenise the
# data, to extend the vocabulary and to save it beside the model, and reading one from a GGUF
# file takes about 14 s each time. Callers get a copy, which they may change (add tokens).
_TOKENIZERS: dict[tuple[str | None, ...], Any] = {}


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The tokenizer that comes with the model: from ``tokenizer`` (a folder of tokenizer files),
    else from where the model is loaded (``pretrained``, its ``gguf_file``). A fresh copy each
    call, read from disk once per process."""
    import copy

    key = (cfg.tokenizer, cfg.pretrained, cfg.gguf_file)
    if key not in _TOKENIZERS:
        _TOKENIZERS.clear()  # one at a time: a comparison uses one model
        _TOKENIZERS[key] = _read_tokenizer(cfg)
    return copy.deepcopy(_TOKENIZERS[key])


def _read_tokenizer(cfg: ModelConfig) -> Any:
    tf = _transformers()
    if not (cfg.tokenizer or cfg.pretrained or cfg.gguf_file):
        raise ConfigError(
            "text data needs the model's tokenizer: set model.pretrained to a local model folder, "
            "or model.tokenizer to a folder with tokenizer files"
        )
    key = "model.tokenizer" if cfg.tokenizer else "model.pretrained"
    if cfg.tokenizer:
        folder, kwargs = str(Path(cfg.tokenizer).expanduser()), {"local_files_only": True}
        if cfg.gguf_file and (Path(folder) / cfg.gguf_file).is_file():
            kwargs["gguf_file"] = cfg.gguf_file
    else:
        folder, kwargs = source(cfg)
    try:
        return tf.AutoTokenizer.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot load the tokenizer of {key} '{folder}': {str(e).strip().splitlines()[0]}"
        ) from None


def model_limits(cfg: ModelConfig) -> tuple[int | None, int | None]:
    """The longest sequence the model takes (``max_position_embeddings``) and its vocabulary
    size, read from its config without loading weights; ``None`` where they cannot be told."""
    tf = _transformers()
    try:
        if cfg.pretrained or cfg.gguf_file:
            folder, kwargs = source(cfg)
            config = tf.AutoConfig.from_pretrained(folder, **kwargs)
        else:
            conf = dict(cfg.hf_config or {})
            config = tf.AutoConfig.for_model(conf.pop("model_type", "llama"), **conf)
    except (OSError, ValueError, TypeError, ConfigError):
        return None, None  # the model's own loading says what is wrong, in one line
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    vocab = getattr(config, "vocab_size", None)
    return (int(n) if n else None), (int(vocab) if vocab else None)


def save_model(model: nn.Module, folder: Path, tokenizer: Any = None) -> bool:
    """``save_pretrained`` (safetensors) plus the tokenizer into ``folder``, loadable by plain
    transformers (``AutoModelForCausalLM.from_pretrained(folder)``). False for a model that is
    not a transformers model (those are in the run's checkpoints)."""
    state = None
    if callable(getattr(model, "get_base_model", None)) and hasattr(model, "peft_config"):
        # A model with PEFT adapters: saved as its base with every active adapter added to
        # the weights, which plain transformers loads (the strategy that added the adapters
        # saves them on their own).
        state, model = merged_state_dict(model), model.get_base_model()
    if not callable(getattr(model, "save_pretrained", None)):
        return False
    if getattr(model, "hf_quantizer", None) is not None:
        model = plain(model)
    model.save_pretrained(folder, safe_serialization=True, state_dict=state)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return True


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of a ``PeftModel``'s base with its active LoRA adapters merged
    (``W + sum_a scale_a B_a A_a``) and the adapters' own entries left out, in the base model's
    own names. The model is not changed (unlike ``merge_and_unload``)."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    state = {}
    for k, v in base.state_dict().items():
        if ".lora_" not in k:
            state[k.replace(".base_layer.", ".")] = v
    with torch.no_grad():
        for name, layer in base.named_modules():
            if isinstance(layer, LoraLayer) and layer.active_adapters:
                w = state[f"{name}.weight"]
                delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters)
                state[f"{name}.weight"] = w + delta.to(w.dtype)
    return state


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in backward instead of storing them (transformers models)."""
    # transformers 5 renamed it (the old name still works, with a deprecation warning).
    new = getattr(model, "activation_checkpointing_enable", None)
    old = getattr(model, "gradient_checkpointing_enable", None)
    if not callable(new or old) or not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"train.gradient_checkpointing needs a transformers model that supports it; "
            f"{type(model).__name__} does not: set train.gradient_checkpointing=false"
        )
    kwargs = {"use_reentrant": False}  # the reentrant variant needs inputs that require grad
    if callable(new):
        new(activation_checkpointing_kwargs=kwargs)
    else:
        old(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "config"):
        model.config.use_cache = False  # caching past keys is pointless (and warned) with it
