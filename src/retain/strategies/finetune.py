"""Sequential fine-tuning: the baseline every method is measured against."""

from __future__ import annotations

from retain.strategies import register
from retain.strategies.base import Strategy


@register("finetune", reference_url="https://arxiv.org/abs/1312.6211")
class Finetune(Strategy):
    """Train on each task in turn with nothing to protect earlier tasks.

    It follows the gradient of the newest data only, so it shows how much an unprotected update
    forgets. It takes no hyperparameters: learning rate, epochs and optimizer policy are in
    ``train``. Reference: Goodfellow et al., "An Empirical Investigation of Catastrophic
    Forgetting in Gradient-Based Neural Networks" (2013).
    """
