"""Helpers on YAML nodes (yaml.compose's tree, which keeps positions) for the walker."""

from __future__ import annotations

from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .show import quote, show_value

NULL_TAG = "tag:yaml.org,2002:null"
MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_DEPTH = 64
MAX_NODES = 100_000

Entries = dict[str, tuple[Node, Node]]  # key name -> (key node, value node)


class TooComplex(Exception):
    pass


class _Bad:
    def __repr__(self) -> str:
        return "<bad>"


BAD: Any = _Bad()


class BadScalar(Exception):
    def __init__(self, node: ScalarNode):
        super().__init__(node.value)
        self.node = node


def bad_scalar_message(node: ScalarNode) -> str:
    """For scalars YAML itself cannot construct, which only happens with explicit tags."""
    std = "tag:yaml.org,2002:"
    if node.tag.startswith(std):
        return f"expected a valid !!{node.tag[len(std):]} value, got {quote(node.value)}"
    return f"expected an untagged value, got one tagged {quote(node.tag)}"


def direct_value(node: Node, name: str) -> Node | None:
    """The value node of key ``name`` written directly in a mapping node (not merged)."""
    if isinstance(node, MappingNode):
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.tag != MERGE_TAG and k.value == name:
                return v
    return None


def hashable_key(v: Any) -> Any:
    """A dict key standing for a validated value (unique_key values may be lists or dicts)."""
    try:
        hash(v)
        return (type(v) is bool, v)  # keep true apart from 1
    except TypeError:
        return repr(v)


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


def node_kind(node: Node, loader: Walker) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    try:
        return show_value(loader.construct(node))
    except BadScalar:
        return quote(node.value)  # the caller's "expected ..." is the useful part
