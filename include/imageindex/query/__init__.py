"""The search query language: one parser, one AST, one compiler per store.

>>> node = parse("tags:[cat, dog] AND width >= 640 AND NOT HAS tags.user")
>>> to_text(node)
'tags:[cat, dog] AND width >= 640 AND NOT HAS tags.user'

``compile_lancedb(node)`` gives a LanceDB WHERE string, ``compile_opensearch(node)`` an
OpenSearch query clause; ``simple_filter(...)`` builds the same AST from the simple search form.
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
from imageindex.query.lancedb import compile_lancedb
from imageindex.query.opensearch import compile_opensearch
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
    "compile_lancedb",
    "compile_opensearch",
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
