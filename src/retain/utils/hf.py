"""Hugging Face specifics: building causal LMs and turning text into training tensors.

transformers is an optional dependency (``pip install "retain[hf]"``); it is imported here only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from retain.errors import ConfigError, DataError

if TYPE_CHECKING:
    from torch import nn

    from retain.config import ModelConfig
    from retain.data.stream import TensorData


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
            raise ConfigError(f"cannot load model.pretrained '{cfg.pretrained}': {str(e).splitlines()[0]}") from None
    conf = dict(cfg.hf_config or {})
    model_type = conf.pop("model_type", "llama")
    try:
        config = tf.AutoConfig.for_model(model_type, **conf)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.hf_config is not a valid '{model_type}' config: {e}") from None
    return tf.AutoModelForCausalLM.from_config(config)


def lm_data(token_ids: list[list[int]], block_size: int, pad_id: int = 0) -> TensorData:
    """Pack token sequences into fixed-size blocks with ``labels`` (padding labelled -100)."""
    from retain.data.stream import TensorData

    flat = [t for seq in token_ids for t in seq]
    if not flat:
        raise DataError("no tokens to train on")
    n = max(1, -(-len(flat) // block_size))
    ids = torch.full((n, block_size), pad_id, dtype=torch.long)
    mask = torch.zeros((n, block_size), dtype=torch.long)
    for i in range(n):
        chunk = flat[i * block_size : (i + 1) * block_size]
        ids[i, : len(chunk)] = torch.tensor(chunk)
        mask[i, : len(chunk)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return TensorData(input_ids=ids, attention_mask=mask, labels=labels)
