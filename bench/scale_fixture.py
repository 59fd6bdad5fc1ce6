"""Shared set-up of the scale benchmarks (bench_plan.py, bench_nochange.py): a registry, a local
tree of empty image files (or a synthetic listing of the same files), and a LanceDB index whose
documents match that listing except for a chosen share of changed, new and deleted files.

Files are ``d0000/img0000000.jpg`` … (``per_dir`` files a folder). File ``i`` has mtime
``BASE_MTIME_NS + i µs`` and size 0, so its ``stat`` fingerprint is known without a ``stat()``.
Of the ``n`` listed files, every ``1/new_every``-th is absent from the index ("new") and every
``1/changed_every``-th is indexed with another fingerprint ("changed"); ``n_deleted`` indexed
documents name files that do not exist ("deleted"). The index holds ``n - new + deleted`` rows.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from imageindex.stores.schema import STATUS_OK, document_schema
from imageindex.types import FileEntry, doc_id

REPO = Path(__file__).resolve().parent.parent
DATASET = "scale"
VERSION = "v1"
MODEL = "conse-efficientnet-lite0-minilm-l6-v2"  # the offline embedder's name: no mismatch
DIM = 384
TAGS = REPO / "config" / "tags" / "samples.json"
BASE_MTIME_NS = 1_700_000_000_000_000_000


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


class Layout:
    """Which files exist, which are indexed and how; everything derives from ``i``."""

    def __init__(
        self,
        root: Path,
        n: int,
        *,
        per_dir: int = 1000,
        new_every: int = 200,
        changed_every: int = 100,
        deleted_share: float = 0.005,
    ):
        self.root = Path(os.path.abspath(root))
        self.root_uri = self.root.as_uri()
        self.n = n
        self.per_dir = per_dir
        self.new_every = new_every
        self.changed_every = changed_every
        self.n_deleted = int(n * deleted_share)

    def key(self, i: int) -> str:
        return f"d{i // self.per_dir:04d}/img{i:07d}.jpg"

    def mtime_ns(self, i: int) -> int:
        return BASE_MTIME_NS + i * 1000

    def is_new(self, i: int) -> bool:
        return self.new_every > 0 and i % self.new_every == 0

    def is_changed(self, i: int) -> bool:
        return self.changed_every > 0 and i % self.changed_every == 1

    def expected(self) -> dict[str, int]:
        new = sum(1 for i in range(self.n) if self.is_new(i))
        changed = sum(1 for i in range(self.n) if self.is_changed(i) and not self.is_new(i))
        return {
            "listed": self.n,
            "new": new,
            "changed": changed,
            "unchanged": self.n - new - changed,
            "deleted": self.n_deleted,
            "indexed_rows": self.n - new + self.n_deleted,
        }

    # ------------------------------------------------------------------ the files

    def make_tree(self) -> float:
        """Create the ``n`` empty files (mtimes set); returns seconds."""
        t0 = time.perf_counter()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        for d in range(0, self.n, self.per_dir):
            folder = self.root / f"d{d // self.per_dir:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            base = str(folder)
            for i in range(d, min(d + self.per_dir, self.n)):
                fd = os.open(f"{base}/img{i:07d}.jpg", flags, 0o644)
                try:
                    ns = self.mtime_ns(i)
                    os.utime(fd, ns=(ns, ns))
                finally:
                    os.close(fd)
            if d and d % (100 * self.per_dir) == 0:
                log(f"  tree: {d:,} files, {time.perf_counter() - t0:.0f}s")
        return time.perf_counter() - t0

    def iter_entries(self) -> Iterator[FileEntry]:
        """What LocalSource.iter_files yields for the tree, without touching the disk."""
        for i in range(self.n):
            key = self.key(i)
            ns = self.mtime_ns(i)
            yield FileEntry(
                uri=f"{self.root_uri}/{key}",
                key=key,
                size=0,
                mtime=ns / 1e9,
                fingerprint=f"stat:0-{ns}",
            )

    # ------------------------------------------------------------------ the index

    def _indexed(self) -> Iterator[tuple[str, str, int]]:
        """(key, fingerprint, mtime in µs) of every indexed document."""
        for i in range(self.n):
            if self.is_new(i):
                continue
            ns = self.mtime_ns(i)
            fp = f"stat:0-{ns - 1}" if self.is_changed(i) else f"stat:0-{ns}"
            yield self.key(i), fp, round(ns / 1e9 * 1e6)
        for j in range(self.n_deleted):
            ns = BASE_MTIME_NS + j * 1000
            yield f"gone/img{j:07d}.jpg", f"stat:0-{ns}", round(ns / 1e9 * 1e6)

    def document_batches(
        self, batch_rows: int, definitions_hash: str | None, vectors: str = "zeros"
    ) -> Iterator[pa.Table]:
        """Rows of the document schema, ``batch_rows`` at a time. ``vectors``: ``zeros`` or
        ``random`` (clustered unit vectors: a vector index over all-zero vectors is degenerate)."""
        schema = document_schema(DIM)
        rng = np.random.default_rng(0)
        centers = rng.normal(size=(64, DIM)).astype(np.float32)
        now = datetime(2024, 1, 1, tzinfo=UTC)
        batch: list[tuple[str, str, int]] = []

        def build(rows: list[tuple[str, str, int]]) -> pa.Table:
            n = len(rows)
            uris = [f"{self.root_uri}/{k}" for k, _, _ in rows]
            if vectors == "random":
                vecs = centers[rng.integers(0, len(centers), n)]
                vecs = vecs + 0.35 * rng.normal(size=(n, DIM)).astype(np.float32)
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            else:
                vecs = np.zeros((n, DIM), np.float32)
            cols = {
                "id": [doc_id(DATASET, VERSION, u) for u in uris],
                "dataset_id": [DATASET] * n,
                "dataset_version": [VERSION] * n,
                "uri": uris,
                "key": [k for k, _, _ in rows],
                "file_name": [k.rsplit("/", 1)[-1] for k, _, _ in rows],
                "size": np.zeros(n, np.int64),
                "mtime": pa.array([m for _, _, m in rows], pa.int64()).cast(
                    pa.timestamp("us", "UTC")
                ),
                "fingerprint": [f for _, f, _ in rows],
                "status": [STATUS_OK] * n,
                "width": np.full(n, 1024, np.int32),
                "height": np.full(n, 768, np.int32),
                "format": ["JPEG"] * n,
                "mode": ["RGB"] * n,
                "tags_ai": [["photo"]] * n,
                # Not null: a null makes upsert look up stored user tags (a scan per 5k ids),
                # which only slows building the fixture.
                "tags_user": [[]] * n,
                "tag_definitions_hash": [definitions_hash] * n,
                "thumbnail_uri": [None] * n,
                "model": [MODEL] * n,
                "dim": np.full(n, DIM, np.int32),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vecs.reshape(-1), pa.float32()), DIM
                ),
                "indexed_at": [now] * n,
            }
            arrays = []
            for f in schema:
                value = cols.get(f.name)
                if value is None:
                    arrays.append(pa.nulls(n, f.type))
                elif isinstance(value, pa.Array):
                    arrays.append(value if value.type == f.type else value.cast(f.type))
                else:
                    arrays.append(pa.array(value, f.type))
            return pa.Table.from_arrays(arrays, schema=schema)

        for row in self._indexed():
            batch.append(row)
            if len(batch) >= batch_rows:
                yield build(batch)
                batch = []
        if batch:
            yield build(batch)


def write_registry(
    path: Path, source: Path, store: Path, *, store_options: dict | None = None
) -> Path:
    opts = "".join(f", {k}: {v}" for k, v in (store_options or {}).items())
    path.write_text(
        f"""
datasets:
  - id: {DATASET}
    current_version: {VERSION}
    versions:
      {VERSION}: {{source: {source}}}
    store: {{uri: {store}{opts}}}
    tagger: {{type: offline, definitions: {TAGS}}}
""",
        encoding="utf-8",
    )
    return path


def set_env(tmp: Path, registry: Path) -> None:
    """The environment of tests/test_pipeline.py's ``dataset`` fixture, under ``tmp``."""
    os.environ["IMAGEINDEX_HOME"] = str(tmp / "home")
    os.environ["IMAGEINDEX_REGISTRY"] = str(registry)
    os.environ.pop("IMAGEINDEX_STAGING", None)
    os.environ.pop("IMAGEINDEX_STORE", None)
    os.environ.setdefault("IMAGEINDEX_MODEL_CACHE", str(REPO / "var" / "test-model-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def build_index(
    layout: Layout,
    store_dir: Path,
    *,
    batch_rows: int = 50_000,
    vectors: str = "zeros",
    optimize: bool = True,
    index_min_rows: int | None = None,
) -> dict:
    """Upsert the layout's documents through LanceDBStore.upsert, then (optionally) optimize
    as finalize would, so the table looks like one a previous run left behind."""
    from imageindex.pipeline import current_definitions_hash
    from imageindex.registry import load_registry
    from imageindex.stores.lancedb import LanceDBStore

    spec = load_registry().get(DATASET)
    dhash = current_definitions_hash(spec)
    store = LanceDBStore(
        str(store_dir),
        write_batch_rows=batch_rows,
        index_min_rows=index_min_rows or 50_000,
    )
    store.ensure_table(DATASET, model=MODEL, dim=DIM)
    t0 = time.perf_counter()
    rows = 0
    for table in layout.document_batches(batch_rows, dhash, vectors):
        rows += store.upsert(DATASET, table)
        if rows % (10 * batch_rows) == 0:
            log(f"  index: {rows:,} rows, {time.perf_counter() - t0:.0f}s")
    upsert_s = time.perf_counter() - t0
    out = {"rows": rows, "upsert_seconds": round(upsert_s, 2), "vectors": vectors}
    if optimize:
        t0 = time.perf_counter()
        opt = store.optimize(DATASET)
        out["optimize_seconds"] = round(time.perf_counter() - t0, 2)
        out["indexes"] = opt["indexes"]
        out["fragments"] = opt["fragments_after"]
    return out


def dir_size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def rss_mb() -> float:
    """Current resident set of this process (MiB)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def hwm_mb() -> float:
    """Peak resident set of this process so far (MiB)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def time_listing(secs: dict, key: str, listing: str, layout: Layout) -> None:
    """Make ``LocalSource.iter_files`` add the time spent listing to ``secs[key]``; with
    ``listing == "synthetic"`` it yields the layout's entries without touching the disk."""
    from imageindex.sources.local import LocalSource

    if listing == "synthetic":
        LocalSource.check_available = lambda self: None
        base_iter = lambda self, page_size=1000: layout.iter_entries()  # noqa: E731
    else:
        base_iter = LocalSource.iter_files

    def iter_files(self, page_size=1000):
        it = base_iter(self, page_size)
        while True:
            t = time.perf_counter()
            try:
                entry = next(it)
            except StopIteration:
                secs[key] += time.perf_counter() - t
                return
            secs[key] += time.perf_counter() - t
            yield entry

    LocalSource.iter_files = iter_files
