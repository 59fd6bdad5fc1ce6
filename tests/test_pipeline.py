"""The pipeline stages run in-process (no Airflow) on real files, models and LanceDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from imagezoo import make_photo, make_zoo

import imageindex.preprocess
from imageindex import pipeline
from imageindex.errors import ConfigError, SourceError, UnsafeDeleteError
from imageindex.pipeline import shard_plan
from imageindex.stores import open_store
from imageindex.stores.base import Filter

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("n", "size", "cap", "expected"),
    [
        (0, 500, 256, (0, 500)),
        (1, 500, 256, (1, 500)),
        (500, 500, 256, (1, 500)),
        (501, 500, 256, (2, 500)),
        (10_000_000, 500, 256, (256, 39063)),
        (10_000_000, 500, 1000, (1000, 10000)),
    ],
)
def test_shard_plan_caps_the_number_of_shards(n, size, cap, expected):
    assert shard_plan(n, size, cap) == expected
    shards, per = shard_plan(n, size, cap)
    assert shards <= cap and shards * per >= n


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """A registry with one dataset ``t`` over a local folder, all state under tmp_path."""
    src = tmp_path / "src"
    src.mkdir()
    reg = tmp_path / "registry.yaml"
    reg.write_text(
        f"""
datasets:
  - id: t
    versions:
      v1: {{source: {src}}}
    store: {{uri: {tmp_path / "store"}}}
    tagger: {{type: offline, definitions: {REPO / "config" / "tags" / "samples.json"}}}
""",
        encoding="utf-8",
    )
    monkeypatch.setenv("IMAGEINDEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMAGEINDEX_REGISTRY", str(reg))
    monkeypatch.delenv("IMAGEINDEX_STAGING", raising=False)
    return {"src": src, "registry": reg, "store": tmp_path / "store", "tmp": tmp_path}


def stored(dataset) -> dict[str, dict]:
    store = open_store(str(dataset["store"]))
    ids = [
        r["id"] for b in store.iter_state("t", "v1") for r in pa.Table.from_batches([b]).to_pylist()
    ]
    return {d["uri"]: d for d in store.get("t", ids)}


def test_incremental_runs_process_exactly_what_changed(dataset):
    src = dataset["src"]
    for i in range(6):
        make_photo(src / f"p{i}.jpg", seed=i)
    first = pipeline.run_all("t", shard_size=2)
    assert (first["new"], first["processed"], first["shards"]) == (6, 6, 3)
    assert first["indexed_ok"] == 6
    before = stored(dataset)

    make_photo(src / "new1.jpg", seed=100)
    make_photo(src / "sub" / "new2.png", seed=101, fmt="PNG")
    old_fp = before[(src / "p1.jpg").as_uri()]["fingerprint"]
    make_photo(src / "p1.jpg", seed=999)  # new content
    st = (src / "p1.jpg").stat()
    os.utime(src / "p1.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    (src / "p2.jpg").unlink()

    second = pipeline.run_all("t", shard_size=2)
    assert (second["new"], second["changed"], second["deleted"]) == (2, 1, 1)
    assert second["processed"] == 3
    assert second["unchanged"] == 4
    now = stored(dataset)
    expected = {p.as_uri() for p in src.rglob("*") if p.is_file()}
    assert set(now) == expected and len(now) == 7
    assert now[(src / "p1.jpg").as_uri()]["fingerprint"] != old_fp
    # Unchanged files were not rewritten.
    p0 = (src / "p0.jpg").as_uri()
    assert now[p0]["indexed_at"] == before[p0]["indexed_at"]

    third = pipeline.run_all("t")
    assert (third["processed"], third["deleted"], third["new"], third["changed"]) == (0, 0, 0, 0)
    assert third["shards"] == 0

    full = pipeline.run_all("t", mode="full")
    assert full["processed"] == 7 and full["new"] == 0
    assert len(stored(dataset)) == 7


def test_bad_file_zoo_every_good_file_indexed_every_bad_one_reported(dataset):
    expected = make_zoo(dataset["src"])
    report = pipeline.run_all("t", shard_size=5)
    docs = stored(dataset)
    by_key = {d["key"]: d for d in docs.values()}
    assert set(by_key) == set(expected), "every listed file has a document, nothing else"
    for key, reason in expected.items():
        doc = by_key[key]
        if reason is None:
            assert doc["status"] == "ok", (key, doc["error"])
            assert doc["width"] and doc["height"] and doc["thumbnail_uri"]
        else:
            assert doc["status"] == "failed", key
            assert doc["error"].startswith(reason), (key, doc["error"])
    bad = {k: r for k, r in expected.items() if r}
    assert report["failed"] == len(bad)
    assert {f["uri"]: f["reason"] for f in report["failures"]} == {
        (dataset["src"] / k).as_uri(): r for k, r in bad.items()
    }
    # Failed documents never come back from a vector search.
    store = open_store(str(dataset["store"]))
    from imageindex.embedders import get_embedder

    vec = get_embedder({"type": "offline"}).embed_texts(["a photo"])[0]
    hits = store.search("t", vec, Filter(versions=["v1"]), top_k=100)
    assert {h.uri for h in hits} == {d["uri"] for d in docs.values() if d["status"] == "ok"}


def test_empty_listing_deletes_nothing_and_fails_loudly(dataset):
    src = dataset["src"]
    for i in range(3):
        make_photo(src / f"p{i}.jpg", seed=i)
    pipeline.run_all("t")
    for p in src.iterdir():
        p.unlink()
    with pytest.raises(UnsafeDeleteError, match="listed no images"):
        pipeline.run_all("t")
    assert len(stored(dataset)) == 3


def test_shrinking_beyond_the_fraction_deletes_nothing(dataset, monkeypatch):
    src = dataset["src"]
    for i in range(4):
        make_photo(src / f"p{i}.jpg", seed=i)
    pipeline.run_all("t")
    for i in range(3):
        (src / f"p{i}.jpg").unlink()
    with pytest.raises(UnsafeDeleteError, match="IMAGEINDEX_MAX_DELETE_FRACTION"):
        pipeline.run_all("t")
    assert len(stored(dataset)) == 4
    monkeypatch.setenv("IMAGEINDEX_MAX_DELETE_FRACTION", "1.0")
    assert pipeline.run_all("t")["deleted"] == 3
    assert len(stored(dataset)) == 1


def test_missing_source_folder_fails_before_any_delete(dataset):
    make_photo(dataset["src"] / "a.jpg")
    pipeline.run_all("t")
    dataset["src"].rename(dataset["tmp"] / "unmounted")
    with pytest.raises(SourceError, match="does not exist or is not mounted") as exc:
        pipeline.run_all("t")
    assert str(dataset["src"]) in str(exc.value)
    assert len(stored(dataset)) == 1


def test_killed_upsert_then_retry_equals_a_clean_run(dataset, tmp_path):
    src = dataset["src"]
    for i in range(12):
        make_photo(src / f"p{i:02d}.jpg", seed=i)
    plan = pipeline.plan("t", None, "run1")
    assert len(plan["shards"]) == 1
    manifest = plan["shards"][0]
    pre = pipeline.preprocess("t", "v1", manifest)
    emb = pipeline.tag_embed("t", "v1", pre["preprocessed"])
    code = (
        "from imageindex import pipeline; "
        f"pipeline.upsert('t', 'v1', {emb['features']!r}, {pre['preprocessed']!r})"
    )
    env = dict(os.environ)
    env.update(IMAGEINDEX_UPSERT_CHUNK_ROWS="5", IMAGEINDEX_FAULT_EXIT_AFTER_UPSERT_CHUNKS="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert len(stored(dataset)) == 5, "the worker died after its first chunk"

    # The retry (same task, same inputs) completes the shard.
    pipeline.upsert("t", "v1", emb["features"], pre["preprocessed"])
    pipeline.finalize("t", "v1", plan, [])
    retried = stored(dataset)

    # A clean run into a fresh store gives the same documents.
    clean_store = tmp_path / "clean"
    reg = dataset["registry"]
    reg.write_text(reg.read_text().replace(str(dataset["store"]), str(clean_store)))
    pipeline.run_all("t", run_id="clean")
    clean = {
        d["uri"]: d
        for d in open_store(str(clean_store)).get(
            "t",
            [
                r
                for b in open_store(str(clean_store)).iter_state("t", "v1")
                for r in b.column("id").to_pylist()
            ],
        )
    }
    assert set(retried) == set(clean) and len(retried) == 12
    keys = ("id", "fingerprint", "status", "width", "height", "tags_ai")
    for uri, doc in clean.items():
        assert {k: retried[uri][k] for k in keys} == {k: doc[k] for k in keys}
    assert open_store(str(dataset["store"])).count("t", Filter(versions=["v1"])) == 12


def test_retried_shard_never_duplicates(dataset):
    src = dataset["src"]
    for i in range(4):
        make_photo(src / f"p{i}.jpg", seed=i)
    plan = pipeline.plan("t", None, "r")
    for _ in range(2):
        pipeline.run_shard("t", "v1", plan["shards"][0])
    store = open_store(str(dataset["store"]))
    assert store.count("t", Filter(versions=["v1"], status=None)) == 4


def test_parallel_shards_lose_no_write(dataset):
    """Shards upserted from several processes at once (as on parallel workers) all land."""
    src = dataset["src"]
    for i in range(24):
        make_photo(src / f"p{i:02d}.jpg", size=(96, 64), seed=i)
    plan = pipeline.plan("t", None, "par", shard_size=4)
    assert len(plan["shards"]) == 6
    features = []
    for m in plan["shards"]:
        pre = pipeline.preprocess("t", "v1", m)
        features.append((pipeline.tag_embed("t", "v1", pre["preprocessed"]), pre))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from imageindex import pipeline; "
                f"pipeline.upsert('t', 'v1', {e['features']!r}, {p['preprocessed']!r})",
            ],
        )
        for e, p in features
    ]
    t0 = time.time()
    assert [p.wait(timeout=300) for p in procs] == [0] * 6, time.time() - t0
    assert open_store(str(dataset["store"])).count("t", Filter(versions=["v1"])) == 24


def test_changed_tag_definitions_retag_every_file(dataset):
    import json as _json

    defs = dataset["tmp"] / "tags.json"
    defs.write_text((REPO / "config" / "tags" / "samples.json").read_text(), encoding="utf-8")
    reg = dataset["registry"]
    reg.write_text(
        reg.read_text().replace(str(REPO / "config" / "tags" / "samples.json"), str(defs))
    )
    src = dataset["src"]
    for i in range(3):
        make_photo(src / f"p{i}.jpg", seed=i)
    (src / "bad.jpg").write_bytes(b"not an image")
    pipeline.run_all("t")
    assert pipeline.run_all("t")["processed"] == 0
    first_hash = {
        d["tag_definitions_hash"] for d in stored(dataset).values() if d["status"] == "ok"
    }

    obj = _json.loads(defs.read_text())
    obj["tags"]["Gradient"] = "A smooth colour gradient with simple shapes."
    defs.write_text(_json.dumps(obj), encoding="utf-8")
    report = pipeline.run_all("t")
    # The three good files are re-tagged; the failed one has no tags to redo.
    assert (report["retag"], report["processed"], report["new"], report["changed"]) == (3, 3, 0, 0)
    docs = [d for d in stored(dataset).values() if d["status"] == "ok"]
    assert {d["tag_definitions_hash"] for d in docs}.isdisjoint(first_hash)
    assert pipeline.run_all("t")["processed"] == 0


def test_one_run_per_version_at_a_time_other_versions_go_ahead(dataset, monkeypatch):
    from imageindex.errors import VersionBusyError

    src, tmp = dataset["src"], dataset["tmp"]
    make_photo(src / "a.jpg", seed=1)
    other = tmp / "other"
    other.mkdir()
    make_photo(other / "b.jpg", seed=2)
    reg = dataset["registry"]
    reg.write_text(
        reg.read_text().replace("      v1: {", f"      v2: {{source: {other}}}\n      v1: {{")
    )

    first = pipeline.plan("t", "v1", "run-a")
    with pytest.raises(VersionBusyError, match="run-a is indexing t/v1"):
        pipeline.plan("t", "v1", "run-b")
    # another version is not held up: a backfill of v2 runs while v1's run is open
    assert pipeline.run_all("t", "v2", run_id="backfill-v2")["indexed_ok"] == 1
    # the same run may re-plan (an Airflow retry of plan)
    first = pipeline.plan("t", "v1", "run-a")
    results = [pipeline.run_shard("t", "v1", s) for s in first["shards"]]
    pipeline.finalize("t", "v1", first, results)
    assert pipeline.run_all("t", "v1", run_id="run-b")["unchanged"] == 1

    # a failed run's lease is given back by the teardown; an expired one is taken over
    pipeline.plan("t", "v1", "run-c")
    assert pipeline.release_lease("t", "v1", "someone-else") is False
    assert pipeline.release_lease("t", "v1", "run-c") is True
    monkeypatch.setenv("IMAGEINDEX_RUN_LEASE_S", "1")
    pipeline.plan("t", "v1", "run-d")
    time.sleep(1.1)
    pipeline.plan("t", "v1", "run-e")


def test_plans_racing_for_a_version_leave_exactly_one_holder(dataset):
    """Two scheduled runs whose plans start together (a cron catching up): one plans, the
    other is refused with VersionBusyError naming it (the DAG then skips), never both."""
    import threading

    from imageindex.errors import VersionBusyError
    from imageindex.pipeline.context import open_run
    from imageindex.pipeline.lease import acquire_lease

    for round_ in range(5):
        barrier, won, refused = threading.Barrier(6), [], []

        def claim(i: int, round_=round_, barrier=barrier, won=won, refused=refused) -> None:
            run_id = f"r{round_}-{i}"
            ctx = open_run("t", "v1", run_id)
            barrier.wait()
            try:
                acquire_lease(ctx, run_id)
                won.append(run_id)
            except VersionBusyError as exc:
                refused.append(str(exc))

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(refused) == 5, (won, refused)
        assert all(f"run {won[0]} is indexing t/v1" in msg for msg in refused), refused
        assert pipeline.release_lease("t", "v1", won[0]) is True


def test_a_plan_that_fails_gives_the_lease_back(dataset):
    import shutil

    make_photo(dataset["src"] / "a.jpg", seed=1)
    pipeline.run_all("t")
    shutil.rmtree(dataset["src"])
    from imageindex.errors import SourceError

    with pytest.raises(SourceError):
        pipeline.plan("t", "v1", "r1")
    dataset["src"].mkdir()
    make_photo(dataset["src"] / "a.jpg", seed=1)
    pipeline.plan("t", "v1", "r2")  # not refused: r1 released its claim when it failed


FAULT_PROBE = "import sys; from imageindex import pipeline; pipeline.fault_point(*sys.argv[1:])"


def fault_exit(env: dict, *args: str) -> int:
    """Exit code of a process that passes the fault point ``args`` (stage, dataset, version)."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("IMAGEINDEX_FAULT", "AIRFLOW_CTX"))
    }
    clean.pop("IMAGEINDEX_TRY_NUMBER", None)
    proc = subprocess.run(
        [sys.executable, "-c", FAULT_PROBE, *args], env={**clean, **env}, capture_output=True
    )
    return proc.returncode


def test_fault_hook_kills_only_the_tries_it_names(tmp_path):
    spec = {"IMAGEINDEX_FAULT_EXIT_IN": "tag_embed@1"}
    assert fault_exit({**spec, "IMAGEINDEX_TRY_NUMBER": "1"}, "tag_embed") == 137
    assert fault_exit({**spec, "IMAGEINDEX_TRY_NUMBER": "2"}, "tag_embed") == 0
    assert fault_exit({**spec, "AIRFLOW_CTX_TRY_NUMBER": "2"}, "tag_embed") == 0
    assert fault_exit({**spec, "IMAGEINDEX_TRY_NUMBER": "1"}, "upsert") == 0
    assert fault_exit(spec, "tag_embed") == 137  # outside Airflow: the first try
    two = {"IMAGEINDEX_FAULT_EXIT_IN": "preprocess@1,2"}
    assert [fault_exit({**two, "IMAGEINDEX_TRY_NUMBER": t}, "preprocess") for t in "123"] == [
        137,
        137,
        0,
    ]
    every = {"IMAGEINDEX_FAULT_EXIT_IN": "plan"}
    assert fault_exit({**every, "IMAGEINDEX_TRY_NUMBER": "5"}, "plan") == 137
    assert fault_exit({"IMAGEINDEX_FAULT_EXIT_IN": "tag_embed@x"}, "tag_embed") == 1
    with pytest.raises(ConfigError, match="stage 'embed'"):
        pipeline.parse_fault_spec("embed@1")

    # The fault file is read at each fault point: a scenario changes it without a restart.
    fault_file = tmp_path / "fault.json"
    env = {"IMAGEINDEX_FAULT_FILE": str(fault_file), "IMAGEINDEX_TRY_NUMBER": "1"}
    assert fault_exit(env, "tag_embed", "t", "v1") == 0  # no file: no fault
    fault_file.write_text('{"stage": "tag_embed", "tries": [1], "dataset": "t", "version": "v1"}')
    assert fault_exit(env, "tag_embed", "t", "v1") == 137
    assert fault_exit(env, "tag_embed", "t", "v2") == 0
    assert fault_exit(env, "tag_embed", "other", "v1") == 0
    assert fault_exit({**env, "IMAGEINDEX_TRY_NUMBER": "2"}, "tag_embed", "t", "v1") == 0
    fault_file.write_text('{"stage": "upsert"}')
    assert fault_exit(env, "tag_embed", "t", "v1") == 0
    assert fault_exit({**env, "IMAGEINDEX_TRY_NUMBER": "3"}, "upsert", "t", "v1") == 137

    # hang_s: the process stays at the fault point that long, then carries on (no exit).
    fault_file.write_text('{"stage": "upsert", "hang_s": 1.5}')
    t0 = time.perf_counter()
    assert fault_exit(env, "upsert", "t", "v1") == 0
    assert time.perf_counter() - t0 >= 1.5
    fault_file.write_text('{"stage": "upsert", "hang_s": "long"}')
    assert fault_exit(env, "upsert", "t", "v1") == 1  # ConfigError naming the file


def test_cleared_shards_take_the_lease_again_and_never_overlap_another_run(dataset):
    from imageindex.errors import VersionBusyError

    for i in range(2):
        make_photo(dataset["src"] / f"p{i}.jpg", seed=i)
    first = pipeline.plan("t", "v1", "run-a", shard_size=1)
    done = pipeline.run_shard("t", "v1", first["shards"][0], run_id="run-a")
    # run-a failed: its teardown gave the version back
    assert pipeline.release_lease("t", "v1", "run-a") is True
    lease = Path(pipeline.open_run("t", "v1", "run-a").staging.root) / "leases/t/v1.json"
    assert not lease.exists()

    # "Clear failed": the shard re-runs and takes the version again for run-a ...
    redone = pipeline.run_shard("t", "v1", first["shards"][1], run_id="run-a")
    assert json.loads(lease.read_text())["run_id"] == "run-a"
    # ... so another run of the version is refused while it works
    with pytest.raises(VersionBusyError, match="run-a is indexing t/v1"):
        pipeline.plan("t", "v1", "run-b")
    report = pipeline.finalize("t", "v1", first, [done, redone])
    assert report["indexed_ok"] == 2 and not lease.exists()

    # When another run holds the version, a cleared stage of run-a fails naming it.
    second = pipeline.plan("t", "v1", "run-b", mode="full", shard_size=1)
    for stage in (
        lambda: pipeline.preprocess("t", "v1", first["shards"][0], run_id="run-a"),
        lambda: pipeline.tag_embed("t", "v1", "unused", run_id="run-a"),
        lambda: pipeline.upsert("t", "v1", "unused", "unused", run_id="run-a"),
        lambda: pipeline.finalize("t", "v1", first, []),
    ):
        with pytest.raises(VersionBusyError, match="run run-b is indexing t/v1"):
            stage()
    assert json.loads(lease.read_text())["run_id"] == "run-b"  # run-a's teardown: not its lease
    assert pipeline.release_lease("t", "v1", "run-a") is False
    # the holder renews its lease from stage to stage, keeping when it started
    started = json.loads(lease.read_text())["started_at"]
    pipeline.run_shard("t", "v1", second["shards"][0], run_id="run-b")
    assert json.loads(lease.read_text())["started_at"] == started
    assert pipeline.release_lease("t", "v1", "run-b") is True


def test_asset_events_only_when_the_version_changed(dataset):
    make_photo(dataset["src"] / "a.jpg", seed=1)
    make_photo(dataset["src"] / "c.jpg", seed=3)
    first = pipeline.run_all("t")
    events = pipeline.asset_events(first)
    assert events["dataset"]["dataset_version"] == "v1" and events["dataset"]["new"] == 2
    assert events["features"]["rows"] == 2 and events["features"]["rewritten"] is True
    assert pipeline.asset_events(pipeline.run_all("t")) is None  # no change: no event
    (dataset["src"] / "a.jpg").unlink()
    make_photo(dataset["src"] / "b.jpg", seed=2)
    events = pipeline.asset_events(pipeline.run_all("t"))
    assert (events["dataset"]["new"], events["dataset"]["deleted"]) == (1, 1)


def test_content_reuse_by_default_reads_only_files_that_may_match(dataset):
    import shutil

    src, tmp = dataset["src"], dataset["tmp"]
    for i in range(6):
        make_photo(src / f"p{i}.jpg", seed=i)
    first = pipeline.run_all("t")
    assert first["indexed_ok"] == 6 and first["content_checks"] == 0  # nothing indexed before
    docs = stored(dataset)
    assert all(d["fingerprint"].startswith("sha256:") for d in docs.values())

    # Same size and mtime: unchanged without reading. Proof: new bytes behind the same stat
    # go unnoticed (a run that read the file would redo it).
    p5 = src / "p5.jpg"
    st = p5.stat()
    p5.write_bytes(bytes(reversed(p5.read_bytes())))
    os.utime(p5, ns=(st.st_atime_ns, st.st_mtime_ns))
    quiet = pipeline.run_all("t")
    assert (quiet["processed"], quiet["content_checks"], quiet["content_bytes_read"]) == (0, 0, 0)
    shutil.copyfile(src / "p4.jpg", p5)  # back to an image
    os.utime(p5, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))

    # Touched, same content: read once, recognised, copied with its new mtime, not re-embedded.
    p0 = src / "p0.jpg"
    st = p0.stat()
    os.utime(p0, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    touched = pipeline.run_all("t")
    assert touched["changed"] == 2 and touched["reused"] == 2  # p0 (itself), p5 (= p4)
    assert touched["content_checks"] == 2
    assert touched["content_bytes_read"] == p0.stat().st_size + p5.stat().st_size
    after = stored(dataset)
    assert after[p0.as_uri()]["indexed_at"] > docs[p0.as_uri()]["indexed_at"]
    assert after[p5.as_uri()]["fingerprint"] == after[(src / "p4.jpg").as_uri()]["fingerprint"]
    assert pipeline.run_all("t")["processed"] == 0

    # A new version in a new folder: a copy of v1 plus two new files.
    v2 = tmp / "v2"
    shutil.copytree(src, v2)
    make_photo(v2 / "new1.jpg", seed=101)
    make_photo(v2 / "sub" / "new2.png", seed=102, fmt="PNG")
    reg = dataset["registry"]
    reg.write_text(
        reg.read_text().replace("      v1: {", f"      v2: {{source: {v2}}}\n      v1: {{")
    )
    report = pipeline.run_all("t", "v2")
    assert (report["new"], report["reused"], report["indexed_ok"]) == (8, 6, 8)
    assert report["content_checks"] == 6  # the copies: an indexed document has their size
    assert report["content_bytes_read"] == sum(p.stat().st_size for p in src.glob("*.jpg"))


# --------------------------------------------------------------------------------------------
# tag_embed reads the model input preprocess stored (shards/<n>/model_input.parquet)


@pytest.fixture
def shard(dataset) -> str:
    """One preprocessed shard: three photos (one of them portrait) and a broken file."""
    for i, size in enumerate([(640, 480), (480, 640), (1024, 768)]):
        make_photo(dataset["src"] / f"p{i}.jpg", size=size, seed=i)
    (dataset["src"] / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    plan = pipeline.plan("t", "v1", "manual__model_input", shard_size=10)
    pipeline.release_lease("t", "v1", "manual__model_input")
    return pipeline.preprocess("t", "v1", plan["shards"][0])["preprocessed"]


def features(uri: str) -> tuple[np.ndarray, list, list]:
    table = pq.read_table(uri).sort_by("id")
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    return vectors, table.column("tags_ai").to_pylist(), table.column("tags_detail").to_pylist()


def model_inputs(shard: str) -> Path:
    return Path(shard).with_name("model_input.parquet")


def test_tag_embed_uses_the_stored_model_input_and_matches_decoding(shard, monkeypatch):
    ok = {r["id"] for r in pq.read_table(shard).to_pylist() if r["ok"]}
    stored = pq.read_table(model_inputs(shard)).to_pylist()
    assert len(ok) == 3 and {r["id"] for r in stored} == ok  # the broken file has none
    assert all(len(r["pixels"]) == 224 * 224 * 3 for r in stored)
    # Stored plain (no compression, no dictionary): read back ~12x faster than the defaults.
    column = pq.ParquetFile(model_inputs(shard)).metadata.row_group(0).column(1)
    assert (column.compression, column.has_dictionary_page) == ("UNCOMPRESSED", False)

    def no_decoding(*args, **kwargs):
        raise AssertionError("tag_embed decoded a thumbnail although its model input is stored")

    with monkeypatch.context() as m:
        m.setattr(imageindex.preprocess, "load_model_input", no_decoding)
        result = pipeline.tag_embed("t", "v1", shard)
    assert (result["embedded"], result["model_failed"]) == (3, 0)
    from_pixels = features(result["features"])

    # A shard preprocessed before model inputs were stored: the thumbnails are decoded, and the
    # vectors and tags are the same to the bit.
    model_inputs(shard).unlink()
    from_thumbnails = features(pipeline.tag_embed("t", "v1", shard)["features"])
    assert np.array_equal(from_pixels[0], from_thumbnails[0])
    assert from_pixels[1:] == from_thumbnails[1:]
    assert any(from_pixels[1])  # tags were given, so equal tags mean something


def test_shards_over_the_limit_leave_the_model_input_out(shard):
    with_pixels = features(pipeline.tag_embed("t", "v1", shard)["features"])
    # 150 KB an image in memory until the shard is written: a huge shard stores none.
    manifest = str(Path(shard).with_name("manifest.parquet"))
    assert pipeline.preprocess("t", "v1", manifest, model_input_max_rows=3)["ok"] == 3
    assert pq.read_table(model_inputs(shard)).num_rows == 0
    decoded = features(pipeline.tag_embed("t", "v1", shard)["features"])
    assert np.array_equal(with_pixels[0], decoded[0]) and with_pixels[1:] == decoded[1:]
