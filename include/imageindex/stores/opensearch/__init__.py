"""The OpenSearch store's parts; :mod:`.compile`: the query-language AST as an OpenSearch DSL
clause."""

from __future__ import annotations

from imageindex.stores.opensearch.compile import (
    KEYWORD_SUBFIELDS,
    case_insensitive,
    compile_opensearch,
    wildcard_escape,
)

__all__ = ["KEYWORD_SUBFIELDS", "case_insensitive", "compile_opensearch", "wildcard_escape"]
