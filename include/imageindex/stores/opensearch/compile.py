"""Compile a query AST into an OpenSearch query DSL clause (a dict for ``"query"`` or a k-NN
``"filter"``).

Index mapping this expects (the index template must follow it): ``tags_ai``, ``tags_user``,
``format``, ``mode``, ``dataset_id``, ``dataset_version``, ``status``, ``model``, ``uri``,
``key``, ``fingerprint`` and ``id`` as ``keyword``; ``file_name`` and ``error`` as ``text`` with a
``keyword`` subfield (``file_name.keyword``) without ``ignore_above`` (longer values would be
unmatchable); ``width``/``height`` ``integer``, ``size`` ``long``; ``mtime``/``indexed_at``
``date``.

Results match the LanceDB compiler's: ``:`` on a string field is a case-insensitive substring
match on the keyword (sub)field, not an analyzed ``match`` - an analyzer splits ``my_cat.png``
differently than users (and SQL LIKE) do. Clauses go in ``filter`` context: nothing is scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from imageindex.query.ast import And, Compare, Has, Node, Not, Or, Prefix, QueryError, Value
from imageindex.query.fields import FieldSpec, FieldType, day_bounds, lookup
from imageindex.query.parser import iso_utc, validate

#: Text columns and the keyword subfield holding their whole value.
KEYWORD_SUBFIELDS: Mapping[str, str] = {
    "file_name": "file_name.keyword",
    "error": "error.keyword",
}
_RANGE = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}

Query = dict[str, Any]


def _bool(kind: str, clauses: list[Query]) -> Query:
    if kind == "should":
        return {"bool": {"should": clauses, "minimum_should_match": 1}}
    return {"bool": {kind: clauses}}


def _any(clauses: list[Query]) -> Query:
    return clauses[0] if len(clauses) == 1 else _bool("should", clauses)


def _json(value: object) -> object:
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return value
    raise QueryError(f"a query value cannot be a {type(value).__name__} in an OpenSearch query")


def wildcard_escape(text: str) -> str:
    """``text`` with the wildcard query's ``*`` and ``?`` (and ``\\``) matching themselves."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")


def _has_cased_non_ascii(text: str) -> bool:
    return any(ord(c) > 127 and (c.lower() != c or c.upper() != c) for c in text)


def _regexp_char(c: str) -> str:
    variants = sorted({v for v in (c, c.lower(), c.upper()) if len(v) == 1})
    if len(variants) > 1:
        return "[" + "".join(variants) + "]"
    # A backslash makes any character literal in Lucene regexps; letters and digits are left
    # alone because \d, \w and \s are classes.
    return c if c.isalnum() else "\\" + c


def case_insensitive(field: str, text: str, *, prefix: bool) -> Query:
    """A case-insensitive "starts with" (``prefix``) or "contains" clause on a keyword field."""
    if _has_cased_non_ascii(text):
        # case_insensitive only folds ASCII (opensearch-project/OpenSearch#20843), so letters
        # like Ä get an explicit [äÄ] class in a regexp instead.
        body = "".join(_regexp_char(c) for c in text)
        return {"regexp": {field: {"value": (body if prefix else ".*" + body) + ".*"}}}
    if prefix:
        return {"prefix": {field: {"value": text, "case_insensitive": True}}}
    pattern = "*" + wildcard_escape(text) + "*"
    return {"wildcard": {field: {"value": pattern, "case_insensitive": True}}}


class _Compiler:
    def __init__(self, fields: Mapping[str, FieldSpec] | None, subfields: Mapping[str, str]):
        self.fields = fields
        self.subfields = subfields

    def node(self, node: Node) -> Query:
        if isinstance(node, And):
            return _bool("filter", [self.node(i) for i in node.items])
        if isinstance(node, Or):
            return _bool("should", [self.node(i) for i in node.items])
        if isinstance(node, Not):
            return _bool("must_not", [self.node(node.item)])
        spec = lookup(self.fields, node.field)
        if isinstance(node, Has):
            return _any([{"exists": {"field": col}} for col in spec.columns])
        if node.op == "!=":
            return _bool("must_not", [self.node(Compare(node.field, "=", node.value))])
        return _any([self.column(spec, col, node.op, node.value) for col in spec.columns])

    def column(self, spec: FieldSpec, col: str, op: str, value: Value) -> Query:
        t = spec.type
        exact = self.subfields.get(col, col) if t == FieldType.TEXT else col
        if isinstance(value, tuple):
            plain = all(
                isinstance(v, int | float | datetime)
                or (isinstance(v, str) and (op == "=" or t == FieldType.TAGS))
                for v in value
            )
            if plain:
                return {"terms": {exact: [_json(v) for v in value]}}
            return _any([self.column(spec, col, op, v) for v in value])
        if t == FieldType.TAGS:
            return {"term": {col: value}}
        if t in (FieldType.TEXT, FieldType.KEYWORD):
            if op == "=":
                if isinstance(value, Prefix):
                    return {"prefix": {exact: {"value": value.text}}}
                return {"term": {exact: value}}
            if isinstance(value, Prefix):
                return case_insensitive(exact, value.text, prefix=True)
            return case_insensitive(exact, str(value), prefix=False)
        if isinstance(value, date) and not isinstance(value, datetime):
            return self.day(col, op, value)
        if op in (":", "="):
            return {"term": {col: _json(value)}}
        return {"range": {col: {_RANGE[op]: _json(value)}}}

    def day(self, col: str, op: str, day: date) -> Query:
        # The same whole-UTC-day bounds as the LanceDB compiler, spelled out rather than left to
        # OpenSearch's date rounding.
        start, end = day_bounds(day)
        lo = iso_utc(start)
        hi = iso_utc(end) if end is not None else None
        if op in (":", "="):
            bounds = {"gte": lo, "lt": hi} if hi else {"gte": lo}
        elif op == "<":
            bounds = {"lt": lo}
        elif op == ">=":
            bounds = {"gte": lo}
        elif op == "<=":
            if hi is None:
                return {"exists": {"field": col}}
            bounds = {"lt": hi}
        else:
            if hi is None:
                return {"match_none": {}}
            bounds = {"gte": hi}
        return {"range": {col: bounds}}


def compile(
    node: Node,
    *,
    fields: Mapping[str, FieldSpec] | None = None,
    keyword_subfields: Mapping[str, str] | None = None,
) -> Query:
    """The OpenSearch query clause of ``node`` (validated first: a QueryError for bad input).

    ``keyword_subfields``: where each text column's whole value is indexed (default
    :data:`KEYWORD_SUBFIELDS`).
    """
    node = validate(node, fields)
    subfields = KEYWORD_SUBFIELDS if keyword_subfields is None else keyword_subfields
    return _Compiler(fields, subfields).node(node)


compile_opensearch = compile

__all__ = [
    "KEYWORD_SUBFIELDS",
    "case_insensitive",
    "compile",
    "compile_opensearch",
    "wildcard_escape",
]
