"""The document schema every store holds. One row per (dataset, version, file)."""

from __future__ import annotations

import pyarrow as pa

#: status of a document: "ok" has a vector; "failed" records why the file could not be indexed
#: (its vector is all zeros and vector search never returns it).
STATUS_OK = "ok"
STATUS_FAILED = "failed"


def document_schema(dim: int) -> pa.Schema:
    """Arrow schema of the documents table for vectors of ``dim`` dimensions."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("dataset_id", pa.string(), nullable=False),
            pa.field("dataset_version", pa.string(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("key", pa.string()),
            pa.field("file_name", pa.string()),
            pa.field("size", pa.int64()),
            pa.field("mtime", pa.timestamp("us", tz="UTC")),
            pa.field("fingerprint", pa.string()),
            pa.field("status", pa.string()),
            pa.field("error", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("format", pa.string()),
            pa.field("mode", pa.string()),
            pa.field("tags_ai", pa.list_(pa.string())),
            pa.field("tags_user", pa.list_(pa.string())),
            # JSON list of {"name","score","source","state"}: scores and states of the ai tags.
            pa.field("tags_detail", pa.string()),
            pa.field("tag_definitions_hash", pa.string()),
            pa.field("thumbnail_uri", pa.string()),
            pa.field("model", pa.string()),
            pa.field("dim", pa.int32()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("indexed_at", pa.timestamp("us", tz="UTC")),
        ]
    )


#: Columns the planner reads to diff a listing against the index (never the vectors).
STATE_COLUMNS = ["id", "uri", "fingerprint", "mtime", "size", "status", "tag_definitions_hash"]
