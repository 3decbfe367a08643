"""Hugging Face specifics: building causal language models.

transformers is an optional dependency (``pip install "retain[hf]"``); it is imported here only.
"""

from __future__ import annotations

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
    """The tokenizer that comes with the model: from ``pretrained`` (and its ``gguf_file``)."""
    tf = _transformers()
    if not cfg.pretrained:
        raise ConfigError(
            "text data needs the model's tokenizer: set model.pretrained to a local model folder"
        )
    kwargs = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
    try:
        return tf.AutoTokenizer.from_pretrained(cfg.pretrained, **kwargs)
    except OSError as e:
        raise ConfigError(
            f"cannot load the tokenizer of model.pretrained '{cfg.pretrained}': "
            f"{str(e).splitlines()[0]}"
        ) from None
