"""Compile a query AST into a LanceDB (DataFusion SQL) WHERE predicate.

Every value reaches the SQL through :func:`literal`, which quotes strings with the store's own
:func:`~imageindex.stores.lancedb.sql.sql_string`; column names come from the field registry,
which only accepts plain identifiers. Nothing the user typed is pasted in any other way.

NULL handling: SQL comparisons with NULL are unknown, and ``NOT unknown`` drops the row, so a
plain ``NOT width > 100`` would lose failed files that have no width. Under a NOT, each condition
on a nullable column is compiled with an ``IS NOT NULL`` guard, which makes NOT mean "everything
the condition does not match" - the same as OpenSearch's ``must_not``. Outside a NOT the guard is
left out: there an unknown already counts as no match, and the bare form keeps the scalar
indexes usable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime

from imageindex.errors import ConfigError
from imageindex.query.ast import And, Compare, Has, Node, Not, Or, Prefix, QueryError, Value
from imageindex.query.fields import FieldSpec, FieldType, day_bounds, lookup
from imageindex.query.parser import iso_utc, validate
from imageindex.stores.lancedb.sql import sql_string

_LIKE_ESCAPE = "\\"
_SQL_OPS = {":": "=", "=": "=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def literal(value: object) -> str:
    """The SQL literal of a query value: the one function through which values enter SQL."""
    if isinstance(value, bool):
        raise QueryError("a query value cannot be a bool")
    if isinstance(value, str):
        try:
            return sql_string(value)
        except ConfigError:
            raise QueryError(
                f"the value {value!r} contains a control character (tab, newline...), which "
                "LanceDB filters cannot match; remove it from the query"
            ) from None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QueryError(f"{value} is not a finite number")
        return repr(value)
    if isinstance(value, datetime):
        return "TIMESTAMP " + literal(iso_utc(value))
    if isinstance(value, tuple):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    raise QueryError(f"a query value cannot be a {type(value).__name__} in a LanceDB filter")


def like_escape(text: str) -> str:
    """``text`` with LIKE's wildcards (and the escape character) matching themselves."""
    return (
        text.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2)
        .replace("%", _LIKE_ESCAPE + "%")
        .replace("_", _LIKE_ESCAPE + "_")
    )


def _like(expr: str, pattern: str) -> str:
    return f"{expr} LIKE {literal(pattern)} ESCAPE {literal(_LIKE_ESCAPE)}"


def _wrapped(sql: str) -> bool:
    """Whether ``sql`` is one parenthesized group (quotes skipped: values may hold parens)."""
    if not (sql.startswith("(") and sql.endswith(")")):
        return False
    level = 0
    in_string = False
    for i, c in enumerate(sql):
        if c == "'":
            in_string = not in_string
        elif not in_string:
            level += c == "("
            level -= c == ")"
            if level == 0 and i < len(sql) - 1:
                return False
    return True


def _group(sql: str) -> str:
    return sql if _wrapped(sql) else f"({sql})"


def _any(preds: list[str]) -> str:
    return preds[0] if len(preds) == 1 else "(" + " OR ".join(preds) + ")"


def _all(preds: list[str]) -> str:
    return preds[0] if len(preds) == 1 else "(" + " AND ".join(preds) + ")"


class _Compiler:
    def __init__(self, fields: Mapping[str, FieldSpec] | None):
        self.fields = fields

    def node(self, node: Node, safe: bool) -> str:
        if isinstance(node, And):
            return " AND ".join(_group(self.node(i, safe)) for i in node.items)
        if isinstance(node, Or):
            return " OR ".join(_group(self.node(i, safe)) for i in node.items)
        if isinstance(node, Not):
            return self.negate(node.item)
        if isinstance(node, Has):
            return self.has(lookup(self.fields, node.field), negate=False)
        if node.op == "!=":
            return self.negate(Compare(node.field, "=", node.value))
        return self.compare(lookup(self.fields, node.field), node.op, node.value, safe)

    def negate(self, node: Node) -> str:
        if isinstance(node, Has):
            return self.has(lookup(self.fields, node.field), negate=True)
        return "NOT " + _group(self.node(node, safe=True))

    def has(self, spec: FieldSpec, *, negate: bool) -> str:
        preds = []
        for col in spec.columns:
            if spec.type == FieldType.TAGS:
                # An empty tag list is no tags, the same as NULL (OpenSearch's exists agrees).
                preds.append(
                    f"({col} IS NULL OR array_length({col}) = 0)"
                    if negate
                    else f"({col} IS NOT NULL AND array_length({col}) > 0)"
                )
            else:
                preds.append(f"{col} IS NULL" if negate else f"{col} IS NOT NULL")
        return _all(preds) if negate else _any(preds)

    def compare(self, spec: FieldSpec, op: str, value: Value, safe: bool) -> str:
        preds = []
        for col in spec.columns:
            pred = self.column(spec, col, op, value)
            if safe and spec.nullable:
                pred = f"({col} IS NOT NULL AND {pred})"
            preds.append(pred)
        return _any(preds)

    def column(self, spec: FieldSpec, col: str, op: str, value: Value) -> str:
        t = spec.type
        if isinstance(value, tuple):
            if t == FieldType.TAGS:
                return f"array_has_any({col}, {literal(value)})"
            plain = all(
                isinstance(v, int | float | datetime) or (isinstance(v, str) and op == "=")
                for v in value
            )
            if plain:
                return f"{col} IN (" + ", ".join(literal(v) for v in value) + ")"
            return _any([self.column(spec, col, op, v) for v in value])
        if t == FieldType.TAGS:
            return f"array_has({col}, {literal(value)})"
        if t in (FieldType.TEXT, FieldType.KEYWORD):
            if op == "=":
                if isinstance(value, Prefix):
                    return _like(col, like_escape(value.text) + "%")
                return f"{col} = {literal(value)}"
            # ':' is case-insensitive: contains, or starts with for a prefix.
            if isinstance(value, Prefix):
                return _like(f"lower({col})", like_escape(value.text.lower()) + "%")
            return _like(f"lower({col})", "%" + like_escape(str(value).lower()) + "%")
        if isinstance(value, date) and not isinstance(value, datetime):
            return self.day(col, op, value)
        return f"{col} {_SQL_OPS[op]} {literal(value)}"

    def day(self, col: str, op: str, day: date) -> str:
        # A date is the whole UTC day: <= includes all of it, > starts after it.
        start, end = day_bounds(day)
        lo, hi = literal(start), (literal(end) if end is not None else None)
        if op in (":", "="):
            return f"({col} >= {lo} AND {col} < {hi})" if hi else f"{col} >= {lo}"
        if op == "<":
            return f"{col} < {lo}"
        if op == ">=":
            return f"{col} >= {lo}"
        if op == "<=":
            return f"{col} < {hi}" if hi else f"{col} IS NOT NULL"
        return f"{col} >= {hi}" if hi else "false"


def compile(node: Node, *, fields: Mapping[str, FieldSpec] | None = None) -> str:
    """The LanceDB WHERE predicate of ``node`` (validated first: a QueryError for bad input)."""
    node = validate(node, fields)
    return _Compiler(fields).node(node, safe=False)


compile_lancedb = compile

__all__ = ["compile", "compile_lancedb", "like_escape", "literal"]
