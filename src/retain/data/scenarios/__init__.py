"""Scenario builders: cut any labelled source into a stream of tasks.

==============  ==========================================================================
split           class groups per task; class-IL (one head over all classes), task-IL (other
                tasks' logits masked at train and test) or domain-IL (labels mapped to their
                position within the task's group)
permuted        every task sees all the data under its own fixed pixel permutation
rotated         every task sees all the data rotated by its own fixed angle
iid             the data cut into N random chunks of one distribution (e.g. two halves)
prior_shift     the same classes in shifting proportions per task, e.g. 80/10/10 then 10/90/0
by_column       one task per value (or group of values) of a column: domain, time period
from_sources    one task per source, e.g. one file per month
text_stream     language modelling or text classification: one task per named text source (or
                per value of a column)
==============  ==========================================================================

Every builder takes anything :func:`retain.data.sources.as_source` accepts and a ``seed``; the same
seed gives the same tasks.
"""

from retain.data.scenarios.classes import iid, prior_shift, split
from retain.data.scenarios.common import select_classes, standardize
from retain.data.scenarios.tables import by_column, from_sources
from retain.data.scenarios.text import text_stream
from retain.data.scenarios.transforms import permuted, rotate_images, rotated

__all__ = [
    "by_column",
    "from_sources",
    "iid",
    "permuted",
    "prior_shift",
    "rotate_images",
    "rotated",
    "select_classes",
    "split",
    "standardize",
    "text_stream",
]
