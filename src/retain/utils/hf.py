"""Hugging Face specifics: building causal language models.

transformers is an optional dependency (``pip install "retain[hf]"``); it is imported here only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from retain.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from retain.config import ModelConfig


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "model.name 'hf' needs transformers: pip install \"retain[hf]\""
        ) from None
    return transformers


def build_causal_lm(cfg: ModelConfig) -> nn.Module:
    """A causal LM from a local folder (``pretrained``) or a fresh one from ``hf_config``."""
    tf = _transformers()
    if cfg.pretrained:
        try:
            return tf.AutoModelForCausalLM.from_pretrained(cfg.pretrained, dtype=torch.float32)
        except OSError as e:
            raise ConfigError(
                f"cannot load model.pretrained '{cfg.pretrained}': {str(e).splitlines()[0]}"
            ) from None
    conf = dict(cfg.hf_config or {})
    model_type = conf.pop("model_type", "llama")
    try:
        config = tf.AutoConfig.for_model(model_type, **conf)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.hf_config is not a valid '{model_type}' config: {e}") from None
    return tf.AutoModelForCausalLM.from_config(config)


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The tokenizer that comes with the model: from ``tokenizer`` (else ``pretrained``), with
    ``gguf_file`` when that folder holds it."""
    tf = _transformers()
    where = cfg.tokenizer or cfg.pretrained
    if not where:
        raise ConfigError(
            "text data needs the model's tokenizer: set model.pretrained to a local model folder, "
            "or model.tokenizer to a folder with tokenizer files"
        )
    key = "model.tokenizer" if cfg.tokenizer else "model.pretrained"
    gguf = cfg.gguf_file and (where == cfg.pretrained or (Path(where) / cfg.gguf_file).is_file())
    kwargs = {"gguf_file": cfg.gguf_file} if gguf else {}
    try:
        return tf.AutoTokenizer.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot load the tokenizer of {key} '{where}': {str(e).splitlines()[0]}"
        ) from None


def model_limits(cfg: ModelConfig) -> tuple[int | None, int | None]:
    """The longest sequence the model takes (``max_position_embeddings``) and its vocabulary
    size, read from its config without loading weights; ``None`` where they cannot be told."""
    tf = _transformers()
    try:
        if cfg.pretrained:
            kwargs = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
            config = tf.AutoConfig.from_pretrained(cfg.pretrained, **kwargs)
        else:
            conf = dict(cfg.hf_config or {})
            config = tf.AutoConfig.for_model(conf.pop("model_type", "llama"), **conf)
    except (OSError, ValueError, TypeError):
        return None, None  # the model's own loading says what is wrong, in one line
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    vocab = getattr(config, "vocab_size", None)
    return (int(n) if n else None), (int(vocab) if vocab else None)
