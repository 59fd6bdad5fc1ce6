"""The per-version Parquet feature table written by finalize, read back without imageindex."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from test_export import docs_of, indexed  # noqa: F401  (fixture)

from imageindex import pipeline
from imageindex.registry import load_registry

EXPECTED = [
    "id",
    "uri",
    "file_name",
    "size",
    "mtime",
    "width",
    "height",
    "format",
    "tags_ai",
    "tags_user",
    "model",
    "embedding",
]


def table_path(indexed, version="v1") -> Path:  # noqa: F811
    return indexed["tmp"] / "home" / "staging" / "features" / "t" / version / "features.parquet"


def test_feature_table_schema_and_content(indexed):  # noqa: F811
    path = table_path(indexed)
    tbl = pq.read_table(path)  # plain pyarrow: no imageindex code needed to read it
    assert tbl.schema.names == EXPECTED
    dim = tbl.schema.field("embedding").type.list_size
    assert tbl.schema.field("embedding").type == pa.list_(pa.float32(), dim) and dim == 384
    assert tbl.schema.field("tags_ai").type == pa.list_(pa.string())
    assert tbl.num_rows == 8
    stored = docs_of(indexed["store"], "v1")
    for row in tbl.to_pylist():
        doc = stored[row["uri"]]
        np.testing.assert_array_equal(np.asarray(row["embedding"], np.float32), doc["vector"])
        assert (row["id"], row["width"], row["format"], row["tags_ai"]) == (
            doc["id"],
            doc["width"],
            doc["format"],
            doc["tags_ai"],
        )
    # numpy straight from the Arrow column: one (rows, dim) matrix, no per-row Python objects
    matrix = tbl.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    assert matrix.shape == (8, 384) and np.all(np.isfinite(matrix))


def test_feature_table_follows_changes_and_skips_no_change_runs(indexed):  # noqa: F811
    path = table_path(indexed)
    before = path.stat().st_mtime_ns
    report = pipeline.run_all("t", "v1")
    assert report["processed"] == 0 and report["feature_table"]["written"] is False
    assert path.stat().st_mtime_ns == before
    (indexed["src"] / "p0.jpg").unlink()
    (indexed["src"] / "p2.jpg").write_bytes(b"broken now")
    t0 = time.perf_counter()
    report = pipeline.run_all("t", "v1")
    elapsed = time.perf_counter() - t0
    table = dict(report["feature_table"])
    # The time spent writing it: some, and within the run (rounded to milliseconds).
    assert 0 < table.pop("seconds") <= elapsed + 0.001, report["feature_table"]
    assert table == {
        "uri": str(path),
        "rows": 6,  # one deleted, one failed: failed documents are not features
        "written": True,
    }
    uris = pq.read_table(path, columns=["uri"]).column("uri").to_pylist()
    assert len(uris) == 6 and not any(u.endswith(("p0.jpg", "p2.jpg")) for u in uris)


def test_feature_table_location_and_switch(indexed, monkeypatch):  # noqa: F811
    reg = Path(load_registry().path)
    text = reg.read_text()
    reg.write_text(
        text.replace("    fingerprint: sha256", "    fingerprint: sha256\n    feature_table: false")
    )
    assert pipeline.run_all("t", "v1", mode="full")["feature_table"] is None
    out = indexed["tmp"] / "ft"
    reg.write_text(
        text.replace(
            "    fingerprint: sha256", f"    fingerprint: sha256\n    feature_table: {out}"
        )
    )
    report = pipeline.run_all("t", "v1", mode="full")
    assert report["feature_table"]["uri"] == str(out / "t" / "v1" / "features.parquet")
    assert pq.read_metadata(report["feature_table"]["uri"]).num_rows == 8


def test_feature_table_on_s3(indexed, seaweedfs, monkeypatch):  # noqa: F811
    bucket = seaweedfs.new_bucket("feat")
    monkeypatch.setenv("IMAGEINDEX_FEATURES", f"s3://{bucket}/tables")
    monkeypatch.setenv("IMAGEINDEX_S3_CONN_ID", seaweedfs.conn_id)
    report = pipeline.run_all("t", "v1", mode="full")
    assert report["feature_table"]["uri"] == f"s3://{bucket}/tables/t/v1/features.parquet"
    body = seaweedfs.client().get_object(Bucket=bucket, Key="tables/t/v1/features.parquet")
    tbl = pq.read_table(pa.BufferReader(body["Body"].read()))
    assert tbl.num_rows == 8 and tbl.schema.names == EXPECTED
