from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from imageindex.errors import ConfigError, SourceError
from imageindex.staging import LocalStaging, S3Staging, open_staging

SCHEMA = pa.schema([("id", pa.string()), ("n", pa.int64())])


def table(ids: list[str]) -> pa.Table:
    return pa.table({"id": ids, "n": list(range(len(ids)))}, schema=SCHEMA)


@pytest.fixture(params=["local", "s3"])
def staging(request, tmp_path: Path):
    if request.param == "local":
        return open_staging(str(tmp_path / "staging"))
    fs = request.getfixturevalue("seaweedfs")
    bucket = fs.new_bucket("staging")
    return open_staging(f"s3://{bucket}/stage/root", s3_conn_id=fs.conn_id)


def test_open_staging_kinds(tmp_path: Path):
    assert isinstance(open_staging(str(tmp_path)), LocalStaging)
    assert isinstance(open_staging(tmp_path.as_uri()), LocalStaging)
    s3 = open_staging("s3://bucket/a/b/")
    assert isinstance(s3, S3Staging)
    assert s3.root == "s3://bucket/a/b"
    assert s3.join("x", "y/z.json") == "s3://bucket/a/b/x/y/z.json"
    assert open_staging("s3://bucket").join("k") == "s3://bucket/k"
    with pytest.raises(ConfigError, match="gs://"):
        open_staging("gs://bucket/x")
    with pytest.raises(ConfigError, match="IMAGEINDEX_STAGING"):
        open_staging("")


def test_join_refuses_dotdot(staging):
    with pytest.raises(ConfigError, match=r"\.\."):
        staging.join("runs", "../../etc")


def test_bytes_and_json_round_trip(staging):
    uri = staging.join("runs", "r1", "blob.bin")
    staging.write_bytes(uri, b"\x00\x01payload")
    assert staging.read_bytes(uri) == b"\x00\x01payload"
    staging.write_bytes(uri, b"overwritten")
    assert staging.read_bytes(uri) == b"overwritten"

    doc = {"counts": {"new": 3}, "shards": ["a", "b"], "name": "été ✓"}
    staging.write_json(staging.join("runs", "r1", "plan.json"), doc)
    assert staging.read_json(staging.join("runs", "r1", "plan.json")) == doc


def test_create_if_absent_has_exactly_one_winner(staging):
    """Eight writers race for one uri, ten times: one True each round, its bytes intact."""
    import threading

    for round_ in range(10):
        uri = staging.join("leases", f"race-{round_}.json")
        barrier, wins = threading.Barrier(8), []

        def claim(i: int, uri=uri, barrier=barrier, wins=wins) -> None:
            barrier.wait()
            if staging.create_json(uri, {"run_id": f"run-{i}"}):
                wins.append(f"run-{i}")

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1, (round_, wins)
        assert staging.read_json(uri) == {"run_id": wins[0]}
    assert staging.create_bytes(uri, b"again") is False
    assert staging.read_json(uri) == {"run_id": wins[0]}


def test_read_missing_is_file_not_found(staging):
    with pytest.raises(FileNotFoundError):
        staging.read_bytes(staging.join("nope.bin"))


def test_parquet_round_trip_and_columns(staging):
    uri = staging.join("runs", "r1", "shards", "00000", "manifest.parquet")
    t = table(["a", "b", "c"])
    staging.write_parquet(uri, t)
    assert staging.read_parquet(uri).equals(t)
    assert staging.read_parquet(uri, columns=["id"]).column_names == ["id"]


def test_parquet_writer_commits_on_clean_exit(staging):
    uri = staging.join("runs", "r1", "todo.parquet")
    with staging.parquet_writer(uri, SCHEMA) as writer:
        writer.write_table(table(["a", "b"]))
        writer.write_batch(pa.record_batch([pa.array(["c"]), pa.array([7])], schema=SCHEMA))
        assert not staging.exists(uri)  # nothing visible until the block ends
    got = staging.read_parquet(uri)
    assert got.column("id").to_pylist() == ["a", "b", "c"]


def test_parquet_writer_discards_on_error(staging):
    uri = staging.join("runs", "r1", "todo.parquet")
    staging.write_parquet(uri, table(["old"]))
    with (
        pytest.raises(RuntimeError, match="listing failed"),
        staging.parquet_writer(uri, SCHEMA) as writer,
    ):
        writer.write_table(table(["new1", "new2"]))
        raise RuntimeError("listing failed")
    # The previous file is untouched and no partial or temporary file is left behind.
    assert staging.read_parquet(uri).column("id").to_pylist() == ["old"]
    assert list(staging.list(staging.join("runs"))) == [uri]

    fresh = staging.join("runs", "r2", "todo.parquet")
    with pytest.raises(RuntimeError), staging.parquet_writer(fresh, SCHEMA) as writer:
        writer.write_table(table(["x"]))
        raise RuntimeError("boom")
    assert not staging.exists(fresh)


def test_local_atomic_write_leaves_no_temp_files(tmp_path: Path):
    staging = open_staging(str(tmp_path / "st"))
    uri = staging.join("a", "f.parquet")
    staging.write_parquet(uri, table(["x"]))
    staging.write_bytes(staging.join("a", "b.bin"), b"b")
    with pytest.raises(RuntimeError), staging.parquet_writer(uri, SCHEMA) as writer:
        writer.write_table(table(["y"]))
        raise RuntimeError("crash mid-way")
    with pytest.raises(TypeError):
        staging.write_bytes(staging.join("a", "c.bin"), "not bytes")
    assert sorted(os.listdir(tmp_path / "st" / "a")) == ["b.bin", "f.parquet"]
    assert staging.read_parquet(uri).column("id").to_pylist() == ["x"]


def test_list_exists_and_delete_prefix(staging):
    run = staging.join("runs", "ds", "v1", "run1")
    sibling = staging.join("runs", "ds", "v1", "run10")  # shares a name prefix with run1
    files = [
        f"{run}/plan.json",
        f"{run}/shards/00000/manifest.parquet",
        f"{run}/shards/00001/manifest.parquet",
        f"{run}/shards.json",  # sorts before "shards/..." as a key
        f"{run}/z.json",
    ]
    for f in files:
        staging.write_bytes(f, b"x")
    staging.write_bytes(f"{sibling}/plan.json", b"y")

    listed = list(staging.list(run))
    if isinstance(staging, LocalStaging):
        assert listed == sorted(files)  # the key order of AWS S3
    else:
        # SeaweedFS lists a folder's subtree before its siblings ("shards/..." before
        # "shards.json"), unlike AWS; only the set is common ground.
        assert sorted(listed) == sorted(files)
    assert sorted(staging.list(f"{run}/shards")) == sorted(files[1:3])
    assert list(staging.list(staging.join("nothing"))) == []
    assert staging.exists(run)
    assert staging.exists(f"{run}/plan.json")
    assert not staging.exists(f"{run}/missing.json")
    assert not staging.exists(staging.join("runs", "ds", "v1", "run"))  # not a name prefix

    assert staging.delete_prefix(f"{run}/plan.json") == 1
    assert staging.delete_prefix(run) == 4
    assert not staging.exists(run)
    assert list(staging.list(run)) == []
    assert staging.delete_prefix(run) == 0
    assert staging.read_bytes(f"{sibling}/plan.json") == b"y"  # untouched


@pytest.mark.parametrize("where", ["sibling", "dotdot"])
def test_uris_outside_root_are_refused(staging, tmp_path: Path, where):
    if where == "dotdot":
        outside = staging.root + "/runs/../../x.bin"
    elif isinstance(staging, LocalStaging):
        outside = str(tmp_path / "elsewhere" / "x.bin")
    else:
        outside = staging.root.rsplit("/", 1)[0] + "/rootx/x.bin"
    for op in (
        lambda: staging.write_bytes(outside, b"x"),
        lambda: staging.read_bytes(outside),
        lambda: staging.delete_prefix(outside),
        lambda: list(staging.list(outside)),
        lambda: staging.exists(outside),
    ):
        with pytest.raises(ConfigError, match="outside the staging root"):
            op()


def test_local_files_get_the_usual_permissions(tmp_path: Path):
    staging = open_staging(str(tmp_path / "st"))
    uri = staging.join("t.jpg")
    staging.write_bytes(uri, b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert Path(uri).stat().st_mode & 0o777 == 0o666 & ~umask


def test_local_accepts_paths_and_file_uris(tmp_path: Path):
    staging = open_staging((tmp_path / "st").as_uri())
    assert staging.root == str(tmp_path / "st")
    staging.write_bytes((tmp_path / "st" / "a.bin").as_uri(), b"1")
    assert staging.read_bytes(str(tmp_path / "st" / "a.bin")) == b"1"


def test_local_delete_root_keeps_the_folder(tmp_path: Path):
    staging = open_staging(str(tmp_path / "st"))
    staging.write_bytes(staging.join("a", "b.bin"), b"1")
    staging.write_bytes(staging.join("c.bin"), b"2")
    assert staging.delete_prefix(staging.root) == 2
    assert (tmp_path / "st").is_dir() and not any((tmp_path / "st").iterdir())


def test_s3_deletes_in_batches(seaweedfs, monkeypatch):
    monkeypatch.setattr(S3Staging, "DELETE_BATCH", 3)
    bucket = seaweedfs.new_bucket("many")
    staging = open_staging(f"s3://{bucket}", s3_conn_id=seaweedfs.conn_id)
    client = seaweedfs.client()
    for i in range(8):
        client.put_object(Bucket=bucket, Key=f"run/{i:05d}", Body=b"")
    # What each DeleteObjects request carries, seen by botocore's own event hook (S3 takes at
    # most 1000 keys a request; DELETE_BATCH is 3 here, so 8 keys need three requests).
    sizes: list[int] = []

    def count_keys(params, **_):
        sizes.append(len(params["Delete"]["Objects"]))

    staging.client.meta.events.register("before-parameter-build.s3.DeleteObjects", count_keys)
    try:
        assert staging.delete_prefix(staging.join("run")) == 8
    finally:
        staging.client.meta.events.unregister("before-parameter-build.s3.DeleteObjects", count_keys)
    assert sizes == [3, 3, 2]
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_s3_missing_bucket(seaweedfs):
    staging = open_staging("s3://no-such-staging-bucket/x", s3_conn_id=seaweedfs.conn_id)
    with pytest.raises(SourceError, match="no-such-staging-bucket") as exc:
        staging.write_bytes(staging.join("a.bin"), b"x")
    assert seaweedfs.secret_key not in str(exc.value)
    with pytest.raises(SourceError, match="does not exist"):
        staging.read_bytes(staging.join("a.bin"))
    with pytest.raises(SourceError, match="does not exist"):
        list(staging.list(staging.root))
