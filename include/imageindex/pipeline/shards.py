"""The files of one shard, as the stages hand them on (paths in :class:`imageindex.layout.
ShardFolder`): their Parquet schemas and the few rules about what goes into them.

``manifest.parquet`` (plan) → ``preprocessed.parquet`` + ``model_input.parquet`` (preprocess) →
``features.parquet`` (tag_embed) → documents in the store + ``upserted.json`` (upsert).
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from imageindex.layout import ShardFolder

MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("uri", pa.string()),
        ("key", pa.string()),
        ("size", pa.int64()),
        ("mtime", pa.float64()),
        ("fingerprint", pa.string()),
        ("change", pa.string()),
        # id of an indexed document (any version) with the same content and model: copied in
        # upsert instead of being read, decoded and embedded again
        ("reuse_id", pa.string()),
    ]
)

PREPROCESSED_SCHEMA = pa.schema(
    [
        *MANIFEST_SCHEMA,
        ("ok", pa.bool_()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("mode", pa.string()),
        ("n_frames", pa.int32()),
        ("error_reason", pa.string()),
        ("error_detail", pa.string()),
        ("thumbnail_uri", pa.string()),
        ("thumbnail", pa.binary()),
    ]
)

#: The model's input pixels of a shard's files (preprocess.model_input), apart from the
#: preprocessed metadata so that upsert never reads them (150 KB an image at 224 px).
MODEL_INPUT_SCHEMA = pa.schema([("id", pa.string()), ("pixels", pa.binary())])
#: Shards up to this many files carry their model inputs (see the preprocess stage).
MODEL_INPUT_MAX_ROWS = 2000

#: Columns of ``features.parquet`` besides ``vector`` and ``error``.
FEATURES_FIELDS = ["id", "tags_ai", "tags_detail", "tag_definitions_hash", "model", "dim"]

#: Read errors are transient (network, permissions being fixed): such files are not written to the
#: index, so the next run picks them up again. Content errors are recorded as failed documents.
TRANSIENT_REASONS = frozenset({"read_failed"})


def iter_manifest(staging, uri: str) -> Iterator[dict]:
    yield from staging.read_parquet(uri).to_pylist()


def read_model_inputs(staging, preprocessed_uri: str, ids: list[str]) -> list[bytes | None]:
    """The pixels preprocess stored for ``ids``; None where it stored none (shards written
    before it stored them, or too big to), and tag_embed decodes the thumbnail."""
    uri = ShardFolder.of(preprocessed_uri).model_input
    if not staging.exists(uri):
        return [None] * len(ids)
    table = staging.read_parquet(uri)
    ids_stored, pixels = table.column("id").to_pylist(), table.column("pixels").to_pylist()
    stored = dict(zip(ids_stored, pixels, strict=True))
    return [stored.get(i) for i in ids]
