"""Reading YAML config files strictly: a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys without a word, so a config that sets ``lr`` twice (one
edit forgotten above another) trains with whichever comes last; the user must be told instead.
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping holds the same key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if repeated:
                where = f"lines {seen[key]} and {line}" if seen[key] != line else f"line {line}"
                raise DuplicateKeyError(
                    None,
                    None,
                    f"key '{key}' is given twice ({where}); keep one",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_unique(text: str) -> Any:
    """``yaml.safe_load`` that refuses a key repeated within one mapping."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)
