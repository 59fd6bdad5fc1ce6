"""The pipeline end to end on S3: source bucket and staging on a real SeaweedFS, no mocks.

The store stays a local LanceDB folder; everything else (listing, reads, staging files,
thumbnails) goes through the ``seaweed_test`` Airflow connection named in the registry entry.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from imagezoo import make_photo

from imageindex import pipeline
from imageindex.errors import SourceError, UnsafeDeleteError
from imageindex.stores import open_store
from imageindex.stores.base import Filter

REPO = Path(__file__).resolve().parent.parent
TAGS = REPO / "config" / "tags" / "samples.json"
SIZE = (160, 120)
CORRUPT = b"This is a text file with an image extension.\n" * 20

#: key under photos/ -> (seed, Pillow format) of the photos every S3 test starts from.
PHOTOS = {
    "a.jpg": (1, "JPEG"),
    "b.jpg": (2, "JPEG"),
    "sub/c.jpg": (3, "JPEG"),
    "sub/deep/d.png": (4, "PNG"),
    "UPPER.JPG": (5, "JPEG"),
    "names/café photo ü.jpg": (6, "JPEG"),
    "names/日本 画像.png": (7, "PNG"),
    "2026/01/e.jpeg": (8, "JPEG"),
}
BROKEN = "broken/text.jpg"  # a text file with an image name: one failed document


def photo_bytes(tmp_path: Path, seed: int, fmt: str = "JPEG") -> bytes:
    path = make_photo(tmp_path / f"photo-{seed}.{fmt.lower()}", size=SIZE, seed=seed, fmt=fmt)
    return path.read_bytes()


class S3Dataset:
    """Dataset ``t`` (version v1) over ``s3://<src>/photos/``, staging under ``s3://<stg>/staging``."""

    def __init__(self, fs, tmp_path: Path):
        self.fs = fs
        self.client = fs.client()
        self.tmp = tmp_path
        self.src_bucket = fs.new_bucket("src")
        self.staging_bucket = fs.new_bucket("stg")
        self.staging = f"s3://{self.staging_bucket}/staging"
        self.store_path = tmp_path / "store"
        self.registry = tmp_path / "registry.yaml"
        self.write_registry(f"s3://{self.src_bucket}/photos/")

    def write_registry(self, source: str) -> None:
        self.registry.write_text(
            f"""
datasets:
  - id: t
    versions:
      v1: {{source: "{source}"}}
    s3_conn_id: {self.fs.conn_id}
    store: {{uri: {self.store_path}}}
    tagger: {{type: offline, definitions: {TAGS}}}
""",
            encoding="utf-8",
        )

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.src_bucket, Key=f"photos/{key}", Body=body)

    def put_photo(self, key: str, seed: int, fmt: str = "JPEG") -> None:
        self.put(key, photo_bytes(self.tmp, seed, fmt))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.src_bucket, Key=f"photos/{key}")

    def uri(self, key: str) -> str:
        return f"s3://{self.src_bucket}/photos/{key}"

    def all_keys(self, bucket: str, prefix: str = "") -> list[str]:
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            keys += [o["Key"] for o in page.get("Contents") or []]
        return keys

    def empty_source(self) -> None:
        for key in self.all_keys(self.src_bucket):
            self.client.delete_object(Bucket=self.src_bucket, Key=key)

    def store(self):
        return open_store(str(self.store_path))

    def docs(self) -> dict[str, dict]:
        """uri -> document of every document of t/v1."""
        store = self.store()
        if store.table_info("t") is None:
            return {}
        ids = [
            r["id"]
            for b in store.iter_state("t", "v1")
            for r in pa.Table.from_batches([b]).to_pylist()
        ]
        return {d["uri"]: d for d in store.get("t", ids)}

    def count(self) -> int:
        return self.store().count("t", Filter(versions=["v1"], status=None))


@pytest.fixture
def s3ds(seaweedfs, tmp_path, monkeypatch) -> S3Dataset:
    ds = S3Dataset(seaweedfs, tmp_path)
    monkeypatch.setenv("IMAGEINDEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMAGEINDEX_REGISTRY", str(ds.registry))
    monkeypatch.setenv("IMAGEINDEX_STAGING", ds.staging)
    # The registry's s3_conn_id must carry every S3 call (source, staging, thumbnails).
    monkeypatch.delenv("IMAGEINDEX_S3_CONN_ID", raising=False)
    monkeypatch.delenv("IMAGEINDEX_MAX_DELETE_FRACTION", raising=False)
    return ds


def upload_photos(ds: S3Dataset) -> None:
    for key, (seed, fmt) in PHOTOS.items():
        ds.put_photo(key, seed, fmt)
    ds.put(BROKEN, CORRUPT)
    ds.put("notes.txt", b"Not an image; sources must not list this object.\n")
    ds.put("empty-folder/", b"")  # a folder marker, as S3 consoles create them
    # A sibling prefix: "photos/" is a folder, "photosx/" is not part of it.
    ds.client.put_object(
        Bucket=ds.src_bucket, Key="photosx/sibling.jpg", Body=photo_bytes(ds.tmp, 99)
    )


def test_s3_source_and_staging_end_to_end(s3ds):
    upload_photos(s3ds)
    report = pipeline.run_all("t", shard_size=4)

    n = len(PHOTOS) + 1
    assert report["listed"] == n, "notes.txt, the folder marker and photosx/ are not listed"
    assert (report["new"], report["processed"], report["shards"]) == (n, n, 3)
    assert (report["changed"], report["deleted"], report["unchanged"]) == (0, 0, 0)
    assert report["failed"] == 1
    assert report["failed_by_reason"] == {"not_an_image": 1}
    assert [(f["uri"], f["reason"]) for f in report["failures"]] == [
        (s3ds.uri(BROKEN), "not_an_image")
    ]
    assert (report["indexed"], report["indexed_ok"]) == (n, n - 1)
    assert report["run_dir"].startswith(f"{s3ds.staging}/runs/t/v1/")

    docs = s3ds.docs()
    assert set(docs) == {s3ds.uri(k) for k in [*PHOTOS, BROKEN]}
    thumbs_root = f"{s3ds.staging}/thumbnails/t/"
    for key in PHOTOS:
        doc = docs[s3ds.uri(key)]
        assert doc["status"] == "ok", (key, doc["error"])
        assert doc["key"] == key
        assert doc["file_name"] == key.rsplit("/", 1)[-1]
        assert (doc["width"], doc["height"]) == SIZE
        assert doc["fingerprint"].startswith("etag:")
        assert doc["thumbnail_uri"].startswith(thumbs_root), doc["thumbnail_uri"]
        thumb_key = doc["thumbnail_uri"][len(f"s3://{s3ds.staging_bucket}/") :]
        head = s3ds.client.head_object(Bucket=s3ds.staging_bucket, Key=thumb_key)
        assert head["ContentLength"] > 0
    bad = docs[s3ds.uri(BROKEN)]
    assert bad["status"] == "failed" and bad["error"].startswith("not_an_image")
    assert bad["thumbnail_uri"] is None

    # The run's intermediate files live in the staging bucket, not in the source bucket.
    run_key = report["run_dir"][len(f"s3://{s3ds.staging_bucket}/") :]
    staged = s3ds.all_keys(s3ds.staging_bucket, run_key + "/")
    assert f"{run_key}/plan.json" in staged and f"{run_key}/report.json" in staged
    assert sum(k.endswith("/features.parquet") for k in staged) == 3
    assert not [k for k in s3ds.all_keys(s3ds.src_bucket) if "runs/" in k or "thumbnails/" in k]


def test_s3_incremental_runs_process_exactly_what_changed(s3ds):
    upload_photos(s3ds)
    first = pipeline.run_all("t")
    assert first["new"] == len(PHOTOS) + 1
    before = s3ds.docs()

    s3ds.put_photo("sub/c.jpg", seed=300)  # same key, new content: a new ETag
    s3ds.put_photo("sub/new one.png", seed=301, fmt="PNG")
    s3ds.delete("b.jpg")

    second = pipeline.run_all("t")
    assert (second["changed"], second["new"], second["deleted"]) == (1, 1, 1)
    assert second["processed"] == 2
    assert second["unchanged"] == len(PHOTOS) - 1
    assert second["failed"] == 0, "the broken object is unchanged, so not reprocessed"
    after = s3ds.docs()
    expected = {s3ds.uri(k) for k in [*PHOTOS, BROKEN, "sub/new one.png"]} - {s3ds.uri("b.jpg")}
    assert set(after) == expected
    c = s3ds.uri("sub/c.jpg")
    assert after[c]["fingerprint"] != before[c]["fingerprint"]
    assert after[c]["indexed_at"] > before[c]["indexed_at"]
    a = s3ds.uri("a.jpg")
    assert after[a]["indexed_at"] == before[a]["indexed_at"], "unchanged docs are not rewritten"

    third = pipeline.run_all("t")
    assert (third["processed"], third["new"], third["changed"], third["deleted"]) == (0, 0, 0, 0)
    assert third["shards"] == 0
    assert third["unchanged"] == len(expected)
    assert s3ds.count() == len(expected)


def test_s3_empty_prefix_and_missing_bucket_delete_nothing(s3ds):
    for i in range(3):
        s3ds.put_photo(f"p{i}.jpg", seed=i)
    pipeline.run_all("t")
    assert s3ds.count() == 3

    s3ds.empty_source()
    with pytest.raises(UnsafeDeleteError, match="listed no images"):
        pipeline.run_all("t")
    assert s3ds.count() == 3

    # The bucket itself is gone: the listing fails before anything is compared or deleted.
    s3ds.client.delete_bucket(Bucket=s3ds.src_bucket)
    with pytest.raises(SourceError, match=s3ds.src_bucket) as excinfo:
        pipeline.run_all("t")
    assert "does not exist" in str(excinfo.value)
    assert s3ds.count() == 3

    # Same for a bucket that never existed.
    s3ds.write_registry("s3://never-made-bucket-4f1c/photos/")
    with pytest.raises(SourceError, match="never-made-bucket-4f1c"):
        pipeline.run_all("t")
    assert s3ds.count() == 3


@pytest.mark.slow
def test_dag_run_on_s3(seaweedfs, s3ds, tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    from airflow_local import airflow_env, run_dag

    for i in range(4):
        s3ds.put_photo(f"dag/p{i}.jpg", seed=10 + i)
    s3ds.put("dag/broken.jpg", CORRUPT)
    conn_var = f"AIRFLOW_CONN_{seaweedfs.conn_id.upper()}"
    env = airflow_env(
        tmp_path / "var",
        IMAGEINDEX_REGISTRY=str(s3ds.registry),
        IMAGEINDEX_STAGING=s3ds.staging,
        IMAGEINDEX_RETRIES="0",
        IMAGEINDEX_RETRY_DELAY_S="1",
        **{conn_var: seaweedfs.conn_env(seaweedfs.conn_id)[conn_var]},
    )
    env.pop("IMAGEINDEX_S3_CONN_ID", None)
    state, seconds, output = run_dag(env, "t", {"shard_size": 2}, timeout=600)
    assert state == "success", output[-5000:]

    assert s3ds.count() == 5
    assert s3ds.store().count("t", Filter(versions=["v1"])) == 4
    reports = [
        k
        for k in s3ds.all_keys(s3ds.staging_bucket, "staging/runs/t/v1/")
        if k.endswith("/report.json")
    ]
    assert len(reports) == 1
    body = s3ds.client.get_object(Bucket=s3ds.staging_bucket, Key=reports[0])["Body"].read()
    report = json.loads(body)
    assert (report["listed"], report["new"], report["shards"]) == (5, 5, 3)
    assert report["failed_by_reason"] == {"not_an_image": 1}
    assert report["indexed_ok"] == 4
