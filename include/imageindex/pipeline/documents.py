"""Store documents from a shard's files: the document schema's columns, joined from the
preprocessed metadata and the features (upsert), or copied from an indexed document (reuse).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imageindex.pipeline.shards import TRANSIENT_REASONS
from imageindex.stores.schema import STATUS_FAILED, STATUS_OK, document_schema


def _feature_rows(pre: pa.Table, feats: pa.Table, dim: int) -> dict[str, list]:
    """Per preprocessed row: vector, status, error and tags (failed where the model refused)."""
    feat_by_id = {i: k for k, i in enumerate(feats.column("id").to_pylist())}
    vec = (
        feats.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, dim)
        if (feats.num_rows)
        else np.zeros((0, dim), np.float32)
    )
    f_tags = feats.column("tags_ai").to_pylist()
    f_detail = feats.column("tags_detail").to_pylist()
    f_hash = feats.column("tag_definitions_hash").to_pylist()
    f_err = (
        feats.column("error").to_pylist() if "error" in feats.column_names else [None] * len(f_tags)
    )
    vectors = np.zeros((pre.num_rows, dim), dtype=np.float32)
    out: dict[str, list] = {k: [] for k in ("status", "error", "tags_ai", "detail", "dhash")}
    for r, (i, ok, reason, det) in enumerate(
        zip(
            pre.column("id").to_pylist(),
            pre.column("ok").to_pylist(),
            pre.column("error_reason").to_pylist(),
            pre.column("error_detail").to_pylist(),
            strict=True,
        )
    ):
        k = feat_by_id.get(i)
        if ok and k is not None and f_err[k]:
            ok, reason, det = False, "model_failed", f_err[k]
        if ok and k is not None:
            vectors[r] = vec[k]
            row = (STATUS_OK, None, f_tags[k], f_detail[k], f_hash[k])
        else:
            row = (
                STATUS_FAILED,
                f"{reason or 'not_embedded'}: {det or ''}".strip(),
                [],
                None,
                None,
            )
        for key, value in zip(out, row, strict=True):
            out[key].append(value)
    out["vectors"] = vectors
    return out


def build_documents(
    pre: pa.Table, feats: pa.Table, *, dataset_id: str, version: str, model: str, dim: int
) -> pa.Table:
    """Join preprocess metadata and features into rows of the document schema."""
    schema = document_schema(dim)
    keep = pc.invert(pc.is_in(pre.column("error_reason"), pa.array(sorted(TRANSIENT_REASONS))))
    keep = pc.fill_null(keep, True)
    pre = pre.filter(keep)
    feat = _feature_rows(pre, feats, dim)
    n = pre.num_rows
    now = datetime.now(UTC)
    cols = {
        "id": pre.column("id"),
        "dataset_id": pa.array([dataset_id] * n, pa.string()),
        "dataset_version": pa.array([version] * n, pa.string()),
        "uri": pre.column("uri"),
        "key": pre.column("key"),
        "file_name": pa.array([k.rsplit("/", 1)[-1] for k in pre.column("key").to_pylist()]),
        "size": pre.column("size"),
        "mtime": mtime_timestamps(pre.column("mtime")),
        "fingerprint": pre.column("fingerprint"),
        "status": pa.array(feat["status"], pa.string()),
        "error": pa.array(feat["error"], pa.string()),
        "width": pre.column("width"),
        "height": pre.column("height"),
        "format": pre.column("format"),
        "mode": pre.column("mode"),
        "tags_ai": pa.array(feat["tags_ai"], pa.list_(pa.string())),
        "tags_user": pa.nulls(n, pa.list_(pa.string())),
        "tags_detail": pa.array(feat["detail"], pa.string()),
        "tag_definitions_hash": pa.array(feat["dhash"], pa.string()),
        "thumbnail_uri": pre.column("thumbnail_uri"),
        "model": pa.array([model] * n, pa.string()),
        "dim": pa.array([dim] * n, pa.int32()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(feat["vectors"].reshape(-1)), dim),
        "indexed_at": pa.array([now] * n, pa.timestamp("us", "UTC")),
    }
    return pa.table([as_type(cols[f.name], f.type) for f in schema], schema=schema)


def mtime_timestamps(seconds) -> pa.Array:
    """Listing mtimes (float seconds) as UTC µs timestamps, rounded exactly as plan() rounds
    the listing's mtime, so an untouched file diffs as unchanged."""
    micros = pc.round(pc.multiply(seconds, 1e6)).cast(pa.int64())
    return micros.cast(pa.timestamp("us", "UTC"))


def as_type(values, typ: pa.DataType):
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    return arr if arr.type == typ else arr.cast(typ)
