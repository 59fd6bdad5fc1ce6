"""The layout of a dataset's OpenSearch index and how values map into it: the field mappings
and create-index body, whether an existing index gives cosine scores, dates and scores."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from imageindex.errors import ConfigError
from imageindex.stores.base import parse_date
from imageindex.stores.schema import STATE_COLUMNS, document_schema

ENGINE = "lucene"
SPACE_TYPE = "cosinesimil"
VECTOR_FIELD = "vector"
#: OpenSearch's default index.max_result_window and the k-NN plugin's largest k.
MAX_PAGE = 10_000
#: Neighbours a k-NN query asks the graph for when no ef_search is set. The lucene engine
#: searches with ef = k, and k = 11 found 0.925 of the exact top 10 over 4,000 random 16-d
#: vectors on OpenSearch 2.19 (1.0 with 100; tests/stores/test_opensearch_live.py).
KNN_CANDIDATES = 100
DATE_FORMAT = "strict_date_optional_time||epoch_millis"
#: Text columns are sorted and matched exactly through this keyword subfield.
TEXT_KEYWORD = {"file_name": "file_name.keyword", "error": "error.keyword"}
#: What ``_meta.created_by`` says in indexes this module created.
CREATED_BY = "imageindex"

DOC_COLUMNS = [f.name for f in document_schema(1) if f.name != VECTOR_FIELD]
DOC_COLUMNS = [f.name for f in document_schema(1) if f.name != VECTOR_FIELD]
_DATE_COLUMNS = frozenset({"mtime", "indexed_at"})
STATE_SCHEMA = pa.schema([document_schema(1).field(c) for c in STATE_COLUMNS])


def _knn_field(dim: int) -> dict:
    return {
        "type": "knn_vector",
        "dimension": dim,
        "method": {
            "name": "hnsw",
            # Inside "method" rather than at the top level: the top-level form is 2.17+ only.
            "space_type": SPACE_TYPE,
            "engine": ENGINE,
            "parameters": {"m": 16, "ef_construction": 128},
        },
    }


def index_properties(dim: int) -> dict:
    """The field mappings of a dataset index (what :mod:`imageindex.stores.opensearch.compile`
    expects)."""
    keyword = {"type": "keyword"}
    # No ignore_above: a longer value would be silently unmatchable.
    text = {"type": "text", "fields": {"keyword": {"type": "keyword"}}}
    date = {"type": "date", "format": DATE_FORMAT}
    return {
        "id": keyword,
        "dataset_id": keyword,
        "dataset_version": keyword,
        "uri": keyword,
        "key": keyword,
        "file_name": text,
        "size": {"type": "long"},
        "mtime": date,
        "fingerprint": keyword,
        "status": keyword,
        "error": text,
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "format": keyword,
        "mode": keyword,
        "tags_ai": keyword,
        "tags_user": keyword,
        # Only read back, never queried: kept in _source, neither indexed nor in doc values.
        "tags_detail": {"type": "keyword", "index": False, "doc_values": False},
        "tag_definitions_hash": keyword,
        "thumbnail_uri": keyword,
        "model": keyword,
        "dim": {"type": "integer"},
        VECTOR_FIELD: _knn_field(dim),
        "indexed_at": date,
        # The managed multimodal service's names for the same fields.
        "file_meta_id": {"type": "alias", "path": "id"},
        "index_set_id": {"type": "alias", "path": "dataset_id"},
    }


def index_body(
    dataset_id: str,
    model: str,
    dim: int,
    *,
    shards: int | None = None,
    replicas: int | None = None,
) -> dict:
    """The body of the create-index request for ``dataset_id``."""
    settings: dict[str, Any] = {"knn": True}
    if shards is not None:
        settings["number_of_shards"] = shards
    if replicas is not None:
        settings["number_of_replicas"] = replicas
    return {
        "settings": {"index": settings},
        "mappings": {
            # Strict: a misspelt column is a rejected document, not a new field in the mapping.
            "dynamic": "strict",
            "_meta": {
                "created_by": CREATED_BY,
                "model": model,
                "dim": dim,
                "dataset_id": dataset_id,
            },
            "properties": index_properties(dim),
        },
    }


def search_problems(name: str, raw: dict) -> str | None:
    """Why vector search on this index would not give cosine scores; None when it would."""
    vec = (raw.get("mappings") or {}).get("properties", {}).get(VECTOR_FIELD) or {}
    method = vec.get("method") or {}
    space = vec.get("space_type") or method.get("space_type")
    engine = method.get("engine")
    knn = str(((raw.get("settings") or {}).get("index") or {}).get("knn", "false")).lower()
    problems = []
    if knn != "true":
        problems.append("index.knn is not enabled")
    if space != SPACE_TYPE:
        problems.append(f"space_type is {space or 'the default (l2)'}, not {SPACE_TYPE}")
    if engine != ENGINE:
        problems.append(f"engine is {engine or 'the default'}, not {ENGINE}")
    if not problems:
        return None
    return (
        f"index {name} cannot give cosine scores comparable with other stores: "
        + "; ".join(problems)
        + ". Re-create it (delete it and run ensure_table) or use another index_prefix"
    )


def iso(value: datetime) -> str:
    # Always six fraction digits: OpenSearch keeps milliseconds, _source keeps the rest.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def source_row(src: dict, columns: Sequence[str]) -> dict:
    row = {c: src.get(c) for c in columns}
    for c in _DATE_COLUMNS.intersection(columns):
        row[c] = parse_date(row[c])
    return row


def to_cosine(score: float) -> float:
    """Cosine similarity from lucene's cosinesimil score ``(1 + cos) / 2``."""
    return max(-1.0, min(1.0, 2.0 * float(score) - 1.0))


def to_os_score(cosine: float) -> float:
    """lucene's cosinesimil score of a cosine similarity."""
    return (1.0 + float(cosine)) / 2.0


def unique_ids(ids: Sequence[str]) -> list[str]:
    out = list(dict.fromkeys(ids))
    for i in out:
        if not isinstance(i, str):
            raise ConfigError(f"document id {i!r} must be a string, not {type(i).__name__}")
    return out
