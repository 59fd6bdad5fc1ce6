"""Faults (issue 7): killed workers, sources that disappear, a store that goes down.

Everything is real: files on disk, the SeaweedFS S3 server, LanceDB (locally and on S3), the
offline model. The outages are real too: a worker process is killed with the pipeline's fault
injection (exit 137, like the OOM killer), a folder is removed or unmounted, and S3 endpoints go
down by closing the port a :class:`TcpProxy` forwards to SeaweedFS (open connections are cut,
new ones are refused), then come back on the same port.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from imagezoo import make_photo

from imageindex import pipeline
from imageindex.errors import SourceError, StoreError, UnsafeDeleteError
from imageindex.s3util import clear_client_cache
from imageindex.staging import TMP_SUFFIX
from imageindex.stores import open_store
from imageindex.stores.base import Filter

REPO = Path(__file__).resolve().parent.parent
TAGS = REPO / "config" / "tags" / "samples.json"
SIZE = (160, 120)  # small photos: the faults matter here, not the pixels
#: A failing call must give up within this many seconds (no endless retry inside the library).
BOUNDED_S = 60.0
#: Document fields a retried run must reproduce exactly.
COMPARED = (
    "id",
    "key",
    "fingerprint",
    "status",
    "error",
    "width",
    "height",
    "tags_ai",
    "thumbnail_uri",
)
FAULT_VARS = (
    "IMAGEINDEX_FAULT_EXIT_IN",
    "IMAGEINDEX_FAULT_FILE",
    "IMAGEINDEX_TRY_NUMBER",
    "AIRFLOW_CTX_TRY_NUMBER",
    "IMAGEINDEX_FAULT_EXIT_AFTER_UPSERT_CHUNKS",
    "IMAGEINDEX_UPSERT_CHUNK_ROWS",
)
FAULT_CONN_ID = "fault_s3"


# --------------------------------------------------------------------------------------------
# Helpers


class TcpProxy:
    """Forwards a fixed loopback port to ``target``; ``down()`` is an outage, ``up()`` its end.

    ``down()`` stops listening (new connections are refused) and cuts every forwarded connection
    (pooled keep-alive connections die too); ``up()`` listens on the same port again.
    ``cut_on(pattern)`` goes down at the first HTTP request whose request line matches.
    """

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._trigger: tuple[re.Pattern[bytes], Callable[[str], None] | None] | None = None
        self._mute = False
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        with self._lock:
            self._trigger, self._mute = None, False
            if self._listener is not None:
                return
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(64)
            self.port = sock.getsockname()[1]
            self._listener = sock
            self._thread = threading.Thread(target=self._accept, args=(sock,), daemon=True)
            self._thread.start()

    def down(self) -> None:
        with self._lock:
            sock, self._listener = self._listener, None
            conns, self._conns = list(self._conns), set()
        if sock is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not, and
            # the port would keep completing handshakes.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def cut_on(self, pattern: bytes, *, delivered: Callable[[str], None] | None = None) -> None:
        """Go down at the first request whose request line (``METHOD /path``) matches.

        Without ``delivered`` the request never reaches the server. With it, the request is
        forwarded but its response is dropped (a lost acknowledgement); the outage starts once
        ``delivered(path)`` returns, which waits until the server has acted on the request.
        """
        with self._lock:
            self._trigger = (re.compile(pattern), delivered)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            for src, dst, outbound in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, outbound), daemon=True).start()

    def _tripped(self, data: bytes) -> bool:
        """Whether ``data`` (client to server) starts a request that sets off the cut."""
        line = re.match(rb"([A-Z]+ \S+) HTTP/1\.[01]\r\n", data)
        with self._lock:
            trigger = self._trigger
            if line is None or trigger is None or not trigger[0].search(line.group(1)):
                return False
            self._trigger = None
            delivered = trigger[1]
            if delivered is not None:
                self._mute = True
        if delivered is None:
            self.down()  # before the client's retry can get through
            self.cut.set()
            return True
        path = line.group(1).split(b" ", 1)[1].decode()

        def later() -> None:
            try:
                delivered(path)
            finally:
                self.cut.set()
                self.down()

        threading.Thread(target=later, daemon=True).start()
        return False

    def _pipe(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        try:
            while data := src.recv(65536):
                if outbound and self._tripped(data):
                    break
                if not outbound and self._mute:
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)
            src.close()


def write_registry(path: Path, *, source: str, store: dict, s3_conn_id: str | None = None) -> Path:
    """Dataset ``t`` (version v1) over ``source``, indexed into ``store`` (a registry store spec)."""
    conn = f"\n    s3_conn_id: {s3_conn_id}" if s3_conn_id else ""
    path.write_text(
        f"""
datasets:
  - id: t
    versions:
      v1: {{source: {json.dumps(source)}}}
    store: {json.dumps(store)}
    tagger: {{type: offline, definitions: {json.dumps(str(TAGS))}}}{conn}
""",
        encoding="utf-8",
    )
    return path


def docs_in(store_spec: dict) -> dict[str, dict]:
    """uri -> document of every document of t/v1 (the index as plan and search see it)."""
    store = open_store(spec=store_spec)
    if store.table_info("t") is None:
        return {}
    ids = [i for b in store.iter_state("t", "v1") for i in b.column("id").to_pylist()]
    assert len(ids) == len(set(ids)), "duplicate ids in the index"
    docs = store.get("t", ids)
    by_uri = {d["uri"]: d for d in docs}
    assert len(by_uri) == len(docs), "one uri indexed twice"
    return by_uri


def count_in(store_spec: dict) -> int:
    return open_store(spec=store_spec).count("t", Filter(versions=["v1"], status=None))


def photos(folder: Path, names, seed0: int = 0) -> list[str]:
    """Write photos; return their uris."""
    return [
        make_photo(folder / name, size=SIZE, seed=seed0 + i).as_uri()
        for i, name in enumerate(names)
    ]


def tmp_leftovers(root: Path) -> list[Path]:
    return list(root.rglob(f"*{TMP_SUFFIX}")) if root.exists() else []


def timed(fn, *args, **kwargs):
    """(exception raised by ``fn``, seconds it took); fails when ``fn`` returns."""
    t0 = time.monotonic()
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the caller checks the type
        seconds = time.monotonic() - t0
        print(f"{fn.__name__} failed after {seconds:.1f}s: {type(exc).__name__}: {exc}")
        return exc, seconds
    pytest.fail(f"{fn.__name__} succeeded while the service was down")


@pytest.fixture
def ds(tmp_path, monkeypatch):
    """Dataset ``t`` over a local folder, a local LanceDB store and local staging."""
    src = tmp_path / "src"
    src.mkdir()
    store = {"type": "lancedb", "uri": str(tmp_path / "store")}
    reg = write_registry(tmp_path / "registry.yaml", source=str(src), store=store)
    monkeypatch.setenv("IMAGEINDEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMAGEINDEX_REGISTRY", str(reg))
    for name in (
        "IMAGEINDEX_STAGING",
        "IMAGEINDEX_S3_CONN_ID",
        "IMAGEINDEX_MAX_DELETE_FRACTION",
        *FAULT_VARS,
    ):
        monkeypatch.delenv(name, raising=False)
    return {"src": src, "registry": reg, "store": store, "tmp": tmp_path}


@pytest.fixture
def s3_proxy(seaweedfs, monkeypatch):
    """A proxy to the session's SeaweedFS and connection ``fault_s3`` through it."""
    host, port = seaweedfs.endpoint_url.removeprefix("http://").split(":")
    proxy = TcpProxy((host, int(port)))
    conn = seaweedfs.connection()
    conn["extra"]["endpoint_url"] = proxy.url
    monkeypatch.setenv(f"AIRFLOW_CONN_{FAULT_CONN_ID.upper()}", json.dumps(conn))
    clear_client_cache()
    try:
        yield proxy
    finally:
        proxy.down()
        clear_client_cache()


# --------------------------------------------------------------------------------------------
# 1. A worker is killed in the middle of a shard; Airflow retries the task


#: Environment that makes a child process die in the middle of a stage (exit 137).
KILL_ENV = {
    "preprocess": {"IMAGEINDEX_FAULT_EXIT_IN": "preprocess"},
    "tag_embed": {"IMAGEINDEX_FAULT_EXIT_IN": "tag_embed"},
    "upsert": {
        "IMAGEINDEX_UPSERT_CHUNK_ROWS": "5",
        "IMAGEINDEX_FAULT_EXIT_AFTER_UPSERT_CHUNKS": "1",
    },
    # the try-aware hook the integration tier uses: only try 1 dies, after the first chunk
    "upsert@1": {
        "IMAGEINDEX_UPSERT_CHUNK_ROWS": "5",
        "IMAGEINDEX_FAULT_EXIT_IN": "upsert@1",
        "IMAGEINDEX_TRY_NUMBER": "1",
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["preprocess", "tag_embed", "upsert", "upsert@1"])
def test_worker_killed_mid_shard_then_retry_equals_a_clean_run(ds, fault):
    stage = fault.split("@")[0]
    src = ds["src"]
    uris = photos(src, [f"p{i:02d}.jpg" for i in range(12)])
    plan = pipeline.plan("t", None, "killed", shard_size=6)
    assert len(plan["shards"]) == 2
    finished, victim = plan["shards"]
    results = [pipeline.run_shard("t", "v1", finished)]  # the other shard is done
    assert count_in(ds["store"]) == 6

    shard_dir = Path(victim).parent
    pre_uri = str(shard_dir / "preprocessed.parquet")
    feat_uri = str(shard_dir / "features.parquet")
    pre = emb = None
    if stage != "preprocess":
        pre = pipeline.preprocess("t", "v1", victim)
    if stage == "upsert":
        emb = pipeline.tag_embed("t", "v1", pre_uri)
    call = {
        "preprocess": f"pipeline.preprocess('t', 'v1', {victim!r})",
        "tag_embed": f"pipeline.tag_embed('t', 'v1', {pre_uri!r})",
        "upsert": f"pipeline.upsert('t', 'v1', {feat_uri!r}, {pre_uri!r})",
    }[stage]
    proc = subprocess.run(
        [sys.executable, "-c", f"from imageindex import pipeline; {call}"],
        env={**os.environ, **KILL_ENV[fault]},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 137, proc.stderr[-3000:]
    assert "fault injection" in proc.stderr, proc.stderr[-3000:]

    # What the killed worker left behind.
    if stage == "preprocess":
        assert not Path(pre_uri).exists(), "no preprocess output from a killed worker"
        assert count_in(ds["store"]) == 6
    elif stage == "tag_embed":
        assert Path(pre_uri).exists() and not Path(feat_uri).exists()
        assert count_in(ds["store"]) == 6
    else:
        assert count_in(ds["store"]) == 6 + 5, "the upsert died after its first chunk of 5"
    assert not tmp_leftovers(shard_dir)

    # Airflow retries the same task with the same inputs, then the shard goes on as usual.
    if stage == "preprocess":
        pre = pipeline.preprocess("t", "v1", victim)
    if stage in ("preprocess", "tag_embed"):
        emb = pipeline.tag_embed("t", "v1", pre_uri)
    if fault == "upsert@1":  # Airflow's try 2, same fault setting: not killed this time
        retry = {**os.environ, **KILL_ENV[fault], "IMAGEINDEX_TRY_NUMBER": "2"}
        code = f"from imageindex import pipeline; pipeline.upsert('t', 'v1', {feat_uri!r}, {pre_uri!r})"
        proc = subprocess.run(
            [sys.executable, "-c", code], env=retry, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    ups = pipeline.upsert("t", "v1", feat_uri, pre_uri)
    assert (ups["upserted"], ups["ok"], ups["failed"]) == (6, 6, 0)
    results.append(pipeline.shard_summary(pre, emb, ups))
    report = pipeline.finalize("t", "v1", plan, results)
    assert (report["indexed"], report["indexed_ok"], report["failed"]) == (12, 12, 0)
    assert report["deleted"] == 0
    retried = docs_in(ds["store"])

    # A clean run of the same files into a fresh store gives the same documents.
    clean_store = {"type": "lancedb", "uri": str(ds["tmp"] / "clean-store")}
    clean_reg = write_registry(ds["tmp"] / "clean.yaml", source=str(src), store=clean_store)
    pipeline.run_all("t", run_id="clean", shard_size=6, registry_path=str(clean_reg))
    clean = docs_in(clean_store)

    assert set(retried) == set(clean) == set(uris), "nothing missing, nothing extra"
    assert count_in(ds["store"]) == len(uris), "no duplicates"
    for uri, doc in clean.items():
        assert {k: retried[uri][k] for k in COMPARED} == {k: doc[k] for k in COMPARED}, uri

    # Nothing is left for the next run: the index state is exactly the source.
    again = pipeline.run_all("t")
    assert (again["processed"], again["new"], again["changed"], again["deleted"]) == (0, 0, 0, 0)


# --------------------------------------------------------------------------------------------
# 2. The source disappears


@pytest.mark.slow
@pytest.mark.parametrize("how", ["removed", "unmounted"])
def test_folder_gone_between_plan_and_preprocess_is_transient(ds, how):
    """Reads fail as ``read_failed``: nothing about those files is written to the index (no
    failed documents, a changed file keeps its old document), and the next run, once the
    folder is back, picks every one of them up."""
    src, store = ds["src"], ds["store"]
    old = photos(src, ["old0.jpg", "old1.jpg", "old2.jpg"])
    assert pipeline.run_all("t")["indexed_ok"] == 3
    before = docs_in(store)

    new = photos(src, ["new0.jpg", "new1.jpg"], seed0=10)
    make_photo(src / "old0.jpg", size=SIZE, seed=99)  # new content for an indexed file
    st = (src / "old0.jpg").stat()
    os.utime(src / "old0.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    plan = pipeline.plan("t", None, "gone")
    assert (plan["counts"]["new"], plan["counts"]["changed"]) == (2, 1)

    away = ds["tmp"] / "away"
    src.rename(away)
    if how == "unmounted":
        src.mkdir()  # the mount point stays, empty
    results = []
    for manifest in plan["shards"]:
        pre = pipeline.preprocess("t", "v1", manifest)
        assert pre["failed_by_reason"] == {"read_failed": pre["files"]}
        emb = pipeline.tag_embed("t", "v1", pre["preprocessed"])
        ups = pipeline.upsert("t", "v1", emb["features"], pre["preprocessed"])
        assert ups["upserted"] == 0 and ups["skipped_transient"] == pre["files"]
        results.append(pipeline.shard_summary(pre, emb, ups))
    report = pipeline.finalize("t", "v1", plan, results)
    assert report["failed_by_reason"] == {"read_failed": 3}
    assert {f["uri"] for f in report["failures"]} == {*new, old[0]}
    assert all(str(src) in f["detail"] for f in report["failures"]), report["failures"]
    assert (report["deleted"], report["indexed"]) == (0, 3)
    assert docs_in(store) == before, "the index is untouched: no failed docs, old0 kept as it was"

    # The next scheduled run while the folder is still gone deletes nothing either.
    if how == "removed":
        with pytest.raises(SourceError) as excinfo:
            pipeline.plan("t", None, "still-gone")
        assert str(src) in str(excinfo.value) and "does not exist" in str(excinfo.value)
        assert not (Path(plan["run_dir"]).parent / "still-gone").exists(), "no deletes staged"
    else:
        with pytest.raises(UnsafeDeleteError, match="listed no images"):
            pipeline.run_all("t")
    assert docs_in(store) == before

    if how == "unmounted":
        src.rmdir()
    away.rename(src)
    again = pipeline.run_all("t")
    assert (again["new"], again["changed"], again["deleted"]) == (2, 1, 0)
    assert (again["processed"], again["failed"]) == (3, 0)
    docs = docs_in(store)
    assert set(docs) == {*old, *new} and count_in(store) == 5
    assert all(d["status"] == "ok" for d in docs.values())
    assert docs[old[0]]["fingerprint"] != before[old[0]]["fingerprint"]
    assert docs[old[1]]["indexed_at"] == before[old[1]]["indexed_at"], "unchanged not rewritten"


@pytest.mark.slow
def test_s3_endpoint_down_plan_fails_clearly_reads_are_transient(ds, s3_proxy, seaweedfs):
    """An S3 source whose endpoint goes down: plan fails with a SourceError naming the bucket
    and the endpoint, in bounded time, and the index is unchanged; reads that fail mid-run
    are transient; once the endpoint is back the next run picks everything up."""
    bucket = seaweedfs.new_bucket("src")
    client = seaweedfs.client()  # direct, not through the proxy

    def put(key: str, seed: int) -> str:
        body = make_photo(ds["tmp"] / "up" / key, size=SIZE, seed=seed).read_bytes()
        client.put_object(Bucket=bucket, Key=f"photos/{key}", Body=body)
        return f"s3://{bucket}/photos/{key}"

    source = f"s3://{bucket}/photos/"
    write_registry(ds["registry"], source=source, store=ds["store"], s3_conn_id=FAULT_CONN_ID)
    first = [put(f"p{i}.jpg", i) for i in range(3)]
    assert pipeline.run_all("t")["indexed_ok"] == 3
    before = docs_in(ds["store"])

    # Down between plan and preprocess: the reads fail, nothing about them is written.
    later = [put(f"n{i}.jpg", 10 + i) for i in range(2)]
    plan = pipeline.plan("t", None, "mid-run")
    assert plan["counts"]["new"] == 2
    s3_proxy.down()
    results = []
    for manifest in plan["shards"]:
        t0 = time.monotonic()
        pre = pipeline.preprocess("t", "v1", manifest)
        assert time.monotonic() - t0 < BOUNDED_S
        assert pre["failed_by_reason"] == {"read_failed": pre["files"]}
        emb = pipeline.tag_embed("t", "v1", pre["preprocessed"])
        ups = pipeline.upsert("t", "v1", emb["features"], pre["preprocessed"])
        assert ups["upserted"] == 0
        results.append(pipeline.shard_summary(pre, emb, ups))
    report = pipeline.finalize("t", "v1", plan, results)
    assert report["failed_by_reason"] == {"read_failed": 2} and report["deleted"] == 0
    assert docs_in(ds["store"]) == before

    # The next run while still down: plan fails before anything is compared or deleted.
    for attempt in ("down-1", "down-2"):  # a retry fails the same way, in bounded time
        exc, seconds = timed(pipeline.plan, "t", None, attempt)
        assert isinstance(exc, SourceError), repr(exc)
        msg = str(exc)
        assert bucket in msg and f"127.0.0.1:{s3_proxy.port}" in msg, msg
        assert "unreachable" in msg, msg
        assert seaweedfs.secret_key not in msg and seaweedfs.access_key not in msg
        assert seconds < BOUNDED_S, seconds
    assert docs_in(ds["store"]) == before

    s3_proxy.up()
    again = pipeline.run_all("t")
    assert (again["new"], again["deleted"], again["processed"], again["failed"]) == (2, 0, 2, 0)
    docs = docs_in(ds["store"])
    assert set(docs) == {*first, *later} and count_in(ds["store"]) == 5


# --------------------------------------------------------------------------------------------
# 3. The store goes down during upsert

#: Lance's commit: the PUT of the table's next manifest (data files are written before it).
MANIFEST_PUT = rb"^PUT /\S+\.lance/_versions/\d+\.manifest$"


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["before_upsert", "at_commit", "ack_lost"])
def test_store_down_during_upsert_fails_clearly_and_the_next_run_completes(
    ds, s3_proxy, seaweedfs, outage
):
    """A LanceDB store on S3 (SeaweedFS) goes down after plan, preprocess and tag_embed:
    ``before_upsert``: down when the task starts; ``at_commit``: the shard's data files are
    written, then the connection dies before the commit; ``ack_lost``: the commit lands but
    its response is lost.

    Upsert raises a StoreError naming the store in bounded time, and so does a retry while the
    store is still down (checked once: a retry always starts by opening the store); the index
    holds the shard's documents only if the commit landed; once the store is back, the next
    incremental run indexes every file exactly once.
    """
    bucket = seaweedfs.new_bucket("store")
    store = {
        "type": "lancedb",
        "uri": f"s3://{bucket}/index",
        "storage_options": {
            "endpoint": s3_proxy.url,
            "aws_access_key_id": seaweedfs.access_key,
            "aws_secret_access_key": seaweedfs.secret_key,
            "region": seaweedfs.region,
            "allow_http": "true",
        },
    }
    src = ds["src"]
    write_registry(ds["registry"], source=str(src), store=store)
    first = photos(src, [f"a{i}.jpg" for i in range(4)])
    assert pipeline.run_all("t", shard_size=2)["indexed_ok"] == 4

    second = photos(src, [f"b{i}.jpg" for i in range(4)], seed0=20)
    plan = pipeline.plan("t", None, "store-down", shard_size=2)
    assert (plan["counts"]["new"], len(plan["shards"])) == (4, 2)
    staged = []
    for manifest in plan["shards"]:
        pre = pipeline.preprocess("t", "v1", manifest)
        emb = pipeline.tag_embed("t", "v1", pre["preprocessed"])
        staged.append((emb["features"], pre["preprocessed"]))
    assert pipeline.upsert("t", "v1", *staged[0])["upserted"] == 2  # one shard lands
    failed_shard = set(pq.read_table(plan["shards"][1]).column("uri").to_pylist())
    assert failed_shard == set(second[2:])

    def committed(path: str) -> None:
        """Until the server holds the object of ``PUT path`` (bounded)."""
        b, key = path.lstrip("/").split("/", 1)
        client = seaweedfs.client()
        for _ in range(100):
            with contextlib.suppress(Exception):
                client.head_object(Bucket=b, Key=key)
                return
            time.sleep(0.1)

    if outage == "before_upsert":
        s3_proxy.down()
    else:
        s3_proxy.cut_on(MANIFEST_PUT, delivered=committed if outage == "ack_lost" else None)
    errors = []
    # The task, then (the same call as at any other outage: the store cannot be opened) its
    # retry while the store is still down.
    for _ in range(2 if outage == "before_upsert" else 1):
        exc, seconds = timed(pipeline.upsert, "t", "v1", *staged[1])
        assert isinstance(exc, StoreError), repr(exc)
        msg = str(exc)
        assert store["uri"] in msg, msg
        assert seaweedfs.secret_key not in msg and seaweedfs.access_key not in msg
        assert seconds < BOUNDED_S, seconds
        errors.append(type(exc))
    assert len(set(errors)) == 1, errors
    assert outage == "before_upsert" or s3_proxy.cut.is_set(), "the outage hit the commit"
    # The retries are spent and the run fails; the DAG's teardown gives its lease back.
    pipeline.release_lease("t", "v1", "store-down")
    if outage == "before_upsert":
        # The next scheduled run while still down refuses too, rather than planning from an
        # index it cannot read (that would look empty: everything new, nothing to delete).
        exc, seconds = timed(pipeline.plan, "t", None, "still-down")
        assert isinstance(exc, StoreError), repr(exc)
        assert seconds < BOUNDED_S, seconds

    s3_proxy.up()
    docs = docs_in(store)
    landed = failed_shard if outage == "ack_lost" else set()
    assert set(docs) == {*first, *second[:2], *landed}, "a shard's commit is all or nothing"
    if outage == "ack_lost":
        # Airflow's next retry, with the store back, rewrites the same ids: no duplicates.
        assert pipeline.upsert("t", "v1", *staged[1])["upserted"] == 2
        assert count_in(store) == 8

    again = pipeline.run_all("t", shard_size=2)
    assert (again["new"], again["changed"], again["deleted"]) == (2 - len(landed), 0, 0)
    assert again["failed"] == 0
    docs = docs_in(store)
    assert set(docs) == {*first, *second}
    assert count_in(store) == 8, "every file exactly once"
    assert all(d["status"] == "ok" for d in docs.values())
