"""The query AST every query form is turned into, and the error every stage of the query language
raises.

Nodes are frozen (hashable, comparable) so a parsed query can be compared, cached and printed back
with :func:`imageindex.query.parser.to_text`. Field names in nodes are canonical names (never
aliases); values are already typed for their field (see :mod:`imageindex.query.fields`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime

from imageindex.errors import ConfigError

#: Comparison operators, in the order the docs list them.
OPS = (":", "=", "!=", "<", "<=", ">", ">=")
RANGE_OPS = frozenset({"<", "<=", ">", ">="})


class QueryError(ConfigError):
    """A query is invalid: bad syntax, unknown field, wrong value type, or over a limit.

    ``message`` says what is wrong and how to fix it; ``column`` (1-based, within ``line``) and
    ``position`` (0-based offset into the whole query) say where, when known. ``str()`` adds the
    offending query line with a caret under the column.
    """

    def __init__(
        self,
        message: str,
        *,
        query: str | None = None,
        position: int | None = None,
    ):
        self.message = message
        self.query = query
        self.position = position
        self.line: int | None = None
        self.column: int | None = None
        if query is not None and position is not None:
            position = max(0, min(position, len(query)))
            self.position = position
            self.line = query.count("\n", 0, position) + 1
            self.column = position - (query.rfind("\n", 0, position) + 1) + 1
        super().__init__(self._render())

    def at(self, query: str, position: int) -> QueryError:
        """The same error located at ``position`` of ``query`` (for errors raised without one)."""
        if self.position is not None:
            return self
        return QueryError(self.message, query=query, position=position)

    def _render(self) -> str:
        if self.query is None or self.position is None:
            return self.message
        start = self.query.rfind("\n", 0, self.position) + 1
        end = self.query.find("\n", self.position)
        line = self.query[start : end if end >= 0 else len(self.query)]
        col = self.position - start
        # A 4000-character line is useless on a terminal: show a window around the error.
        lo = max(0, col - 60)
        hi = min(len(line), col + 60)
        shown = ("..." if lo else "") + line[lo:hi] + ("..." if hi < len(line) else "")
        caret_at = col - lo + (3 if lo else 0)
        shown_safe = "".join(_display_char(c) for c in shown)
        pad = sum(_display_width(_display_char(c)) for c in shown[:caret_at])
        return f"{self.message}\n  {shown_safe}\n  {' ' * pad}^"


def _display_char(c: str) -> str:
    # Control characters and lone surrogates would garble (or fail to encode on) a terminal.
    cat = unicodedata.category(c)
    if c == "\t":
        return " "
    if cat in ("Cc", "Cs", "Co", "Cn"):
        return "\ufffd"
    return c


def _display_width(c: str) -> int:
    if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


@dataclass(frozen=True)
class Prefix:
    """A value that matches strings starting with ``text`` (written ``value*``)."""

    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Prefix text must be a str, not {type(self.text).__name__}")


#: One value: a string, number, date (a whole UTC day), aware UTC datetime, or prefix.
Scalar = str | int | float | date | datetime | Prefix
#: A value of a comparison; a tuple is a list (``[a, b]``): any of its elements.
Value = Scalar | tuple[Scalar, ...]


@dataclass(frozen=True)
class Compare:
    """``field op value``; ``op`` is one of :data:`OPS`."""

    field: str
    op: str
    value: Value

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise TypeError(f"unknown operator {self.op!r}; use one of {', '.join(OPS)}")
        if isinstance(self.value, list):
            object.__setattr__(self, "value", tuple(self.value))


@dataclass(frozen=True)
class Has:
    """``HAS field``: the field has a value (a non-empty list for tags)."""

    field: str


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class And:
    """All of ``items`` (two or more)."""

    items: tuple[Node, ...]

    def __post_init__(self) -> None:
        _check_items(self, "And")


@dataclass(frozen=True)
class Or:
    """Any of ``items`` (two or more)."""

    items: tuple[Node, ...]

    def __post_init__(self) -> None:
        _check_items(self, "Or")


Node = And | Or | Not | Compare | Has


def _check_items(node: And | Or, kind: str) -> None:
    items = tuple(node.items)
    # A one-item And would print as its item and parse back as something else.
    if len(items) < 2:
        raise TypeError(f"{kind} needs at least two items (got {len(items)}); use the item itself")
    object.__setattr__(node, "items", items)


def walk(node: Node) -> Iterator[Node]:
    """Every node of the tree, parents before children (iterative: safe on any depth)."""
    stack: list[Node] = [node]
    while stack:
        cur = stack.pop()
        yield cur
        if isinstance(cur, And | Or):
            stack.extend(reversed(cur.items))
        elif isinstance(cur, Not):
            stack.append(cur.item)


def depth(node: Node) -> int:
    """Levels of the tree (a single comparison is 1), computed without recursion."""
    best = 0
    stack: list[tuple[Node, int]] = [(node, 1)]
    while stack:
        cur, d = stack.pop()
        best = max(best, d)
        if isinstance(cur, And | Or):
            stack.extend((item, d + 1) for item in cur.items)
        elif isinstance(cur, Not):
            stack.append((cur.item, d + 1))
    return best


__all__ = [
    "OPS",
    "RANGE_OPS",
    "And",
    "Compare",
    "Has",
    "Node",
    "Not",
    "Or",
    "Prefix",
    "QueryError",
    "Scalar",
    "Value",
    "depth",
    "walk",
]
