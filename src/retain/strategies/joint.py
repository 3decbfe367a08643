"""Joint training: one fresh model trained once on all tasks together, the reference."""

from __future__ import annotations

from retain.strategies import register
from retain.strategies.base import Strategy


@register("joint")
class Joint(Strategy):
    """Train a fresh model once on the union of all tasks: the reference upper bound.

    It is what every sequential method is compared with (``gap_to_joint``). The union is shuffled
    together, and trained for ``train.epochs`` epochs (or ``train.steps`` steps) over all of it.
    Its score matrix has two rows, before and after training, so BWT, FWT and forgetting do not
    apply. It takes no hyperparameters and cannot be combined with other strategies.

    It changes no hook: choosing it changes what the run trains on (``retain.run_state.Plan``: one
    task holding every task's data instead of the tasks in turn).
    """
