"""Reading YAML for configurations: ``yaml.SafeLoader`` plus two refusals.

- **Duplicate keys** (YAML says they are an error; PyYAML keeps the last one silently) raise, naming the key and
  both lines.
- **Alias expansion** is bounded: anchors and aliases (``&a`` / ``*a``) are allowed, but a document whose
  expanded tree would have more than :data:`MAX_NODES` nodes (an "alias bomb": a few hundred bytes that expand
  into billions of values) or that refers to itself is refused before anything is built from it.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

__all__ = ["MAX_NODES", "YAMLLimitError", "safe_load"]

MAX_NODES = 100_000  # a full configuration has a few hundred


class YAMLLimitError(yaml.YAMLError):
    """A document refused before construction: too large once aliases are expanded, or self-referential."""

    def __init__(self, problem: str, mark: yaml.Mark | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _ConfigLoader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overrides: not duplicates
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first_line.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                if seen is not None:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"duplicate key {key!r} (first at line {seen + 1}); keep one",
                        key_node.start_mark,
                    )
                first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: Node) -> int:
    """Nodes of the tree with every alias expanded (memoised per node, so linear in the document's size)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YAMLLimitError(
                "the document refers to itself through an alias; aliases must not nest", node.start_mark
            )
        active.add(key)
        if isinstance(node, SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        active.discard(key)
        sizes[key] = min(total, MAX_NODES + 1)  # saturate: the exact count of a bomb is astronomically large
        return sizes[key]

    return size(root)


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)`` with duplicate keys refused and alias expansion bounded (:data:`MAX_NODES`).

    Raises:
        yaml.YAMLError: invalid YAML, a duplicate key, or a document over the limits (``problem_mark`` says where).
    """
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            n = _expanded_size(node)
        except RecursionError:
            raise YAMLLimitError("the document is nested too deeply", node.start_mark) from None
        if n > MAX_NODES:
            raise YAMLLimitError(
                f"the document expands to more than {MAX_NODES} values through its aliases (&anchor / *alias); "
                "write the values out or use fewer aliases",
                node.start_mark,
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()
