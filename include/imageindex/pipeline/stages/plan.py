"""The plan stage: list the source, diff it against the index, mark reusable content and cut
shard manifests. Its result (XCom-sized) and ``plan.json`` carry counts and the shard paths."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from datetime import UTC, datetime

import pyarrow as pa

from imageindex.config import settings
from imageindex.errors import ConfigError
from imageindex.pipeline.context import RunContext, StageClock, check_model, open_run
from imageindex.pipeline.faults import fault_point
from imageindex.pipeline.lease import acquire_lease, release_lease
from imageindex.pipeline.reuse import mark_reusable, same_file
from imageindex.pipeline.shards import MANIFEST_SCHEMA
from imageindex.specs import DatasetSpec
from imageindex.stores.schema import STATUS_OK
from imageindex.types import FileEntry, doc_id

log = logging.getLogger(__name__)

MODES = ("incremental", "full")
#: Manifest rows buffered before they are written to the run's todo file.
ROWS_PER_WRITE = 10_000


def shard_plan(n_files: int, shard_size: int, max_shards: int) -> tuple[int, int]:
    """(number of shards, files per shard): the shard size grows so the count stays capped."""
    if n_files <= 0:
        return 0, shard_size
    size = max(shard_size, math.ceil(n_files / max_shards))
    return math.ceil(n_files / size), size


def entry_rows(entries: list[tuple[FileEntry, str]], dataset_id: str, version: str) -> pa.Table:
    """Manifest rows of listed files and their change (``new``, ``changed``, ``retag``, …)."""
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


def load_state(
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
    clock: StageClock | None = None,
) -> dict:
    """List the source, diff it against the index and cut shard manifests.

    Returns ``{"run_dir", "shards": [manifest uris], "counts": {...}}`` — small enough for XCom
    whatever the dataset size: the listing itself is streamed into staging files. ``clock``
    (optional) collects seconds per part of the plan (benchmarks).
    """
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is not one of {MODES}")
    t0 = time.perf_counter()
    clock = clock or StageClock()
    with clock.part("open_run"):
        ctx = open_run(dataset_id, version, run_id, registry_path=registry_path, clock=clock)
    acquire_lease(ctx, run_id)
    try:
        return _plan(ctx, run_id, mode, shard_size, max_shards, t0)
    except BaseException:
        release_lease(ctx.dataset.id, ctx.version, run_id, registry_path=registry_path)
        raise


def _diff(ctx: RunContext, source, state: dict, mode: str, counts: Counter) -> None:
    """Stream the listing into the run's todo file: every new, changed, re-tag (or, in a full
    run, unchanged) file; ``state`` keeps what was not listed (deleted files)."""
    pending: list[tuple[FileEntry, str]] = []

    def flush(writer) -> None:
        with ctx.clock.part("manifest_rows"):
            rows = entry_rows(pending, ctx.dataset.id, ctx.version)
        writer.write_table(rows)
        pending.clear()

    with ctx.staging.parquet_writer(ctx.run.todo, MANIFEST_SCHEMA) as writer:
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
            if len(pending) >= ROWS_PER_WRITE:
                flush(writer)
        if pending:
            flush(writer)


def _plan(ctx: RunContext, run_id: str, mode: str, shard_size, max_shards, t0: float) -> dict:
    cfg = settings()
    started_at = datetime.now(UTC).isoformat()
    staging, run, clock = ctx.staging, ctx.run, ctx.clock
    staging.delete_prefix(run.uri)  # a retried plan starts from a clean run folder
    store = ctx.store()
    check_model(ctx, store)
    source = ctx.source()
    source.check_available()

    with clock.part("definitions_hash"):
        definitions_hash = current_definitions_hash(ctx.dataset)
    with clock.part("load_state"):
        state = load_state(store, ctx.dataset.id, ctx.version, definitions_hash)
    counts = Counter(listed=0, new=0, changed=0, unchanged=0, deleted=0, retag=0)
    _diff(ctx, source, state, mode, counts)
    counts["deleted"] = len(state)
    deletes = pa.table(
        {"id": [v[0] for v in state.values()], "uri": list(state.keys())},
        schema=pa.schema([("id", pa.string()), ("uri", pa.string())]),
    )
    staging.write_parquet(run.deletes, deletes)
    del state

    todo = staging.read_parquet(run.todo)
    counts["content_checks"] = counts["content_bytes_read"] = 0
    if mode != "full":
        todo = mark_reusable(store, ctx.dataset.id, todo, definitions_hash, source, counts)
    counts["reused"] = todo.num_rows - todo.column("reuse_id").null_count
    n_todo = todo.num_rows
    n_shards, size = shard_plan(
        n_todo,
        shard_size or ctx.dataset.shard_size or cfg.shard_size,
        max_shards or cfg.max_shards,
    )
    shards = []
    for i in range(n_shards):
        uri = run.shard(i).manifest
        staging.write_parquet(uri, todo.slice(i * size, size))
        shards.append(uri)
    counts["to_process"] = n_todo
    fault_point("plan", ctx.dataset.id, ctx.version, run_id)  # shards written, plan.json not
    result = {
        "dataset_id": ctx.dataset.id,
        "dataset_version": ctx.version,
        "run_id": run_id,
        "started_at": started_at,
        "mode": mode,
        "run_dir": run.uri,
        "shards": shards,
        "shard_size": size,
        "counts": dict(counts),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    staging.write_json(run.plan, result)
    log.info(
        "plan %s/%s (%s): %s in %d shard(s)",
        ctx.dataset.id,
        ctx.version,
        mode,
        dict(counts),
        n_shards,
    )
    return result


def load_plan(
    dataset_id: str, version: str | None, run_id: str, *, registry_path: str | None = None
) -> dict:
    """The plan result of a run, read back from staging (XCom only carried the shard paths)."""
    ctx = open_run(dataset_id, version, run_id, registry_path=registry_path)
    return ctx.staging.read_json(ctx.run.plan)
