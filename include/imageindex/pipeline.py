"""The indexing pipeline as plain functions: plan → (per shard) preprocess → tag_embed → upsert
→ finalize.

Each stage reads its inputs from the staging location and writes its outputs there, returning
only small dicts (paths and counts) — exactly what Airflow puts in XCom. Any stage can be re-run
(a retry) and produces the same result: outputs are written atomically and documents have
deterministic ids.

Staging layout of one run::

    <staging>/runs/<dataset>/<version>/<run>/
        plan.json                      counts and shard list
        deletes.parquet                ids of documents whose files are gone
        shards/00000/manifest.parquet  files to process (uri, key, size, mtime, fingerprint, change)
        shards/00000/preprocessed.parquet   metadata, errors, thumbnail bytes
        shards/00000/model_input.parquet    the model's input pixels (tag_embed decodes nothing)
        shards/00000/features.parquet  vectors and tags
        shards/00000/upserted.json     upsert's counts: the shard's documents are in the store
        report.json                    the run report

Fault injection (for the kill tests and the integration tier; off unless set): every stage has
a fault point where the process dies like an OOM-killed worker (exit 137, no clean-up).

* ``IMAGEINDEX_FAULT_EXIT_IN=<stage>[@<tries>]``: ``tag_embed`` dies on every try,
  ``tag_embed@1`` on try 1 only (Airflow's retry then succeeds), ``tag_embed@1,2`` on tries 1
  and 2. Stages: plan, preprocess, tag_embed, upsert, finalize. The try number is
  ``IMAGEINDEX_TRY_NUMBER`` (the DAG exports the task instance's at the start of every stage
  task), else ``AIRFLOW_CTX_TRY_NUMBER``, else 1.
* ``IMAGEINDEX_FAULT_FILE=<path>``: while that file exists it is read at every fault point, so
  a running scheduler gets a different fault per scenario without a restart; JSON like
  ``{"stage": "tag_embed", "tries": [1], "dataset": "x", "version": "v1", "run_id": "…"}``
  (only ``stage`` is required; each other key narrows where it fires).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imageindex.config import settings
from imageindex.errors import ConfigError, UnsafeDeleteError
from imageindex.registry import DatasetSpec, load_registry
from imageindex.stores.schema import STATUS_FAILED, STATUS_OK, document_schema
from imageindex.types import FileEntry, doc_id

log = logging.getLogger(__name__)

MODES = ("incremental", "full")

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
#: Shards up to this many files carry their model inputs (see preprocess()).
MODEL_INPUT_MAX_ROWS = 2000

#: Read errors are transient (network, permissions being fixed): such files are not written to the
#: index, so the next run picks them up again. Content errors are recorded as failed documents.
TRANSIENT_REASONS = frozenset({"read_failed"})

#: How many failures the report lists one by one (the rest are counted by reason).
REPORT_MAX_FAILURES = 1000


# --------------------------------------------------------------------------------------------
# Run context


@dataclass
class Run:
    """Where one run of one dataset version keeps its intermediate files."""

    dataset: DatasetSpec
    version: str
    run_dir: str

    @property
    def staging(self):
        from imageindex.staging import open_staging

        return open_staging(settings().staging_root, s3_conn_id=self.s3_conn_id)

    @property
    def s3_conn_id(self) -> str:
        return self.dataset.s3_conn_id or settings().s3_conn_id

    def store(self):
        from imageindex.stores import open_store

        return open_store(self.dataset.store_uri, spec=self.dataset.store)

    def source(self):
        from imageindex.sources import open_version_source

        return open_version_source(
            self.dataset.version(self.version),
            s3_conn_id=self.s3_conn_id,
            fingerprint=self.dataset.fingerprint,
        )

    def shard_dir(self, shard_uri: str) -> str:
        return shard_uri.rsplit("/", 1)[0]


def safe_run_name(run_id: str) -> str:
    """Airflow run ids hold ':' and '+'; keep staging keys portable across filesystems and S3."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_")
    if not name:
        raise ConfigError(f"run id {run_id!r} gives an empty staging folder name")
    return name[:200]


def open_run(
    dataset_id: str, version: str | None, run_id: str, *, registry_path: str | None = None
) -> Run:
    dataset = load_registry(registry_path).get(dataset_id)
    version = dataset.version(version).name
    root = settings().staging_root.rstrip("/")
    run_dir = f"{root}/runs/{dataset.id}/{version}/{safe_run_name(run_id)}"
    return Run(dataset=dataset, version=version, run_dir=run_dir)


def embedder_for(dataset: DatasetSpec):
    from imageindex.embedders import get_embedder

    return get_embedder(dataset.embedder)


def tagger_for(dataset: DatasetSpec, embedder):
    from imageindex.taggers import get_tagger

    return get_tagger(dataset.tagger, embedder, base_dir=dataset.base_dir)


# --------------------------------------------------------------------------------------------
# plan


def shard_plan(n_files: int, shard_size: int, max_shards: int) -> tuple[int, int]:
    """(number of shards, files per shard): the shard size grows so the count stays capped."""
    if n_files <= 0:
        return 0, shard_size
    size = max(shard_size, math.ceil(n_files / max_shards))
    return math.ceil(n_files / size), size


def _entry_rows(entries: list[tuple[FileEntry, str]], dataset_id: str, version: str) -> pa.Table:
    return pa.table(
        {
            "id": [doc_id(dataset_id, version, e.uri) for e, _ in entries],
            "uri": [e.uri for e, _ in entries],
            "key": [e.key for e, _ in entries],
            "size": [e.size for e, _ in entries],
            "mtime": [e.mtime for e, _ in entries],
            "fingerprint": [e.fingerprint for e, _ in entries],
            "change": [c for _, c in entries],
            "reuse_id": pa.nulls(len(entries), pa.string()),
        },
        schema=MANIFEST_SCHEMA,
    )


def _load_state(
    store, dataset_id: str, version: str, definitions_hash: str | None
) -> dict[str, tuple[str, str, int, bool, int]]:
    """uri → (id, fingerprint, mtime in µs, needs re-tagging, size) of what the index holds;
    never the vectors. A successfully indexed file needs re-tagging when it was tagged from
    other tag definitions than the current ones."""
    state: dict[str, tuple[str, str, int, bool, int]] = {}
    if store.table_info(dataset_id) is None:
        return state
    for batch in store.iter_state(dataset_id, version):
        mt = batch.column("mtime").cast(pa.int64()).to_pylist()
        names = batch.schema.names
        hashes = (
            batch.column("tag_definitions_hash").to_pylist()
            if "tag_definitions_hash" in names
            else [definitions_hash] * batch.num_rows
        )
        for i, u, f, m, st, h, n in zip(
            batch.column("id").to_pylist(),
            batch.column("uri").to_pylist(),
            batch.column("fingerprint").to_pylist(),
            mt,
            batch.column("status").to_pylist(),
            hashes,
            batch.column("size").to_pylist(),
            strict=True,
        ):
            state[u] = (i, f, m, st == STATUS_OK and h != definitions_hash, n)
    return state


def current_definitions_hash(dataset: DatasetSpec) -> str | None:
    """Hash of the dataset's tag definitions (no model is loaded), None without definitions."""
    path = dataset.tagger.get("definitions")
    if not path or dataset.tagger.get("type") == "none":
        return None
    from imageindex.taggers.definitions import load_tag_definitions

    return load_tag_definitions(path).hash


def plan(
    dataset_id: str,
    version: str | None,
    run_id: str,
    *,
    mode: str = "incremental",
    shard_size: int | None = None,
    max_shards: int | None = None,
    registry_path: str | None = None,
) -> dict:
    """List the source, diff it against the index and cut shard manifests.

    Returns ``{"run_dir", "shards": [manifest uris], "counts": {...}}`` — small enough for XCom
    whatever the dataset size: the listing itself is streamed into staging files.
    """
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is not one of {MODES}")
    t0 = time.perf_counter()
    run = open_run(dataset_id, version, run_id, registry_path=registry_path)
    acquire_lease(run, run_id)
    try:
        return _plan(run, run_id, mode, shard_size, max_shards, t0)
    except BaseException:
        release_lease(run.dataset.id, run.version, run_id, registry_path=registry_path)
        raise


def _plan(run: Run, run_id: str, mode: str, shard_size, max_shards, t0: float) -> dict:
    cfg = settings()
    started_at = datetime.now(UTC).isoformat()
    staging = run.staging
    staging.delete_prefix(run.run_dir)  # a retried plan starts from a clean run folder
    store = run.store()
    _check_model(run, store)
    source = run.source()
    source.check_available()

    state = _load_state(store, run.dataset.id, run.version, current_definitions_hash(run.dataset))
    counts = Counter(listed=0, new=0, changed=0, unchanged=0, deleted=0, retag=0)
    todo_uri = f"{run.run_dir}/todo.parquet"
    pending: list[tuple[FileEntry, str]] = []
    with staging.parquet_writer(todo_uri, MANIFEST_SCHEMA) as writer:
        for entry in source.iter_files():
            counts["listed"] += 1
            known = state.pop(entry.uri, None)
            if known is None:
                change = "new"
            elif not same_file(known, entry):
                change = "changed"
            elif known[3]:
                change = "retag"  # tag definitions changed since this file was tagged
            elif mode == "full":
                change = "full"
            else:
                change = None
            if change is None:
                counts["unchanged"] += 1
                continue
            counts[change if change in ("new", "changed", "retag") else "unchanged"] += 1
            if change == "retag":
                counts["unchanged"] += 1
            pending.append((entry, change))
            if len(pending) >= 10_000:
                writer.write_table(_entry_rows(pending, run.dataset.id, run.version))
                pending.clear()
        if pending:
            writer.write_table(_entry_rows(pending, run.dataset.id, run.version))
    counts["deleted"] = len(state)
    deletes = pa.table(
        {"id": [v[0] for v in state.values()], "uri": list(state.keys())},
        schema=pa.schema([("id", pa.string()), ("uri", pa.string())]),
    )
    staging.write_parquet(f"{run.run_dir}/deletes.parquet", deletes)
    del state

    todo = staging.read_parquet(todo_uri)
    counts["content_checks"] = counts["content_bytes_read"] = 0
    if mode != "full":
        todo = _mark_reusable(
            store, run.dataset.id, todo, current_definitions_hash(run.dataset), source, counts
        )
    counts["reused"] = todo.num_rows - todo.column("reuse_id").null_count
    n_todo = todo.num_rows
    n_shards, size = shard_plan(
        n_todo,
        shard_size or run.dataset.shard_size or cfg.shard_size,
        max_shards or cfg.max_shards,
    )
    shards = []
    for i in range(n_shards):
        uri = f"{run.run_dir}/shards/{i:05d}/manifest.parquet"
        staging.write_parquet(uri, todo.slice(i * size, size))
        shards.append(uri)
    counts["to_process"] = n_todo
    _fault_point("plan", run.dataset.id, run.version, run_id)  # shards written, plan.json not
    result = {
        "dataset_id": run.dataset.id,
        "dataset_version": run.version,
        "run_id": run_id,
        "started_at": started_at,
        "mode": mode,
        "run_dir": run.run_dir,
        "shards": shards,
        "shard_size": size,
        "counts": dict(counts),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    staging.write_json(f"{run.run_dir}/plan.json", result)
    log.info(
        "plan %s/%s (%s): %s in %d shard(s)",
        run.dataset.id,
        run.version,
        mode,
        dict(counts),
        n_shards,
    )
    return result


#: Fingerprints that identify content wherever the file lives (a stat fingerprint only means
#: "this very file is unchanged", so it is matched together with the uri).
CONTENT_FINGERPRINTS = ("sha256:", "etag:")


def same_file(known: tuple, entry: FileEntry) -> bool:
    """Whether a listed file is the one the index holds (``known`` from :func:`_load_state`).

    Documents of local files keep the ``sha256:`` of the bytes preprocess decoded, while the
    default listing gives a ``stat:`` fingerprint without reading anything: then the same size
    and mtime mean the same file, so a no-change run reads no file at all."""
    if known[2] != int(round(entry.mtime * 1e6)):
        return False
    if known[1] == entry.fingerprint:
        return True
    return (
        entry.fingerprint.startswith("stat:")
        and (known[1] or "").startswith("sha256:")
        and known[4] == entry.size
    )


def reuse_key(uri: str, fingerprint: str | None) -> tuple | None:
    if not fingerprint:
        return None
    if fingerprint.startswith(CONTENT_FINGERPRINTS):
        return (fingerprint,)
    return (uri, fingerprint)


#: Threads hashing files in plan (reads are I/O-bound; hashlib releases the GIL).
CONTENT_CHECK_THREADS = 8


def _content_checks(store, dataset_id: str, todo: pa.Table, definitions_hash, source, counts):
    """``sha256:`` fingerprints for new and changed files listed with a ``stat:`` one whose size
    equals that of an indexed document with a content fingerprint — the only files whose
    content can already be indexed. Every other file is left unread (preprocess hashes what it
    reads anyway). Returns {row: fingerprint}; counts files and bytes read in ``counts``."""
    candidates: dict[int, list[int]] = {}
    for r, (f, c, n) in enumerate(
        zip(
            todo.column("fingerprint").to_pylist(),
            todo.column("change").to_pylist(),
            todo.column("size").to_pylist(),
            strict=True,
        )
    ):
        if c in ("new", "changed") and f and f.startswith("stat:") and n:
            candidates.setdefault(n, []).append(r)
    if not candidates:
        return {}
    sizes: set[int] = set()
    cols = ["size", "fingerprint", "status", "tag_definitions_hash"]
    for batch in store.iter_documents(dataset_id, columns=cols, batch_size=50_000):
        for n, f, st, h in zip(*(batch.column(c).to_pylist() for c in cols), strict=True):
            ok = st == STATUS_OK and h == definitions_hash
            if ok and n in candidates and (f or "").startswith("sha256:"):
                sizes.add(n)
        if len(sizes) == len(candidates):
            break
    rows = [r for n in sizes for r in candidates[n]]
    uris = todo.column("uri").to_pylist()
    with ThreadPoolExecutor(max_workers=CONTENT_CHECK_THREADS) as pool:
        found = list(pool.map(lambda r: source.content_fingerprint(uris[r]), rows))
    counts["content_checks"] += len(rows)
    counts["content_bytes_read"] += sum(n for _, n in found)
    return {r: fp for r, (fp, _) in zip(rows, found, strict=True)}


def _mark_reusable(
    store, dataset_id: str, todo: pa.Table, definitions_hash: str | None, source=None, counts=None
):
    """Fill ``reuse_id`` of new and changed files whose content is already indexed — in any
    version of the dataset, by the same model (one table holds one model), tagged from the
    same tag definitions. Streams the index's small columns; never its vectors.

    Content is matched by ``sha256:`` (or S3 ``etag:``) fingerprints. Files listed with the
    default ``stat:`` fingerprint are hashed only when an indexed document has their size
    (:func:`_content_checks`); their manifest row then carries the ``sha256:``. A file that
    was only touched matches its own document: it is copied with its new mtime, not redone."""
    if store.table_info(dataset_id) is None:
        return todo
    counts = counts if counts is not None else Counter()
    hashed = (
        _content_checks(store, dataset_id, todo, definitions_hash, source, counts)
        if source is not None
        else {}
    )
    if hashed:
        fps = todo.column("fingerprint").to_pylist()
        for r, fp in hashed.items():
            fps[r] = fp
        idx = todo.schema.get_field_index("fingerprint")
        todo = todo.set_column(idx, "fingerprint", pa.array(fps, pa.string()))
    wanted: dict[tuple, list[int]] = {}
    for i, (u, f, c) in enumerate(
        zip(
            todo.column("uri").to_pylist(),
            todo.column("fingerprint").to_pylist(),
            todo.column("change").to_pylist(),
            strict=True,
        )
    ):
        key = reuse_key(u, f) if c in ("new", "changed") else None
        if key is not None:
            wanted.setdefault(key, []).append(i)
    if not wanted:
        return todo
    reuse: list[str | None] = [None] * todo.num_rows
    cols = ["id", "uri", "fingerprint", "status", "tag_definitions_hash"]
    for batch in store.iter_documents(dataset_id, columns=cols, batch_size=50_000):
        for i, u, f, st, h in zip(*(batch.column(c).to_pylist() for c in cols), strict=True):
            if st != STATUS_OK or h != definitions_hash:
                continue
            rows = wanted.pop(reuse_key(u, f), None)
            if rows:
                for r in rows:
                    reuse[r] = i
        if not wanted:
            break
    idx = todo.schema.get_field_index("reuse_id")
    return todo.set_column(idx, "reuse_id", pa.array(reuse, pa.string()))


# --------------------------------------------------------------------------------------------
# one run per dataset version at a time


def _lease_uri(run: Run) -> str:
    root = settings().staging_root.rstrip("/")
    return f"{root}/leases/{run.dataset.id}/{run.version}.json"


def acquire_lease(run: Run, run_id: str) -> None:
    """Claim the dataset version for ``run_id`` until it finishes (or the lease expires).

    Runs of different versions proceed side by side — a backfill of v2 never waits for the
    scheduled incremental run of v1 — while a second run of the same version is refused with
    :class:`VersionBusyError` instead of redoing the first one's work. The lease lives in the
    staging root every worker shares; it is released by :func:`release_lease` (the DAG's
    teardown, so also after a failed run) and expires after ``IMAGEINDEX_RUN_LEASE_S``.
    """
    from imageindex.errors import VersionBusyError

    staging, uri = run.staging, _lease_uri(run)
    now = time.time()
    try:
        held = staging.read_json(uri)
    except FileNotFoundError:
        held = None
    if held and held.get("run_id") != run_id and held.get("expires_at", 0) > now:
        raise VersionBusyError(
            f"run {held['run_id']} is indexing {run.dataset.id}/{run.version} (since "
            f"{held.get('started_at')}); this run stops rather than repeat its work. Trigger "
            "again when it has finished, or remove the lease "
            f"{uri} if that run is gone"
        )
    renewing = bool(held) and held.get("run_id") == run_id
    lease = {
        "run_id": run_id,
        "started_at": held["started_at"] if renewing else datetime.now(UTC).isoformat(),
        "expires_at": now + settings().run_lease_s,
    }
    staging.write_json(uri, lease)
    # Two plans racing past the check: the last write wins and the other one steps back.
    if staging.read_json(uri).get("run_id") != run_id:
        raise VersionBusyError(f"another run claimed {run.dataset.id}/{run.version} just now")


def hold_lease(
    dataset_id: str, version: str, run_id: str | None, *, registry_path: str | None = None
) -> None:
    """Check and renew ``run_id``'s lease on the version at the start of a shard stage or
    finalize: taken again when free or expired (a run whose failed tasks were cleared and
    re-run after its teardown gave the lease back), :class:`VersionBusyError` naming the holder
    when another run holds it. ``run_id`` None (a caller outside a run) checks nothing."""
    if run_id is None:
        return
    acquire_lease(open_run(dataset_id, version, run_id, registry_path=registry_path), run_id)


def release_lease(
    dataset_id: str, version: str, run_id: str, *, registry_path: str | None = None
) -> bool:
    """Give the version's lease back if ``run_id`` holds it; True when released."""
    run = open_run(dataset_id, version, run_id, registry_path=registry_path)
    staging, uri = run.staging, _lease_uri(run)
    try:
        held = staging.read_json(uri)
    except FileNotFoundError:
        return False
    if held.get("run_id") != run_id:
        return False
    staging.delete_prefix(uri)
    return True


def load_plan(
    dataset_id: str, version: str | None, run_id: str, *, registry_path: str | None = None
) -> dict:
    """The plan result of a run, read back from staging (XCom only carried the shard paths)."""
    run = open_run(dataset_id, version, run_id, registry_path=registry_path)
    return run.staging.read_json(f"{run.run_dir}/plan.json")


def _check_model(run: Run, store) -> None:
    """Refuse early, before any work, when the index holds vectors of another model."""
    info = store.table_info(run.dataset.id)
    if info is None:
        return
    embedder = embedder_for(run.dataset)
    store.ensure_table(run.dataset.id, model=embedder.name, dim=embedder.dim)


# --------------------------------------------------------------------------------------------
# preprocess


def preprocess(
    dataset_id: str,
    version: str,
    manifest_uri: str,
    *,
    registry_path: str | None = None,
    threads: int = 2,
    run_id: str | None = None,
) -> dict:
    """Decode every file of a shard, make thumbnails, record metadata and per-file errors."""
    from imageindex.embedders import model_input_size
    from imageindex.preprocess import preprocess_many

    t0 = time.perf_counter()
    hold_lease(dataset_id, version, run_id, registry_path=registry_path)
    dataset = load_registry(registry_path).get(dataset_id)
    run = Run(dataset=dataset, version=version, run_dir="")
    staging = run.staging
    source = run.source()
    manifest = staging.read_parquet(manifest_uri)
    # Files whose vectors are reused are neither read nor decoded (upsert copies them).
    rows = [r for r in manifest.to_pylist() if not r.get("reuse_id")]
    thumbs_root = thumbnails_root(dataset.id)

    # The content hash of the bytes decoded is what the document keeps as its fingerprint
    # (for files listed with a stat fingerprint): later versions and touched files are then
    # matched by content without reading them again (see _mark_reusable).
    content: dict[str, str] = {}

    def loader(uri: str):
        def read() -> bytes:
            data = source.read_bytes(uri)
            content[uri] = "sha256:" + hashlib.sha256(data).hexdigest()
            return data

        return read

    out: dict[str, list] = {name: [] for name in PREPROCESSED_SCHEMA.names}
    reasons: Counter = Counter()
    thumb_writes = []
    # The model inputs (150 KB an image at 224 px) stay in memory until the shard file is
    # written: the huge shards of datasets over ~500k files leave them out (tag_embed decodes).
    input_size = model_input_size(dataset.embedder) if len(rows) <= MODEL_INPUT_MAX_ROWS else None
    model_inputs: dict[str, list] = {"id": [], "pixels": []}
    for row, (_, res) in zip(
        rows,
        preprocess_many(
            ((r["uri"], loader(r["uri"])) for r in rows),
            threads=threads,
            model_input_size=input_size,
        ),
        strict=True,
    ):
        for k in MANIFEST_SCHEMA.names:
            out[k].append(row.get(k))
        if (row["fingerprint"] or "").startswith("stat:") and row["uri"] in content:
            out["fingerprint"][-1] = content[row["uri"]]
        thumb_uri = f"{thumbs_root}/{row['id'][:2]}/{row['id']}.jpg" if res.ok else None
        out["ok"].append(res.ok)
        out["width"].append(res.width)
        out["height"].append(res.height)
        out["format"].append(res.format)
        out["mode"].append(res.mode)
        out["n_frames"].append(res.n_frames)
        out["error_reason"].append(res.error_reason)
        out["error_detail"].append(res.error_detail)
        out["thumbnail_uri"].append(thumb_uri)
        out["thumbnail"].append(res.thumbnail)
        if res.model_input is not None:
            model_inputs["id"].append(row["id"])
            model_inputs["pixels"].append(res.model_input)
        if res.ok:
            thumb_writes.append((thumb_uri, res.thumbnail))
        else:
            reasons[res.error_reason] += 1
            log.warning("preprocess: %s", res.error_detail or res.error_reason)
    # Thumbnails outlive the run (search results and the gallery show them).
    thumb_staging = _staging_for(thumbs_root, run.s3_conn_id)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda a: thumb_staging.write_bytes(*a), thumb_writes))
    _fault_point("preprocess", dataset.id, version, run_id)  # thumbnails written, not the shard
    out_uri = manifest_uri.rsplit("/", 1)[0] + "/preprocessed.parquet"
    # Always written (empty without pixels), so no earlier try's file outlives this one.
    staging.write_parquet(
        _model_input_uri(out_uri), pa.table(model_inputs, schema=MODEL_INPUT_SCHEMA)
    )
    staging.write_parquet(out_uri, pa.table(out, schema=PREPROCESSED_SCHEMA))
    n_ok = sum(out["ok"])
    return {
        "preprocessed": out_uri,
        "files": len(rows),
        "reused": manifest.num_rows - len(rows),
        "ok": n_ok,
        "failed": len(rows) - n_ok,
        "failed_by_reason": dict(reasons),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _model_input_uri(preprocessed_uri: str) -> str:
    return preprocessed_uri.rsplit("/", 1)[0] + "/model_input.parquet"


def _model_inputs(staging, preprocessed_uri: str, ids: list[str]) -> list[bytes | None]:
    """The pixels preprocess stored for ``ids``; None where it stored none (shards written
    before it stored them, or too big to), and tag_embed decodes the thumbnail."""
    uri = _model_input_uri(preprocessed_uri)
    if not staging.exists(uri):
        return [None] * len(ids)
    table = staging.read_parquet(uri)
    ids_stored, pixels = table.column("id").to_pylist(), table.column("pixels").to_pylist()
    stored = dict(zip(ids_stored, pixels, strict=True))
    return [stored.get(i) for i in ids]


def thumbnails_root(dataset_id: str) -> str:
    return f"{settings().staging_root.rstrip('/')}/thumbnails/{dataset_id}"


def _staging_for(root: str, s3_conn_id: str):
    from imageindex.staging import open_staging

    return open_staging(root, s3_conn_id=s3_conn_id)


# --------------------------------------------------------------------------------------------
# tag + embed (one forward pass per image serves both)

FEATURES_FIELDS = ["id", "tags_ai", "tags_detail", "tag_definitions_hash", "model", "dim"]


def tag_embed(
    dataset_id: str,
    version: str,
    preprocessed_uri: str,
    *,
    registry_path: str | None = None,
    batch_size: int = 32,
    run_id: str | None = None,
) -> dict:
    """Embed and tag the shard's thumbnails; write vectors and tags to ``features.parquet``."""
    from imageindex.preprocess import model_input

    t0 = time.perf_counter()
    hold_lease(dataset_id, version, run_id, registry_path=registry_path)
    dataset = load_registry(registry_path).get(dataset_id)
    run = Run(dataset=dataset, version=version, run_dir="")
    staging = run.staging
    table = staging.read_parquet(preprocessed_uri, columns=["id", "ok", "thumbnail"])
    table = table.filter(pc.field("ok"))
    embedder = embedder_for(dataset)
    tagger = tagger_for(dataset, embedder)
    ids = table.column("id").to_pylist()
    thumbs = table.column("thumbnail").to_pylist()
    pixels = _model_inputs(staging, preprocessed_uri, ids)
    vectors = np.zeros((len(ids), embedder.dim), dtype=np.float32)
    tags_ai: list[list[str]] = []
    tags_detail: list[str] = []
    errors: list[str | None] = []
    size = getattr(embedder, "input_size", 224)
    model_seconds = 0.0
    # Hosted models take the thumbnail JPEG itself; local models take decoded arrays.
    stats_before = _provider_stats(embedder, tagger)
    jpeg_embedder = getattr(embedder, "wants_jpeg", False)
    jpeg_tagger = getattr(tagger, "wants_jpeg", False)
    # Decode the next batch while the model runs on this one.
    with ThreadPoolExecutor(max_workers=2) as pool:
        batches = [(s, thumbs[s : s + batch_size]) for s in range(0, len(ids), batch_size)]

        def decode(start, batch):
            if jpeg_embedder:
                return None
            return [model_input(pixels[start + i], b, size) for i, b in enumerate(batch)]

        futures = [pool.submit(decode, *b) for b in batches[:2]]
        for bi, (start, jpegs) in enumerate(batches):
            images = futures[bi].result()
            if bi + 2 < len(batches):
                futures.append(pool.submit(decode, *batches[bi + 2]))
            tm = time.perf_counter()
            emb = embedder.embed_jpegs(jpegs) if jpeg_embedder else embedder.embed_images(images)
            tags = tagger.tag_jpegs(jpegs, emb) if jpeg_tagger else tagger.tag(emb)
            model_seconds += time.perf_counter() - tm
            vectors[start : start + len(jpegs)] = emb.vectors
            batch_errors = list(getattr(emb, "errors", None) or [None] * len(jpegs))
            tag_errors = getattr(tagger, "last_errors", None)
            if jpeg_tagger and tag_errors:
                batch_errors = [e or t for e, t in zip(batch_errors, tag_errors, strict=False)]
            errors.extend(batch_errors)
            _fault_point("tag_embed", dataset_id, version, run_id)  # features not yet written
            for per_image in tags:
                tags_ai.append(sorted({t.name for t in per_image}))
                tags_detail.append(
                    json.dumps(
                        [
                            {"name": t.name, "score": round(float(t.score), 4), "source": t.source}
                            | ({"state": t.state} if t.state else {})
                            for t in per_image
                        ],
                        ensure_ascii=False,
                    )
                )
    n = len(ids)
    feats = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "tags_ai": pa.array(tags_ai, pa.list_(pa.string())),
            "tags_detail": pa.array(tags_detail, pa.string()),
            "tag_definitions_hash": pa.array(
                [getattr(tagger, "definitions_hash", None)] * n, pa.string()
            ),
            "model": pa.array([embedder.name] * n, pa.string()),
            "dim": pa.array([embedder.dim] * n, pa.int32()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1), pa.float32()), embedder.dim
            ),
            # A model's per-file refusal (e.g. an image the API rejects) fails that file only.
            "error": pa.array(errors, pa.string()),
        }
    )
    out_uri = preprocessed_uri.rsplit("/", 1)[0] + "/features.parquet"
    staging.write_parquet(out_uri, feats)
    seconds = time.perf_counter() - t0
    return {
        "providers": _stats_delta(stats_before, _provider_stats(embedder, tagger)),
        "features": out_uri,
        "preprocessed": preprocessed_uri,
        "embedded": n - sum(1 for e in errors if e),
        "model_failed": sum(1 for e in errors if e),
        "model": embedder.name,
        "seconds": round(seconds, 3),
        "model_seconds": round(model_seconds, 3),
        "images_per_second": round(n / seconds, 2) if seconds > 0 and n else 0.0,
    }


# --------------------------------------------------------------------------------------------
# upsert


def build_documents(
    pre: pa.Table, feats: pa.Table, *, dataset_id: str, version: str, model: str, dim: int
) -> pa.Table:
    """Join preprocess metadata and features into rows of the document schema."""
    schema = document_schema(dim)
    keep = pc.invert(pc.is_in(pre.column("error_reason"), pa.array(sorted(TRANSIENT_REASONS))))
    keep = pc.fill_null(keep, True)
    pre = pre.filter(keep)
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
    n = pre.num_rows
    vectors = np.zeros((n, dim), dtype=np.float32)
    status, error, tags_ai, detail, dhash = [], [], [], [], []
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
            status.append(STATUS_OK)
            error.append(None)
            tags_ai.append(f_tags[k])
            detail.append(f_detail[k])
            dhash.append(f_hash[k])
        else:
            status.append(STATUS_FAILED)
            error.append(f"{reason or 'not_embedded'}: {det or ''}".strip())
            tags_ai.append([])
            detail.append(None)
            dhash.append(None)
    now = datetime.now(UTC)
    mtimes = _mtime_timestamps(pre.column("mtime"))
    cols = {
        "id": pre.column("id"),
        "dataset_id": pa.array([dataset_id] * n, pa.string()),
        "dataset_version": pa.array([version] * n, pa.string()),
        "uri": pre.column("uri"),
        "key": pre.column("key"),
        "file_name": pa.array([k.rsplit("/", 1)[-1] for k in pre.column("key").to_pylist()]),
        "size": pre.column("size"),
        "mtime": mtimes,
        "fingerprint": pre.column("fingerprint"),
        "status": pa.array(status, pa.string()),
        "error": pa.array(error, pa.string()),
        "width": pre.column("width"),
        "height": pre.column("height"),
        "format": pre.column("format"),
        "mode": pre.column("mode"),
        "tags_ai": pa.array(tags_ai, pa.list_(pa.string())),
        "tags_user": pa.nulls(n, pa.list_(pa.string())),
        "tags_detail": pa.array(detail, pa.string()),
        "tag_definitions_hash": pa.array(dhash, pa.string()),
        "thumbnail_uri": pre.column("thumbnail_uri"),
        "model": pa.array([model] * n, pa.string()),
        "dim": pa.array([dim] * n, pa.int32()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        "indexed_at": pa.array([now] * n, pa.timestamp("us", "UTC")),
    }
    return pa.table([_as_type(cols[f.name], f.type) for f in schema], schema=schema)


def _mtime_timestamps(seconds) -> pa.Array:
    """Listing mtimes (float seconds) as UTC µs timestamps, rounded exactly as plan() rounds
    the listing's mtime, so an untouched file diffs as unchanged."""
    micros = pc.round(pc.multiply(seconds, 1e6)).cast(pa.int64())
    return micros.cast(pa.timestamp("us", "UTC"))


def _as_type(values, typ: pa.DataType):
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    return arr if arr.type == typ else arr.cast(typ)


def upsert(
    dataset_id: str,
    version: str,
    features_uri: str,
    preprocessed_uri: str,
    *,
    registry_path: str | None = None,
    run_id: str | None = None,
) -> dict:
    """Write the shard's documents to the store; ids are deterministic, so retries overwrite."""
    t0 = time.perf_counter()
    hold_lease(dataset_id, version, run_id, registry_path=registry_path)
    dataset = load_registry(registry_path).get(dataset_id)
    run = Run(dataset=dataset, version=version, run_dir="")
    staging = run.staging
    pre = staging.read_parquet(
        preprocessed_uri, columns=[n for n in PREPROCESSED_SCHEMA.names if n != "thumbnail"]
    )
    feats = staging.read_parquet(features_uri)
    embedder = embedder_for(dataset)
    store = run.store()
    store.ensure_table(dataset.id, model=embedder.name, dim=embedder.dim)
    docs = build_documents(
        pre, feats, dataset_id=dataset.id, version=version, model=embedder.name, dim=embedder.dim
    )
    manifest_uri = preprocessed_uri.rsplit("/", 1)[0] + "/manifest.parquet"
    reused, reuse_missing = _reused_documents(
        store, staging.read_parquet(manifest_uri), dataset_id=dataset.id, version=version
    )
    if reused.num_rows:
        docs = pa.concat_tables([docs, reused.select(docs.schema.names).cast(docs.schema)])
    written = 0
    chunk = _int_env("IMAGEINDEX_UPSERT_CHUNK_ROWS", 5000)
    fail_after = _int_env("IMAGEINDEX_FAULT_EXIT_AFTER_UPSERT_CHUNKS", 0)
    for n_chunk, start in enumerate(range(0, docs.num_rows, chunk), 1):
        written += store.upsert(dataset.id, docs.slice(start, chunk))
        if n_chunk == 1:
            _fault_point("upsert", dataset.id, version, run_id)  # one chunk written, maybe more
        if fail_after and n_chunk >= fail_after:
            # Fault injection for the kill tests: die like an OOM-killed worker, mid-shard.
            log.error("fault injection: exiting after %d upsert chunk(s)", n_chunk)
            os._exit(137)
    n_failed = int(pc.sum(pc.equal(docs.column("status"), STATUS_FAILED)).as_py() or 0)
    result = {
        "upserted": written,
        "ok": docs.num_rows - n_failed,
        "failed": n_failed,
        "reused": reused.num_rows,
        "reuse_missing": reuse_missing,
        "skipped_transient": pre.num_rows - docs.num_rows,
        "preprocessed": preprocessed_uri,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    # The shard's progress mark for whoever watches the run (the View Data page).
    staging.write_json(manifest_uri.rsplit("/", 1)[0] + "/upserted.json", result)
    return result


def _reused_documents(
    store, manifest: pa.Table, *, dataset_id: str, version: str
) -> tuple[pa.Table, int]:
    """Copies of already indexed documents for the shard's files marked ``reuse_id``: vector,
    tags and image metadata from the indexed copy; id, version, uri, name, size and mtime of
    this file. A source document deleted since the plan is skipped (counted): the file is not
    written, so the next run lists it as new and computes it."""
    if "reuse_id" not in manifest.column_names:
        return pa.table({}), 0
    rows = manifest.filter(pc.is_valid(manifest.column("reuse_id")))
    if not rows.num_rows:
        return pa.table({}), 0
    sources = [b for b in store.iter_documents(dataset_id, ids=rows.column("reuse_id").to_pylist())]
    if not sources:
        log.warning(
            "%d reused document(s) vanished since the plan; the next run redoes them", rows.num_rows
        )
        return pa.table({}), rows.num_rows
    src = pa.Table.from_batches(sources)
    pos = {i: k for k, i in enumerate(src.column("id").to_pylist())}
    take, keep = [], []
    for r, rid in enumerate(rows.column("reuse_id").to_pylist()):
        if rid in pos:
            take.append(pos[rid])
            keep.append(r)
    missing = rows.num_rows - len(keep)
    copies = src.take(pa.array(take, pa.int64()))
    rows = rows.take(pa.array(keep, pa.int64()))
    n = rows.num_rows
    replace = {
        "id": rows.column("id"),
        "dataset_id": pa.array([dataset_id] * n, pa.string()),
        "dataset_version": pa.array([version] * n, pa.string()),
        "uri": rows.column("uri"),
        "key": rows.column("key"),
        "file_name": pa.array([k.rsplit("/", 1)[-1] for k in rows.column("key").to_pylist()]),
        "size": rows.column("size"),
        "mtime": _mtime_timestamps(rows.column("mtime")),
        "fingerprint": rows.column("fingerprint"),
        "indexed_at": pa.array([datetime.now(UTC)] * n, pa.timestamp("us", "UTC")),
    }
    for name, values in replace.items():
        field = copies.schema.field(name)
        copies = copies.set_column(
            copies.schema.get_field_index(name), field, _as_type(values, field.type)
        )
    if missing:
        log.warning(
            "%d reused document(s) vanished since the plan; the next run redoes them", missing
        )
    return copies, missing


# --------------------------------------------------------------------------------------------
# finalize


def finalize(
    dataset_id: str,
    version: str,
    plan_result: dict,
    shard_results: list[dict] | None = None,
    *,
    registry_path: str | None = None,
    stage_seconds: dict | None = None,
) -> dict:
    """Delete documents of removed files (guarded), optimize the store, write the run report."""
    try:
        hold_lease(dataset_id, version, plan_result.get("run_id"), registry_path=registry_path)
        return _finalize(
            dataset_id, version, plan_result, shard_results, registry_path, stage_seconds
        )
    finally:
        if plan_result.get("run_id"):  # the run is over: the next one of this version may start
            release_lease(dataset_id, version, plan_result["run_id"], registry_path=registry_path)


def _finalize(dataset_id, version, plan_result, shard_results, registry_path, stage_seconds):
    t0 = time.perf_counter()
    cfg = settings()
    dataset = load_registry(registry_path).get(dataset_id)
    run = Run(dataset=dataset, version=version, run_dir=plan_result["run_dir"])
    staging = run.staging
    store = run.store()
    counts = dict(plan_result["counts"])
    deletes = staging.read_parquet(f"{run.run_dir}/deletes.parquet")
    indexed_before = counts["unchanged"] + counts["changed"] + counts["deleted"]

    # Failures, read back from the shards' staging files (XCom only carries counts).
    failures: list[dict] = []
    by_reason: Counter = Counter()
    for shard in plan_result["shards"]:
        pre_uri = shard.rsplit("/", 1)[0] + "/preprocessed.parquet"
        if not staging.exists(pre_uri):
            continue
        pre = staging.read_parquet(
            pre_uri, columns=["id", "uri", "ok", "error_reason", "error_detail"]
        )
        bad_rows = pre.filter(pc.invert(pc.field("ok"))).to_pylist()
        feat_uri = shard.rsplit("/", 1)[0] + "/features.parquet"
        if staging.exists(feat_uri):
            try:  # only the error column: the vectors are not needed here
                feats = staging.read_parquet(feat_uri, columns=["id", "error"])
            except (KeyError, ValueError, pa.ArrowInvalid):
                feats = None
            if feats is not None:
                uri_of = dict(
                    zip(pre.column("id").to_pylist(), pre.column("uri").to_pylist(), strict=True)
                )
                for fid, ferr in zip(
                    feats.column("id").to_pylist(), feats.column("error").to_pylist(), strict=True
                ):
                    if ferr:
                        bad_rows.append(
                            {
                                "uri": uri_of.get(fid),
                                "error_reason": "model_failed",
                                "error_detail": ferr,
                            }
                        )
        for row in bad_rows:
            by_reason[row["error_reason"]] += 1
            if len(failures) < REPORT_MAX_FAILURES:
                failures.append(
                    {
                        "uri": row["uri"],
                        "reason": row["error_reason"],
                        "detail": row["error_detail"],
                    }
                )

    report = {
        "dataset_id": dataset.id,
        "dataset_version": version,
        "mode": plan_result.get("mode"),
        "run_dir": run.run_dir,
        "shards": len(plan_result["shards"]),
        "listed": counts["listed"],
        "new": counts["new"],
        "changed": counts["changed"],
        "unchanged": counts["unchanged"],
        "retag": counts.get("retag", 0),
        # new or changed files whose vectors and tags were copied from an indexed document
        "reused": counts.get("reused", 0)
        - sum(r.get("reuse_missing", 0) for r in shard_results or []),
        "reuse_missing": sum(r.get("reuse_missing", 0) for r in shard_results or []),
        # files plan read to compare contents (new or changed ones of an indexed size), bytes
        "content_checks": counts.get("content_checks", 0),
        "content_bytes_read": counts.get("content_bytes_read", 0),
        "deleted": 0,
        "to_delete": counts["deleted"],
        "processed": counts.get("to_process", 0),
        "failed": sum(by_reason.values()),
        "failed_by_reason": dict(by_reason),
        "failures": failures,
        "seconds": dict(stage_seconds or {}),
    }
    if shard_results:
        providers: dict[str, Counter] = {}
        for r in shard_results:
            for key, stats in (r.get("providers") or {}).items():
                providers.setdefault(key, Counter()).update(stats)
        report["providers"] = {k: dict(v) for k, v in providers.items()}
        secs = Counter()
        for r in shard_results:
            for stage, s in (r.get("seconds") or {}).items():
                secs[stage] += s
        report["seconds"].update({k: round(v, 3) for k, v in secs.items()})
    report["seconds"]["plan"] = plan_result.get("seconds")

    refusal = None
    if counts["listed"] == 0:
        refusal = (
            f"the source of {dataset.id}/{version} listed no images; refusing to delete "
            f"{deletes.num_rows} document(s). Check that {dataset.version(version).source} is "
            "mounted/reachable and holds images."
        )
    elif indexed_before and deletes.num_rows / indexed_before > cfg.max_delete_fraction:
        refusal = (
            f"{deletes.num_rows} of {indexed_before} indexed files of {dataset.id}/{version} "
            f"disappeared from the source, more than IMAGEINDEX_MAX_DELETE_FRACTION="
            f"{cfg.max_delete_fraction}; nothing was deleted. If this is intended, raise the "
            "setting for one run."
        )
    if refusal is None and deletes.num_rows:
        report["deleted"] = store.delete(dataset.id, deletes.column("id").to_pylist())
    _fault_point("finalize", dataset.id, version, plan_result.get("run_id"))  # report not written
    report["optimize"] = _optimize(store, dataset.id)
    from imageindex.features import write_feature_table

    report["feature_table"] = write_feature_table(
        dataset, version, store, changed=bool(report["processed"] or report["deleted"])
    )
    report["indexed"] = store.count(dataset.id, _flt(version, None))
    report["indexed_ok"] = store.count(dataset.id, _flt(version, STATUS_OK))
    report["seconds"]["finalize"] = round(time.perf_counter() - t0, 3)
    report["finished_at"] = datetime.now(UTC).isoformat()
    report["refused_delete"] = refusal
    staging.write_json(f"{run.run_dir}/report.json", report)
    log.info("run report %s", json.dumps({k: v for k, v in report.items() if k != "failures"}))
    if refusal:
        raise UnsafeDeleteError(refusal)
    return report


def asset_events(report: dict) -> dict[str, dict | None] | None:
    """The extras of the asset events a finished run emits: ``{"dataset": {…}, "features":
    {…} or None}``, or None when the run changed nothing in the version (no file processed or
    deleted, feature table not rewritten) — then no event is emitted, so a DAG scheduled on
    the dataset's assets does not run after every no-change tick."""
    table = report.get("feature_table") or {}
    if not (report.get("processed") or report.get("deleted") or table.get("written")):
        return None
    dataset = {
        k: report.get(k) for k in ("new", "changed", "deleted", "failed", "indexed", "reused")
    }
    features = None
    if table.get("written"):
        features = {"uri": table.get("uri"), "rows": table.get("rows"), "rewritten": True}
    return {
        "dataset": {"dataset_version": report["dataset_version"], **dataset},
        "features": features and {"dataset_version": report["dataset_version"], **features},
    }


#: Stages that have a fault point (see :func:`_fault_point`).
FAULT_STAGES = ("plan", "preprocess", "tag_embed", "upsert", "finalize")


def current_try_number() -> int:
    """The Airflow try number of the running task: ``IMAGEINDEX_TRY_NUMBER`` (exported by the
    DAG at the start of each task), else ``AIRFLOW_CTX_TRY_NUMBER`` (Airflow's task runner),
    else 1 (a run outside Airflow)."""
    for name in ("IMAGEINDEX_TRY_NUMBER", "AIRFLOW_CTX_TRY_NUMBER"):
        raw = os.environ.get(name)
        if raw and raw.strip().isdigit():
            return int(raw)
    return 1


def parse_fault_spec(spec: str) -> tuple[str, frozenset[int] | None]:
    """``"<stage>[@<tries>]"`` → (stage, tries or None for every try); ``tag_embed@1,2``."""
    stage, _, tries = spec.strip().partition("@")
    if stage not in FAULT_STAGES:
        raise ConfigError(
            f"IMAGEINDEX_FAULT_EXIT_IN={spec!r}: stage {stage!r} is not one of {FAULT_STAGES}"
        )
    if not tries:
        return stage, None
    try:
        numbers = frozenset(int(t) for t in tries.split(","))
    except ValueError:
        raise ConfigError(
            f"IMAGEINDEX_FAULT_EXIT_IN={spec!r}: tries must be numbers like tag_embed@1,2"
        ) from None
    return stage, numbers


def _fault_file_spec(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"IMAGEINDEX_FAULT_FILE={path}: not readable JSON: {exc}") from None
    if not isinstance(spec, dict) or spec.get("stage") not in FAULT_STAGES:
        raise ConfigError(
            f'IMAGEINDEX_FAULT_FILE={path}: needs {{"stage": one of {list(FAULT_STAGES)}}}'
        )
    hang = spec.get("hang_s", 0)
    if isinstance(hang, bool) or not isinstance(hang, int | float) or hang < 0:
        raise ConfigError(
            f"IMAGEINDEX_FAULT_FILE={path}: hang_s must be seconds >= 0, not {hang!r}"
        )
    return spec


def _fault_point(
    stage: str, dataset: str | None = None, version: str | None = None, run_id: str | None = None
) -> None:
    """Fault injection for the kill tests: die like an OOM-killed worker (exit 137, no cleanup)
    in the middle of ``stage`` (one of :data:`FAULT_STAGES`).

    Two ways to ask for it:

    * ``IMAGEINDEX_FAULT_EXIT_IN=<stage>[@<tries>]`` — ``tag_embed`` kills every try,
      ``tag_embed@1`` only the first one (so Airflow's retry succeeds), ``tag_embed@1,2`` the
      first two. The try number is :func:`current_try_number`.
    * ``IMAGEINDEX_FAULT_FILE=<path>`` — when that file exists, it is read at every fault point
      (a long-running scheduler picks up a different fault per scenario without a restart):
      ``{"stage": "tag_embed", "tries": [1], "dataset": "x", "version": "v1", "run_id": "…"}``;
      only ``stage`` is required, each other key narrows where the fault fires. With
      ``"hang_s": N`` the task sleeps N seconds there instead of exiting, so a test can kill the
      worker that runs it while it is provably in the middle of the stage.
    """
    wanted: list[tuple[str, frozenset[int] | None, float]] = []
    if os.environ.get("IMAGEINDEX_FAULT_EXIT_IN"):
        wanted.append((*parse_fault_spec(os.environ["IMAGEINDEX_FAULT_EXIT_IN"]), 0.0))
    path = os.environ.get("IMAGEINDEX_FAULT_FILE")
    spec = _fault_file_spec(path) if path else None
    if spec is not None and all(
        spec.get(key) in (None, value)
        for key, value in (("dataset", dataset), ("version", version), ("run_id", run_id))
    ):
        tries = spec.get("tries")
        tries = frozenset(int(t) for t in tries) if tries else None
        wanted.append((spec["stage"], tries, float(spec.get("hang_s") or 0)))
    try_number = current_try_number()
    for want_stage, tries, hang_s in wanted:
        if want_stage == stage and (tries is None or try_number in tries):
            if hang_s:
                log.error("fault injection: hanging %gs in %s (try %d)", hang_s, stage, try_number)
                time.sleep(hang_s)
                return
            log.error("fault injection: exiting in the middle of %s (try %d)", stage, try_number)
            logging.shutdown()
            os._exit(137)


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def _flt(version: str, status: str | None):
    from imageindex.stores.base import Filter

    return Filter(versions=[version], status=status)


def _optimize(store, dataset_id: str) -> dict:
    if store.table_info(dataset_id) is None:
        return {}
    return store.optimize(dataset_id)


# --------------------------------------------------------------------------------------------
# Whole run without Airflow (CLI, tests, notebooks)


def run_all(
    dataset_id: str,
    version: str | None = None,
    *,
    mode: str = "incremental",
    run_id: str | None = None,
    shard_size: int | None = None,
    registry_path: str | None = None,
) -> dict:
    """Run every stage in this process, shard after shard, the way the DAG wires them."""
    run_id = run_id or "manual__" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    p = plan(
        dataset_id, version, run_id, mode=mode, shard_size=shard_size, registry_path=registry_path
    )
    try:
        results = []
        for shard in p["shards"]:
            results.append(
                run_shard(dataset_id, p["dataset_version"], shard, registry_path, run_id=run_id)
            )
        return finalize(dataset_id, p["dataset_version"], p, results, registry_path=registry_path)
    finally:
        release_lease(dataset_id, p["dataset_version"], run_id, registry_path=registry_path)


def run_shard(
    dataset_id: str,
    version: str,
    manifest_uri: str,
    registry_path=None,
    *,
    run_id: str | None = None,
) -> dict:
    """One shard's three stages in a row; with ``run_id``, each checks the run's lease."""
    kw = {"registry_path": registry_path, "run_id": run_id}
    a = preprocess(dataset_id, version, manifest_uri, **kw)
    b = tag_embed(dataset_id, version, a["preprocessed"], **kw)
    c = upsert(dataset_id, version, b["features"], a["preprocessed"], **kw)
    return shard_summary(a, b, c)


def _provider_stats(embedder, tagger) -> dict[str, dict[str, int]]:
    """Request/retry/throttle/failure counters of hosted models (offline models have none)."""
    out = {}
    for role, model in (("embedder", embedder), ("tagger", tagger)):
        stats = getattr(model, "stats", None)
        if isinstance(stats, dict) and stats:
            out[f"{role}:{model.name}"] = {k: int(v) for k, v in stats.items()}
    return out


def _stats_delta(before: dict, after: dict) -> dict:
    # Models are cached per worker process, so their counters span tasks: report this task's.
    return {
        key: {k: v - before.get(key, {}).get(k, 0) for k, v in counts.items()}
        for key, counts in after.items()
    }


def shard_summary(pre: dict, emb: dict, ups: dict) -> dict:
    """What finalize needs from one shard: counts and seconds per stage (XCom-sized)."""
    return {
        "providers": emb.get("providers", {}),
        "files": pre["files"],
        "reused": ups.get("reused", 0),
        "reuse_missing": ups.get("reuse_missing", 0),
        "ok": ups["ok"],
        "failed": ups["failed"],
        "upserted": ups["upserted"],
        "seconds": {
            "preprocess": pre["seconds"],
            "tag_embed": emb["seconds"],
            "upsert": ups["seconds"],
        },
    }


def iter_manifest(staging, uri: str) -> Iterator[dict]:
    yield from staging.read_parquet(uri).to_pylist()
