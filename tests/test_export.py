"""Exports, logical versions built from them, and vector reuse — real files, models, LanceDB
and (for the S3 cases) a real SeaweedFS."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from imagezoo import make_photo

from imageindex import pipeline
from imageindex.errors import ConfigError, RegistryError, SourceError
from imageindex.export import COLUMNS, export_search, export_version
from imageindex.manifest import iter_rows
from imageindex.registry import load_registry
from imageindex.search import SearchRequest, search
from imageindex.stores import open_store

REPO = Path(__file__).resolve().parent.parent
TAGS = REPO / "config" / "tags" / "samples.json"


@pytest.fixture
def indexed(tmp_path, monkeypatch):
    """Dataset ``t``: 8 photos in v1 (indexed), fingerprint from the registry entry."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(8):
        make_photo(src / ("sub" if i % 2 else "") / f"p{i}.jpg", seed=i, size=(96, 72))
    reg = tmp_path / "registry.yaml"
    reg.write_text(
        f"""
datasets:
  - id: t
    fingerprint: sha256
    versions:
      v1: {{source: {src}}}
      copy: {{source: {tmp_path / "copy"}}}
    current_version: v1
    store: {{uri: {tmp_path / "store"}}}
    tagger: {{type: offline, definitions: {TAGS}}}
""",
        encoding="utf-8",
    )
    monkeypatch.setenv("IMAGEINDEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMAGEINDEX_REGISTRY", str(reg))
    monkeypatch.delenv("IMAGEINDEX_STAGING", raising=False)
    report = pipeline.run_all("t", "v1")
    assert report["indexed_ok"] == 8
    return {"src": src, "tmp": tmp_path, "store": open_store(str(tmp_path / "store"))}


def docs_of(store, version: str) -> dict[str, dict]:
    tbl = pa.Table.from_batches(list(store.iter_documents("t", version=version)))
    return {r["uri"]: r for r in tbl.to_pylist()}


def sub(indexed) -> str:
    return (indexed["src"] / "sub").as_uri() + "/"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_export_round_trip(indexed, fmt):
    dest = indexed["tmp"] / "out" / f"all.{fmt}"
    res = export_search(SearchRequest(dataset_id="t"), str(dest))
    assert res.count == 8 and res.format == fmt and res.uri == str(dest)
    assert res.sha256 == sha256_file(dest) and res.bytes == dest.stat().st_size
    assert Path(res.checksum_uri).read_text() == f"{res.sha256}  all.{fmt}\n"
    rows = list(iter_rows(dest, fmt))
    assert len(rows) == 8 and set(rows[0]) == set(COLUMNS)
    stored = docs_of(indexed["store"], "v1")
    assert sorted(r["uri"] for r in rows) == sorted(stored)
    for r in rows:
        d = stored[r["uri"]]
        assert int(r["size"]) == d["size"] and int(r["width"]) == d["width"] == 96
        assert r["fingerprint"] == d["fingerprint"] and r["fingerprint"].startswith("sha256:")
        assert r["key"] == d["key"] and r["file_name"] == d["file_name"]
    # filter-only exports are in uri order, like the search they come from
    assert [r["uri"] for r in rows] == sorted(r["uri"] for r in rows)
    if fmt == "csv":  # the header is the documented column list
        with open(dest, newline="") as f:
            assert next(csv.reader(f)) == COLUMNS
    if fmt == "parquet":  # typed, readable by pyarrow alone
        schema = pq.read_schema(dest)
        assert schema.field("mtime").type == pa.timestamp("us", tz="UTC")
        assert schema.field("tags_ai").type == pa.list_(pa.string())


def test_export_of_a_filtered_and_of_a_text_search(indexed):
    out = indexed["tmp"] / "out"
    part = export_search(
        SearchRequest(dataset_id="t", path_prefix=sub(indexed)), str(out / "s.jsonl")
    )
    rows = list(iter_rows(out / "s.jsonl", "jsonl"))
    assert part.count == 4 and all("/sub/" in r["uri"] for r in rows)

    req = SearchRequest(dataset_id="t", text="a photo of a dog", top_k=3)
    res = export_search(req, str(out / "near.jsonl"))
    rows = list(iter_rows(out / "near.jsonl", "jsonl"))
    assert res.count == 3
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert [r["uri"] for r in rows] == [h.uri for h in search(req)]
    assert export_search(req, str(out / "more.jsonl"), limit=6).count == 6


def test_failed_export_leaves_nothing_behind(indexed):
    store = indexed["store"]
    some = sorted(docs_of(store, "v1").values(), key=lambda d: d["uri"])
    store.add_user_tags("t", [some[5]["id"]], ["a|b"])  # cannot be written to a CSV cell
    out = indexed["tmp"] / "out"
    out.mkdir()
    (out / "old.csv").write_text("previous export\n")
    with pytest.raises(ConfigError, match=r"a\|b.*jsonl or parquet"):
        export_search(SearchRequest(dataset_id="t"), str(out / "old.csv"))
    # the previous file is untouched, no temporary file and no checksum file remain
    assert sorted(p.name for p in out.iterdir()) == ["old.csv"]
    assert (out / "old.csv").read_text() == "previous export\n"
    assert export_search(SearchRequest(dataset_id="t"), str(out / "ok.parquet")).count == 8
    with pytest.raises(ConfigError, match="format"):
        export_search(SearchRequest(dataset_id="t"), str(out / "x.txt"))
    (out / "dir.jsonl").mkdir()
    with pytest.raises(ConfigError, match="folder"):
        export_search(SearchRequest(dataset_id="t"), str(out / "dir.jsonl"))


class Spy:
    """Counts images the real embedder is asked to embed (the model is cached per process, so
    its method is wrapped once)."""

    def __init__(self, monkeypatch):
        self.images = 0
        emb = pipeline.embedder_for(load_registry().get("t"))
        real = emb.embed_images

        def embed_images(images):
            self.images += len(images)
            return real(images)

        monkeypatch.setattr(emb, "embed_images", embed_images)
        assert pipeline.embedder_for(load_registry().get("t")) is emb


def test_logical_version_reuses_indexed_vectors(indexed, monkeypatch):
    store = indexed["store"]
    req = SearchRequest(dataset_id="t", path_prefix=sub(indexed))
    res = export_version(req, "picked", description="the sub folder")
    assert res.version == "picked" and res.count == 4
    ds = load_registry().get("t")
    assert ds.version("picked").manifest and "picked" in ds.all_versions()
    with pytest.raises(ConfigError, match="already has a logical version"):
        export_version(req, "picked")
    with pytest.raises(ConfigError, match="already declares"):
        export_version(req, "v1")

    spy = Spy(monkeypatch)
    report = pipeline.run_all("t", "picked")
    assert spy.images == 0, "no model call for content that is already indexed"
    assert report["new"] == 4 and report["reused"] == 4 and report["indexed_ok"] == 4
    v1, picked = docs_of(store, "v1"), docs_of(store, "picked")
    assert sorted(picked) == sorted(u for u in v1 if "/sub/" in u)
    for uri, d in picked.items():
        src = v1[uri]
        assert d["id"] != src["id"] and d["dataset_version"] == "picked"
        np.testing.assert_array_equal(d["vector"], src["vector"])
        assert d["tags_ai"] == src["tags_ai"] and d["width"] == src["width"]
        assert d["thumbnail_uri"] == src["thumbnail_uri"]
    # searchable like any version
    hits = search(SearchRequest(dataset_id="t", version="picked", text="a dog", top_k=10))
    assert sorted(h.uri for h in hits) == sorted(picked)
    # and a second run changes nothing
    again = pipeline.run_all("t", "picked")
    assert again["unchanged"] == 4 and again["processed"] == 0


def test_new_version_reuses_content_and_computes_only_what_is_new(indexed, monkeypatch):
    copy = indexed["tmp"] / "copy"
    shutil.copytree(indexed["src"], copy)  # new uris and mtimes, same content (sha256)
    make_photo(copy / "new.jpg", seed=99, size=(96, 72))
    spy = Spy(monkeypatch)
    report = pipeline.run_all("t", "copy")
    assert report["new"] == 9 and report["reused"] == 8 and report["indexed_ok"] == 9
    assert spy.images == 1
    copied = docs_of(indexed["store"], "copy")
    assert copied[(copy / "p0.jpg").as_uri()]["mtime"].timestamp() == pytest.approx(
        (copy / "p0.jpg").stat().st_mtime, abs=1e-6
    )
    # a full re-index recomputes everything
    spy.images = 0
    assert pipeline.run_all("t", "copy", mode="full")["reused"] == 0
    assert spy.images == 9


def test_reused_document_deleted_before_upsert_is_redone_next_run(indexed):
    store = indexed["store"]
    export_version(SearchRequest(dataset_id="t", path_prefix=sub(indexed)), "picked")
    plan = pipeline.plan("t", "picked", "r1")
    assert plan["counts"]["reused"] == 4
    gone = [d["id"] for u, d in docs_of(store, "v1").items() if u.endswith("p1.jpg")]
    store.delete("t", gone)
    results = [pipeline.run_shard("t", "picked", s) for s in plan["shards"]]
    report = pipeline.finalize("t", "picked", plan, results)
    assert report["reuse_missing"] == 1 and report["indexed"] == 3
    nxt = pipeline.run_all("t", "picked")
    assert nxt["new"] == 1 and nxt["reused"] == 0 and nxt["indexed_ok"] == 4


def test_manifest_version_from_the_registry_and_bad_manifests(indexed, tmp_path, monkeypatch):
    lst = tmp_path / "hand.jsonl"
    files = sorted(indexed["src"].glob("*.jpg"))
    lst.write_text("".join(json.dumps({"uri": str(p)}) + "\n" for p in files) + "\n")
    reg = Path(load_registry().path)
    reg.write_text(
        reg.read_text().replace(
            "    current_version", f"      hand: {{manifest: {lst}}}\n    current_version"
        )
    )
    report = pipeline.run_all("t", "hand")
    assert report["listed"] == 4 and report["reused"] == 4  # sha256 computed from the files
    src = pipeline.open_run("t", "hand", "x").source()
    with pytest.raises(SourceError, match="not listed in the manifest"):
        src.read_bytes((indexed["src"] / "sub" / "p1.jpg").as_uri())
    assert src.read_bytes(files[0].as_uri()) == files[0].read_bytes()

    # a listed file that does not exist is one failed file, not a failed run
    lst.write_text(json.dumps({"uri": str(files[0])}) + '\n{"uri": "/nowhere/x.jpg"}\n')
    monkeypatch.setenv("IMAGEINDEX_MAX_DELETE_FRACTION", "1")  # 3 of 4 files leave the list
    report = pipeline.run_all("t", "hand")
    assert report["failed_by_reason"] == {"read_failed": 1} and report["indexed_ok"] == 1
    assert "/nowhere/x.jpg" in report["failures"][0]["detail"]

    lst.write_text(json.dumps({"uri": str(files[0])}) + "\nnot json\n")
    with pytest.raises(SourceError, match=r"hand.jsonl, line 2: not JSON"):
        pipeline.plan("t", "hand", "bad")
    lst.unlink()
    with pytest.raises(
        SourceError, match="manifest .*hand.jsonl of a logical version does not exist"
    ):
        pipeline.plan("t", "hand", "gone")
    with pytest.raises(RegistryError, match="no version 'nope'"):
        pipeline.plan("t", "nope", "x")


def test_export_and_logical_version_on_s3(indexed, seaweedfs, monkeypatch):
    bucket = seaweedfs.new_bucket("exp")
    dest = f"s3://{bucket}/exports/sub.parquet"
    res = export_search(
        SearchRequest(dataset_id="t", path_prefix=sub(indexed)), dest, s3_conn_id=seaweedfs.conn_id
    )
    client = seaweedfs.client()
    body = client.get_object(Bucket=bucket, Key="exports/sub.parquet")["Body"].read()
    assert res.count == 4 and hashlib.sha256(body).hexdigest() == res.sha256
    check = client.get_object(Bucket=bucket, Key="exports/sub.parquet.sha256")["Body"].read()
    assert check.decode() == f"{res.sha256}  sub.parquet\n"
    # a failed S3 export leaves no object behind
    store = indexed["store"]
    one = next(iter(docs_of(store, "v1").values()))
    store.add_user_tags("t", [one["id"]], ["x|y"])
    with pytest.raises(ConfigError):
        export_search(
            SearchRequest(dataset_id="t"),
            f"s3://{bucket}/exports/bad.csv",
            s3_conn_id=seaweedfs.conn_id,
        )
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert sorted(keys) == ["exports/sub.parquet", "exports/sub.parquet.sha256"]

    # staging on S3: the logical version's record and manifest live there, shared by workers
    stg = seaweedfs.new_bucket("stg")
    monkeypatch.setenv("IMAGEINDEX_STAGING", f"s3://{stg}/staging")
    monkeypatch.setenv("IMAGEINDEX_S3_CONN_ID", seaweedfs.conn_id)
    out = export_version(SearchRequest(dataset_id="t", path_prefix=sub(indexed)), "s3pick")
    assert out.uri == f"s3://{stg}/staging/exports/t/s3pick.parquet"
    report = pipeline.run_all("t", "s3pick")
    assert report["reused"] == 4 and report["indexed_ok"] == 4
