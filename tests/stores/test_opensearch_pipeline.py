"""The indexing pipeline on OpenSearch gives the same documents and counts as on LanceDB: a full
run, an incremental one (new, changed and deleted files) and a run whose upsert worker was
killed and retried. Library level (``imageindex.pipeline``), against the live node."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from imagezoo import make_photo

from imageindex import pipeline
from imageindex.errors import StoreError
from imageindex.stores import open_store
from imageindex.stores.base import Filter

REPO = Path(__file__).resolve().parents[2]
KEYS = ("id", "uri", "status", "width", "height", "format", "tags_ai", "dataset_version")


def fresh_source(src: Path) -> None:
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for i in range(6):
        make_photo(src / f"p{i}.jpg", seed=i)


def documents(spec: dict) -> dict[str, dict]:
    store = open_store(spec=dict(spec))
    ids = [i for b in store.iter_state("t", "v1") for i in b["id"].to_pylist()]
    return {d["uri"]: {k: d[k] for k in KEYS} for d in store.get("t", ids)}


def use_registry(tmp: Path, src: Path, store_line: str, monkeypatch) -> None:
    """A registry with dataset ``t`` over ``src`` into the store ``store_line`` (YAML), and
    Imageindex state under ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    reg = tmp / "registry.yaml"
    reg.write_text(
        f"""
datasets:
  - id: t
    versions:
      v1: {{source: {src}}}
    store: {store_line}
    tagger: {{type: offline, definitions: {REPO / "config" / "tags" / "samples.json"}}}
""",
        encoding="utf-8",
    )
    monkeypatch.setenv("IMAGEINDEX_HOME", str(tmp / "home"))
    monkeypatch.setenv("IMAGEINDEX_REGISTRY", str(reg))
    monkeypatch.delenv("IMAGEINDEX_STAGING", raising=False)


def scenario(tmp: Path, src: Path, store_line: str, spec: dict, monkeypatch) -> list:
    """Three runs over the same source; what each leaves in the store and its counts."""
    use_registry(tmp, src, store_line, monkeypatch)
    counts = ("new", "changed", "deleted", "unchanged", "processed", "indexed_ok")
    out = []

    fresh_source(src)
    full = pipeline.run_all("t", shard_size=2, run_id="full")
    out.append(({k: full[k] for k in counts}, documents(spec)))

    make_photo(src / "new1.jpg", seed=100)
    make_photo(src / "sub" / "new2.png", seed=101, fmt="PNG")
    make_photo(src / "p1.jpg", seed=999)  # new content ...
    st = (src / "p1.jpg").stat()  # ... and a new mtime, as an edit gives it
    os.utime(src / "p1.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    (src / "p2.jpg").unlink()
    incremental = pipeline.run_all("t", shard_size=2, run_id="incremental")
    out.append(({k: incremental[k] for k in counts}, documents(spec)))

    # Five new files; the upsert worker dies after its first chunk, then the task is retried.
    for i in range(5):
        make_photo(src / f"late{i}.jpg", seed=200 + i)
    plan = pipeline.plan("t", None, "killed")
    (manifest,) = plan["shards"]
    pre = pipeline.preprocess("t", "v1", manifest)
    emb = pipeline.tag_embed("t", "v1", pre["preprocessed"])
    code = (
        "from imageindex import pipeline; "
        f"pipeline.upsert('t', 'v1', {emb['features']!r}, {pre['preprocessed']!r})"
    )
    env = dict(os.environ, IMAGEINDEX_UPSERT_CHUNK_ROWS="2")
    env["IMAGEINDEX_FAULT_EXIT_AFTER_UPSERT_CHUNKS"] = "1"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 137, proc.stderr[-2000:]
    half = documents(spec)
    assert len(half) == len(out[-1][1]) + 2, "the worker died after its first chunk"
    pipeline.upsert("t", "v1", emb["features"], pre["preprocessed"])
    pipeline.finalize("t", "v1", plan, [])
    store = open_store(spec=dict(spec))
    out.append(({"count_ok": store.count("t", Filter(versions=["v1"]))}, documents(spec)))
    return out


@pytest.mark.slow
def test_pipeline_on_opensearch_equals_lancedb(tmp_path, opensearch_url, monkeypatch):
    src = tmp_path / "src"  # one path for both, so document ids match
    lance = tmp_path / "lance-store"
    on_lance = scenario(
        tmp_path / "lance",
        src,
        f"{{uri: {lance}}}",
        {"uri": str(lance)},
        monkeypatch,
    )
    prefix = f"pipe-{uuid.uuid4().hex[:10]}"
    uri = "opensearch://" + urlsplit(opensearch_url).netloc
    spec = {"type": "opensearch", "uri": uri, "index_prefix": prefix}
    try:
        on_os = scenario(
            tmp_path / "os",
            src,
            f'{{type: opensearch, uri: "{uri}", index_prefix: {prefix}}}',
            spec,
            monkeypatch,
        )
    finally:
        client = open_store(spec=dict(spec)).client
        for name in client.indices.get(index=f"{prefix}-*", ignore_unavailable=True):
            client.indices.delete(index=name)

    (full_counts, full_docs), (inc_counts, inc_docs), (kill_counts, kill_docs) = on_os
    assert full_counts["new"] == full_counts["indexed_ok"] == 6 and len(full_docs) == 6
    assert (inc_counts["new"], inc_counts["changed"], inc_counts["deleted"]) == (2, 1, 1)
    assert len(inc_docs) == 7 and kill_counts == {"count_ok": 12} and len(kill_docs) == 12
    for stage, os_run, lance_run in zip(
        ["full", "incremental", "killed"], on_os, on_lance, strict=True
    ):
        assert os_run[0] == lance_run[0], stage
        assert os_run[1] == lance_run[1], stage


@pytest.mark.slow
def test_node_down_marks_nothing_indexed_and_the_next_run_catches_up(
    tmp_path, own_node, monkeypatch
):
    """The node goes down between embedding and upsert: the upsert fails with a clear error,
    nothing is written, and the next run (node back) finds exactly those files still new."""
    src = tmp_path / "src"
    uri = "opensearch://" + urlsplit(own_node.url).netloc
    spec = {"type": "opensearch", "uri": uri}
    fresh_source(src)
    use_registry(tmp_path, src, f'{{type: opensearch, uri: "{uri}", timeout: 5}}', monkeypatch)
    assert pipeline.run_all("t", run_id="first")["indexed_ok"] == 6

    for i in range(3):
        make_photo(src / f"late{i}.jpg", seed=300 + i)
    plan = pipeline.plan("t", None, "down")
    (manifest,) = plan["shards"]
    pre = pipeline.preprocess("t", "v1", manifest)
    emb = pipeline.tag_embed("t", "v1", pre["preprocessed"])
    own_node.stop()
    with pytest.raises(StoreError, match="cannot reach OpenSearch"):
        pipeline.upsert("t", "v1", emb["features"], pre["preprocessed"])
    pipeline.release_lease("t", "v1", "down")  # what the DAG's teardown does
    with pytest.raises(StoreError, match="cannot reach OpenSearch"):
        pipeline.run_all("t", run_id="while-down")

    own_node.start()
    assert len(documents(spec)) == 6
    again = pipeline.run_all("t", run_id="after")
    assert (again["new"], again["processed"], again["indexed_ok"]) == (3, 3, 9)
    assert set(documents(spec)) == {p.as_uri() for p in src.rglob("*") if p.is_file()}
