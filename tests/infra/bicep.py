"""A small reader of Bicep templates for the infra tests: tree-sitter-bicep's syntax tree as Python values.

Literals become Python values (strings, numbers, booleans, lists, dicts); a name that refers to a variable of
the same file becomes that variable's value, and so does a string that only interpolates such variables.
Everything else (calls, parameters, other interpolations) stays an ``Expr`` holding its source text: the tests
compare those as text. No Bicep compiler runs here (none can be installed), so this is the offline stand-in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import tree_sitter
import tree_sitter_bicep

INFRA = Path(__file__).resolve().parents[2] / "infra"
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KINDS = ("parameter", "variable", "output", "resource", "module")


@cache
def _parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))


@dataclass(frozen=True)
class Expr:
    """An expression left unevaluated: its source text."""

    text: str


@dataclass(frozen=True)
class Loop:
    """``[for item in iterable: body]``: the body once, with what it iterates over."""

    item: str
    iterable: Any
    body: Any


@dataclass(frozen=True)
class Declaration:
    kind: str  # parameter | variable | resource | module | output
    name: str
    target: str | None  # a resource's type@version, a module's path
    value: Any  # a parameter's default, a variable's value, a resource's or module's body (a Loop for loops)
    line: int


class Template:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.source = path.read_bytes()
        self.tree = _parser().parse(self.source)
        self._raw: dict[str, tree_sitter.Node] = {}  # each variable's value node
        found: list[tuple[str, str, tree_sitter.Node | None, tree_sitter.Node | None, int]] = []
        for node in self.tree.root_node.named_children:
            kind = node.type.removesuffix("_declaration")
            if not node.type.endswith("_declaration") or kind not in _KINDS:
                continue
            name = _first(node, "identifier")
            line = node.start_point[0] + 1
            if kind in ("resource", "module"):  # name, 'type@version' or path, body
                found.append((kind, name, _first_node(node, "string"), node.named_children[-1], line))
            elif kind == "variable":  # name, value
                self._raw[name] = node.named_children[-1]
                found.append((kind, name, None, node.named_children[-1], line))
            else:  # name, type, then the default or value if any
                value = node.named_children[-1] if len(node.named_children) > 2 else None
                found.append((kind, name, None, value, line))
        # Converted once every variable is known (a variable may be used above its declaration).
        self.declarations = [
            Declaration(kind, name, self._convert(target), self._convert(value), line)
            for kind, name, target, value, line in found
        ]

    def syntax_errors(self) -> list[str]:
        """``line N: ...`` for every ERROR or MISSING node, in source order."""
        found: list[str] = []

        def walk(node: tree_sitter.Node) -> None:
            if node.is_error or node.is_missing:
                what = f"missing {node.type}" if node.is_missing else "cannot parse"
                text = node.text.decode(errors="replace").splitlines()[0][:60] if node.text else ""
                found.append(f"{self.path.name} line {node.start_point[0] + 1}: {what} near {text!r}")
            for child in node.children:
                walk(child)

        walk(self.tree.root_node)
        return found

    def variables(self) -> dict[str, Any]:
        return {d.name: d.value for d in self.declarations if d.kind == "variable"}

    def parameters(self) -> dict[str, Any]:
        """Each parameter's default (None when it has none)."""
        return {d.name: d.value for d in self.declarations if d.kind == "parameter"}

    def resources(self, type_prefix: str) -> list[Declaration]:
        """Resources whose type (before ``@version``) is ``type_prefix``."""
        return [
            d
            for d in self.declarations
            if d.kind == "resource" and isinstance(d.target, str) and d.target.split("@")[0] == type_prefix
        ]

    def modules(self, path: str) -> list[Declaration]:
        return [d for d in self.declarations if d.kind == "module" and d.target == path]

    def guids_behind(self, value: Any) -> set[str]:
        """Every GUID in ``value`` or in the variables it names (how role ids reach a roleDefinitionId)."""
        text = _flatten(value)
        found = set(_GUID.findall(text))
        variables = self.variables()
        for name in set(_NAME.findall(text)) & set(variables):
            found |= set(_GUID.findall(_flatten(variables[name])))
        return found

    def _convert(self, node: tree_sitter.Node | None) -> Any:
        return None if node is None else self._value(node, set())

    def _value(self, node: tree_sitter.Node, resolving: set[str]) -> Any:
        kind = node.type
        if kind == "string":
            return self._string(node, resolving)
        if kind == "number":
            return int(_text(node))
        if kind == "boolean":
            return _text(node) == "true"
        if kind == "null":
            return None
        if kind == "array":
            return [self._value(child, resolving) for child in node.named_children if child.type != "comment"]
        if kind == "object":
            result: dict[str, Any] = {}
            for prop in node.named_children:
                if prop.type != "object_property":
                    continue
                key_node, value_node = prop.named_children[0], prop.named_children[-1]
                key = self._string(key_node, resolving) if key_node.type == "string" else _text(key_node)
                result[str(key)] = self._value(value_node, resolving)
            return result
        if kind == "for_statement":
            item, iterable, body = node.named_children[0], node.named_children[1], node.named_children[-1]
            return Loop(_text(item), self._value(iterable, resolving), self._value(body, resolving))
        if kind == "identifier":
            name = _text(node)
            if name in self._raw and name not in resolving:
                return self._value(self._raw[name], resolving | {name})
            return Expr(name)
        if kind == "parenthesized_expression" and len(node.named_children) == 1:
            return self._value(node.named_children[0], resolving)
        return Expr(_text(node))

    def _string(self, node: tree_sitter.Node, resolving: set[str]) -> Any:
        parts: list[str] = []
        for child in node.named_children:
            if child.type == "string_content":
                parts.append(_text(child))
            elif child.type == "escape_sequence":
                parts.append(_text(child)[1:])
            elif child.type == "interpolation" and len(child.named_children) == 1:
                inner = self._value(child.named_children[0], resolving)
                if not isinstance(inner, str):
                    return Expr(_text(node))
                parts.append(inner)
            else:
                return Expr(_text(node))
        return "".join(parts)


def templates() -> list[Template]:
    return [Template(path) for path in sorted(INFRA.rglob("*.bicep"))]


def _text(node: tree_sitter.Node) -> str:
    return node.text.decode() if node.text else ""


def _first_node(node: tree_sitter.Node, kind: str) -> tree_sitter.Node:
    return next(child for child in node.named_children if child.type == kind)


def _first(node: tree_sitter.Node, kind: str) -> str:
    return _text(_first_node(node, kind))


def _flatten(value: Any) -> str:
    if isinstance(value, Expr):
        return value.text
    if isinstance(value, Loop):
        return " ".join((_flatten(value.iterable), _flatten(value.body)))
    if isinstance(value, dict):
        return " ".join(f"{key} {_flatten(item)}" for key, item in value.items())
    if isinstance(value, list):
        return " ".join(_flatten(item) for item in value)
    return str(value)
