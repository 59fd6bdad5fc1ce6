"""The search query language: one parser, one AST, the fields; no store.

>>> node = parse("tags:[cat, dog] AND width >= 640 AND NOT HAS tags.user")
>>> to_text(node)
'tags:[cat, dog] AND width >= 640 AND NOT HAS tags.user'

Each store compiles the AST itself (:mod:`imageindex.stores.lancedb.compile` to a LanceDB WHERE
string, :mod:`imageindex.stores.opensearch.compile` to an OpenSearch query clause);
``simple_filter(...)`` builds the same AST from the simple search form.
The language is described in docs/query-language.md.
"""

from __future__ import annotations

from imageindex.query.ast import (
    OPS,
    And,
    Compare,
    Has,
    Node,
    Not,
    Or,
    Prefix,
    QueryError,
    Scalar,
    Value,
    walk,
)
from imageindex.query.fields import (
    DEFAULT_FIELDS,
    FieldSpec,
    FieldType,
    extend_fields,
    field_table,
    lookup,
)
from imageindex.query.parser import (
    MAX_DEPTH,
    MAX_QUERY_LENGTH,
    MAX_TERMS,
    parse,
    to_text,
    validate,
)
from imageindex.query.simple import combine, from_filter, simple_filter

__all__ = [
    "DEFAULT_FIELDS",
    "MAX_DEPTH",
    "MAX_QUERY_LENGTH",
    "MAX_TERMS",
    "OPS",
    "And",
    "Compare",
    "FieldSpec",
    "FieldType",
    "Has",
    "Node",
    "Not",
    "Or",
    "Prefix",
    "QueryError",
    "Scalar",
    "Value",
    "combine",
    "extend_fields",
    "field_table",
    "from_filter",
    "lookup",
    "parse",
    "simple_filter",
    "to_text",
    "validate",
    "walk",
]
