"""Content reuse: a new or changed file whose content is already indexed (any version of the
dataset, the same model, the same tag definitions) is copied from that document in upsert
instead of being read, decoded and embedded again.

Plan marks such files (``reuse_id`` in the shard manifest, :func:`mark_reusable`); upsert
copies them (:func:`reused_documents`). Content is matched by ``sha256:`` (or S3 ``etag:``)
fingerprints; a ``stat:`` fingerprint only says "this very file is unchanged".
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from imageindex.pipeline.documents import as_type, mtime_timestamps
from imageindex.stores.schema import STATUS_OK
from imageindex.types import FileEntry

log = logging.getLogger(__name__)


#: Fingerprints that identify content wherever the file lives (a stat fingerprint only means
#: "this very file is unchanged", so it is matched together with the uri).
CONTENT_FINGERPRINTS = ("sha256:", "etag:")


def same_file(known: tuple, entry: FileEntry) -> bool:
    """Whether a listed file is the one the index holds (``known`` from plan's index state).

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


def content_checks(store, dataset_id: str, todo: pa.Table, definitions_hash, source, counts):
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


def mark_reusable(
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
        content_checks(store, dataset_id, todo, definitions_hash, source, counts)
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


def reused_documents(
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
        "mtime": mtime_timestamps(rows.column("mtime")),
        "fingerprint": rows.column("fingerprint"),
        "indexed_at": pa.array([datetime.now(UTC)] * n, pa.timestamp("us", "UTC")),
    }
    for name, values in replace.items():
        field = copies.schema.field(name)
        copies = copies.set_column(
            copies.schema.get_field_index(name), field, as_type(values, field.type)
        )
    if missing:
        log.warning(
            "%d reused document(s) vanished since the plan; the next run redoes them", missing
        )
    return copies, missing
