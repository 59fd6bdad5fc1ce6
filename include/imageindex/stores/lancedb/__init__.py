"""The LanceDB store: one Lance table per dataset, filters compiled to DataFusion SQL.

- :mod:`.store`: :class:`LanceDBStore` (tables, writes, reads, the native search calls).
- :mod:`.sql`: SQL quoting (:func:`sql_string`, the one way values enter SQL), the
  :class:`~imageindex.stores.base.Filter` predicate, keyset paging.
- :mod:`.compile`: the query-language AST as a WHERE predicate.
"""

from __future__ import annotations

from imageindex.stores.lancedb.compile import compile_lancedb, like_escape, literal
from imageindex.stores.lancedb.sql import compile_filter, sql_in, sql_list, sql_string
from imageindex.stores.lancedb.store import (
    DOC_COLUMNS,
    SCALAR_INDEXES,
    LanceDBStore,
    vector_index_partitions,
)

__all__ = [
    "DOC_COLUMNS",
    "SCALAR_INDEXES",
    "LanceDBStore",
    "compile_filter",
    "compile_lancedb",
    "like_escape",
    "literal",
    "sql_in",
    "sql_list",
    "sql_string",
    "vector_index_partitions",
]
