"""LanceDB implementation of :class:`~imageindex.stores.base.VectorStore`.

One Lance table per dataset (``images_<dataset_id>``); the embedder's model and dim are kept in
the table's schema metadata so a mismatching embedder is refused before anything is written.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lance.dataset import ColumnOrdering
from lancedb.index import Bitmap, BTree, HnswSq, LabelList

from imageindex.errors import ConfigError, EmptyIndexError, ModelMismatchError, StoreError
from imageindex.stores.base import (
    HIT_COLUMNS,
    MAX_VECTOR_WINDOW,
    SORT_FIELDS,
    Filter,
    Page,
    VectorStore,
    chunks,
    conform_rows,
    hit_from_row,
    select_columns,
    table_name,
)
from imageindex.stores.paging import decode_cursor, encode_cursor, parse_sort, query_digest
from imageindex.stores.schema import STATE_COLUMNS, STATUS_OK, document_schema
from imageindex.types import Hit

log = logging.getLogger(__name__)

# optimize() makes Lance collect index statistics, and with the variable unset Lance warns on
# every call that centroids will leave those statistics; nothing here reads them.
os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")

T = TypeVar("T")

META_MODEL = b"imageindex.model"
META_DIM = b"imageindex.dim"
PRIMARY_KEY = b"lance-schema:unenforced-primary-key"


#: IVF partitions of the vector index. LanceDB's default (sqrt(n) partitions, or one huge
#: partition for HNSW) gave recall@10 of 0.35-0.74 on 100k x 384 clustered vectors. 12.5k rows
#: per partition gave 0.99-1.0 at 100k but only 0.64 at 1M (80 partitions, 20 probed);
#: n**0.3 / 4 partitions (8 at 100k, 16 at 1M, 31 at 10M) kept filtered recall@10 at 1.0 at
#: 1M with p50 65 ms (bench/bench_store.py; numbers in the notes of the search issue).
def vector_index_partitions(rows: int) -> int:
    return max(1, round(rows**0.3 / 4))


DOC_COLUMNS = [f.name for f in document_schema(1) if f.name != "vector"]

#: storage_options given to remote (s3://, gs://, az://) stores unless the registry sets them.
REMOTE_TIMEOUTS = {"connect_timeout": "10s", "timeout": "120s"}

#: Scalar indexes optimize() maintains, by column.
SCALAR_INDEXES: dict[str, Callable[[], Any]] = {
    "id": BTree,
    "uri": BTree,
    "dataset_version": Bitmap,
    "status": Bitmap,
    "tags_ai": LabelList,
    "tags_user": LabelList,
}

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# Lance reports a lost optimistic commit as OSError/RuntimeError with one of these messages
# (the lancedb layer already retried internally for up to 30 s before giving up).
_RETRYABLE = re.compile(
    r"commit conflict|retryable|too many concurrent writ|conflict detected|merge insert timed out",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------------------------
# SQL building: every value that reaches a filter string goes through sql_string().


def sql_string(value: str) -> str:
    """Quote ``value`` as a SQL string literal (single quotes doubled).

    Control characters are refused: no legitimate id, uri or tag has them, and they are the usual
    way to smuggle something past a parser.
    """
    if not isinstance(value, str):
        raise ConfigError(f"filter value {value!r} must be a string, not {type(value).__name__}")
    if _CONTROL_CHARS.search(value):
        raise ConfigError(f"filter value {value!r} contains a control character; remove it")
    return "'" + value.replace("'", "''") + "'"


def sql_list(values: Sequence[str]) -> str:
    """``['a', 'b']``: an array literal for array_has_any / array_has_all."""
    return "[" + ", ".join(sql_string(v) for v in values) + "]"


def sql_in(column: str, values: Sequence[str]) -> str:
    """``column IN ('a', 'b')``; an empty list matches nothing."""
    if not values:
        return "false"
    return f"{column} IN (" + ", ".join(sql_string(v) for v in values) + ")"


def _unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def compile_filter(flt: Filter | None) -> str | None:
    """The SQL predicate for ``flt`` (None when it constrains nothing)."""
    if flt is None:
        return None
    parts: list[str] = []
    if flt.versions is not None:
        parts.append(sql_in("dataset_version", _unique(flt.versions)))
    if flt.uris is not None:
        parts.append(sql_in("uri", _unique(flt.uris)))
    if flt.status is not None:
        parts.append(f"status = {sql_string(flt.status)}")
    if flt.tags_any:
        lst = sql_list(_unique(flt.tags_any))
        parts.append(f"(array_has_any(tags_ai, {lst}) OR array_has_any(tags_user, {lst}))")
    for tag in _unique(flt.tags_all):
        # A tag may be in either list, so array_has_all on one column would miss documents.
        one = sql_list([tag])
        parts.append(f"(array_has_any(tags_ai, {one}) OR array_has_any(tags_user, {one}))")
    if flt.tags_exclude:
        lst = sql_list(_unique(flt.tags_exclude))
        # array_has_any(NULL, ...) is NULL, and NOT NULL would drop untagged documents.
        parts.append(
            f"(tags_ai IS NULL OR NOT array_has_any(tags_ai, {lst}))"
            f" AND (tags_user IS NULL OR NOT array_has_any(tags_user, {lst}))"
        )
    if not parts:
        return None
    return " AND ".join(f"({p})" for p in parts)


def _and(*preds: str | None) -> str | None:
    kept = [p for p in preds if p]
    if not kept:
        return None
    return " AND ".join(f"({p})" for p in kept)


def _is_retryable(exc: BaseException) -> bool:
    if getattr(exc, "retryable", False):
        return True
    return isinstance(exc, OSError | RuntimeError) and bool(_RETRYABLE.search(str(exc)))


class _FileLock:
    """An exclusive fcntl lock on a file, held for one write. Serializes writers on one host
    (Airflow workers sharing a local store) so optimistic commits never have to fight."""

    def __init__(self, path: Path | None):
        self.path = path
        self._fh = None

    def __enter__(self) -> _FileLock:
        if self.path is not None:
            self._fh = open(self.path, "a+")  # noqa: SIM115 - closed in __exit__
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            finally:
                self._fh.close()
                self._fh = None


class LanceDBStore(VectorStore):
    """A LanceDB database at ``uri`` (a local directory or ``s3://bucket/prefix``).

    ``index_min_rows``: a vector index is built once a table has this many rows; below it the
    flat (exact) search is fast enough. ``index_partitions``: IVF partitions of that index
    (None = :func:`vector_index_partitions`). ``ef``, ``refine_factor``, ``nprobes``: how
    hard an indexed search looks (None = LanceDB's default). ``file_lock``: serialize writers
    with an fcntl lock (local stores only; default on for them). ``exact_search_min_rows``: with
    an index, a filter matching fewer rows than ``max(exact_search_min_rows, 20 * top_k)`` is
    searched exactly.
    """

    def __init__(
        self,
        uri: str,
        *,
        storage_options: dict[str, str] | None = None,
        index_min_rows: int = 50_000,
        index_partitions: int | None = None,
        write_batch_rows: int = 5_000,
        delete_batch_ids: int = 1_000,
        file_lock: bool | None = None,
        exact_search_min_rows: int = 1_000,
        refine_factor: int | None = 2,
        ef: int | None = 150,
        nprobes: int | None = None,
        max_retries: int = 8,
        retry_base_delay: float = 0.2,
    ):
        self.uri = uri
        self.local = "://" not in uri
        if file_lock is None:
            file_lock = self.local
        if file_lock and not self.local:
            raise ConfigError(
                f"file_lock needs a local store; {uri!r} is remote (leave file_lock unset)"
            )
        for name, value in (
            ("index_min_rows", index_min_rows),
            ("write_batch_rows", write_batch_rows),
            ("delete_batch_ids", delete_batch_ids),
            ("max_retries", max_retries),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"store setting {name} must be a positive integer (got {value!r})"
                )
        self.index_min_rows = index_min_rows
        self.index_partitions = index_partitions
        self.write_batch_rows = write_batch_rows
        self.delete_batch_ids = delete_batch_ids
        self.exact_search_min_rows = exact_search_min_rows
        self.refine_factor = refine_factor
        self.ef = ef
        self.nprobes = nprobes
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self._lock_dir = Path(uri) / "_locks" if file_lock else None
        #: counters for tests and benchmarks: batches, lance_attempts, conflict_retries
        self.stats: Counter[str] = Counter()
        # A remote store that accepts connections but never answers must fail, not hang a worker:
        # object_store's defaults wait without limit. Explicit options win.
        self._storage_options = (
            storage_options if self.local else {**REMOTE_TIMEOUTS, **(storage_options or {})}
        )
        self._conn = None
        self._tables: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"LanceDBStore({self.uri!r})"

    @property
    def _db(self):
        # Connecting to S3 already lists the bucket: deferred so that building a store (at DAG
        # parse time, say) never touches the network.
        if self._conn is None:
            try:
                # Interval 0: every read sees the latest commit, other processes' included.
                self._conn = lancedb.connect(
                    self.uri,
                    storage_options=self._storage_options,
                    read_consistency_interval=timedelta(0),
                )
            except Exception as exc:
                hint = "storage_options (endpoint, region, credentials)" if not self.local else ""
                raise StoreError(
                    f"cannot open LanceDB store {self.uri!r}: {exc}; check that the store is "
                    "reachable, the store uri" + (f" and {hint}" if hint else "")
                ) from exc
        return self._conn

    # ---------------------------------------------------------------------------- plumbing

    def _lock(self, name: str) -> _FileLock:
        if self._lock_dir is None:
            return _FileLock(None)
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        return _FileLock(self._lock_dir / f"{name}.lock")

    def _open(self, dataset_id: str):
        name = table_name(dataset_id)
        tbl = self._tables.get(name)
        if tbl is not None:
            return tbl
        db = self._db
        try:
            tbl = db.open_table(name)
        except Exception as exc:
            if isinstance(exc, ValueError) and "not found" in str(exc):
                return None
            raise StoreError(f"cannot open table {name} in {self.uri}: {exc}") from exc
        self._tables[name] = tbl
        return tbl

    def _require(self, dataset_id: str):
        tbl = self._open(dataset_id)
        if tbl is None:
            raise StoreError(
                f"dataset {dataset_id!r} has no table {table_name(dataset_id)} in store "
                f"{self.uri}; call ensure_table() first (the indexing DAG does)"
            )
        return tbl

    @staticmethod
    def _model_dim(tbl) -> tuple[str | None, int]:
        schema = tbl.schema
        meta = schema.metadata or {}
        model = meta.get(META_MODEL)
        return (model.decode() if model else None), schema.field("vector").type.list_size

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        delay = self.retry_base_delay
        for attempt in range(1, self.max_retries + 1):
            try:
                return fn()
            except Exception as exc:
                if not _is_retryable(exc):
                    raise StoreError(f"{what} failed: {exc}") from exc
                if attempt == self.max_retries:
                    raise StoreError(
                        f"{what} still conflicts with concurrent writers after {attempt} "
                        f"attempts ({exc}); run fewer parallel writers or retry the task"
                    ) from exc
                self.stats["conflict_retries"] += 1
                log.info("%s: commit conflict (attempt %d), retrying: %s", what, attempt, exc)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def _scan(
        self,
        tbl,
        columns: list[str] | None,
        where: str | None,
        *,
        order_by: list[str] | None = None,
        limit: int | None = None,
    ) -> pa.Table:
        return tbl.to_lance().to_table(
            columns=columns, filter=where, order_by=order_by, limit=limit
        )

    def _has_vector_index(self, tbl) -> bool:
        return any(ix.columns == ["vector"] for ix in tbl.list_indices())

    # ---------------------------------------------------------------------------- tables

    def ensure_table(self, dataset_id: str, *, model: str, dim: int) -> None:
        name = table_name(dataset_id)
        if not isinstance(model, str) or not model:
            raise ConfigError(f"dataset {dataset_id!r}: embedder model name must be non-empty")
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"dataset {dataset_id!r}: vector dim must be a positive integer")
        tbl = self._open(dataset_id)
        if tbl is None:
            with self._lock(name):
                tbl = self._open(dataset_id)
                if tbl is None:
                    schema = _table_schema(model, dim)
                    try:
                        # exist_ok: a writer on another host may have created it meanwhile.
                        tbl = self._db.create_table(name, schema=schema, exist_ok=True)
                    except Exception as exc:
                        raise StoreError(
                            f"cannot create table {name} in {self.uri}: {exc}"
                        ) from exc
                    self._tables[name] = tbl
        self._check_model(dataset_id, tbl, model, dim)

    def _check_model(self, dataset_id: str, tbl, model: str, dim: int) -> None:
        have_model, have_dim = self._model_dim(tbl)
        if have_model is None:
            # A table made outside imageindex: its rows still say which model wrote them.
            rows = self._scan(tbl, ["model"], "model IS NOT NULL", limit=1)
            have_model = rows["model"][0].as_py() if rows.num_rows else model
        if have_model != model or have_dim != dim:
            raise ModelMismatchError(
                f"dataset {dataset_id!r}: the index {table_name(dataset_id)} in {self.uri} holds "
                f"vectors of model {have_model!r} (dim {have_dim}), but the configured embedder "
                f"is {model!r} (dim {dim}). Configure the embedder the index was built with, or "
                f"use a new dataset id (or drop the table) to re-embed everything."
            )

    def table_info(self, dataset_id: str) -> dict | None:
        tbl = self._open(dataset_id)
        if tbl is None:
            return None
        model, dim = self._model_dim(tbl)
        return {"model": model, "dim": dim, "rows": tbl.count_rows()}

    # ---------------------------------------------------------------------------- writes

    def _conform(self, dataset_id: str, tbl, table: pa.Table) -> pa.Table:
        model, dim = self._model_dim(tbl)
        return conform_rows(dataset_id, table, tbl.schema, model=model, dim=dim)

    def _keep_user_tags(self, tbl, batch: pa.Table) -> pa.Table:
        """Fill null incoming ``tags_user`` with what the stored rows have."""
        incoming = batch["tags_user"]
        if incoming.null_count == 0:
            return batch
        need = pc.filter(batch["id"], pc.is_null(incoming)).to_pylist()
        ds = tbl.to_lance()
        existing: dict[str, list[str]] = {}
        for chunk in chunks(need, 5_000):
            where = f"tags_user IS NOT NULL AND {sql_in('id', chunk)}"
            found = ds.to_table(columns=["id", "tags_user"], filter=where)
            existing.update(
                zip(found["id"].to_pylist(), found["tags_user"].to_pylist(), strict=True)
            )
        if not existing:
            return batch
        merged = [
            existing.get(doc) if tags is None else tags
            for doc, tags in zip(batch["id"].to_pylist(), incoming.to_pylist(), strict=True)
        ]
        idx = batch.schema.get_field_index("tags_user")
        return batch.set_column(idx, batch.schema.field(idx), pa.array(merged, incoming.type))

    def _write_batch(self, tbl, name: str, batch: pa.Table) -> None:
        """One committed batch: the unit an interrupted upsert resumes from."""

        def attempt():
            # Re-read user tags on every attempt: a conflict may mean someone just tagged.
            data = self._keep_user_tags(tbl, batch)
            merge = tbl.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
            return merge.execute(data)

        with self._lock(name):
            result = self._retrying(f"upsert into {name} ({self.uri})", attempt)
        self.stats["batches"] += 1
        self.stats["lance_attempts"] += getattr(result, "num_attempts", 1)

    def upsert(self, dataset_id: str, table: pa.Table) -> int:
        name = table_name(dataset_id)
        tbl = self._require(dataset_id)
        rows = self._conform(dataset_id, tbl, table)
        for start in range(0, rows.num_rows, self.write_batch_rows):
            self._write_batch(tbl, name, rows.slice(start, self.write_batch_rows))
        return rows.num_rows

    def delete(self, dataset_id: str, ids: Sequence[str]) -> int:
        name = table_name(dataset_id)
        tbl = self._open(dataset_id)
        if tbl is None or not ids:
            return 0
        deleted = 0
        for chunk in chunks(_unique(list(ids)), self.delete_batch_ids):
            where = sql_in("id", chunk)
            with self._lock(name):
                found = tbl.count_rows(where)
                if found:
                    self._retrying(
                        f"deleting rows of {name} ({self.uri})", lambda w=where: tbl.delete(w)
                    )
                    deleted += found
        return deleted

    def _change_user_tags(
        self, dataset_id: str, ids: Sequence[str], edit: Callable[[list[str]], list[str]]
    ) -> int:
        name = table_name(dataset_id)
        tbl = self._require(dataset_id)
        changed = 0
        for chunk in chunks(_unique(list(ids)), self.delete_batch_ids):
            with self._lock(name):
                rows = self._scan(tbl, None, sql_in("id", chunk))
                before = rows["tags_user"].to_pylist()
                after = [edit(list(tags or [])) for tags in before]
                keep = [
                    i for i, (b, a) in enumerate(zip(before, after, strict=True)) if (b or []) != a
                ]
                if not keep:
                    continue
                idx = rows.schema.get_field_index("tags_user")
                rows = rows.set_column(
                    idx, rows.schema.field(idx), pa.array(after, rows["tags_user"].type)
                ).take(keep)

                def attempt(rows=rows):
                    return tbl.merge_insert("id").when_matched_update_all().execute(rows)

                self._retrying(f"tag update in {name} ({self.uri})", attempt)
                changed += len(keep)
        return changed

    def add_user_tags(self, dataset_id: str, ids: Sequence[str], tags: Sequence[str]) -> int:
        new = _unique([str(t) for t in tags])
        return self._change_user_tags(
            dataset_id, ids, lambda cur: cur + [t for t in new if t not in cur]
        )

    def remove_user_tags(self, dataset_id: str, ids: Sequence[str], tags: Sequence[str]) -> int:
        drop = set(tags)
        return self._change_user_tags(
            dataset_id, ids, lambda cur: [t for t in cur if t not in drop]
        )

    # ---------------------------------------------------------------------------- reads

    def iter_state(
        self, dataset_id: str, version: str, batch_size: int = 50_000
    ) -> Iterator[pa.RecordBatch]:
        tbl = self._open(dataset_id)
        where = f"dataset_version = {sql_string(version)}"
        if tbl is None:
            return iter(())
        scanner = tbl.to_lance().scanner(
            columns=list(STATE_COLUMNS), filter=where, batch_size=batch_size
        )
        return (rb for rb in scanner.to_batches() if rb.num_rows)

    def iter_documents(
        self,
        dataset_id: str,
        *,
        version: str | None = None,
        ids: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        batch_size: int = 10_000,
    ) -> Iterator[pa.RecordBatch]:
        tbl = self._open(dataset_id)
        if tbl is None:
            return
        cols = select_columns([f.name for f in tbl.schema], columns)
        base = f"dataset_version = {sql_string(version)}" if version is not None else None
        groups = [None] if ids is None else list(chunks(_unique(list(ids)), self.delete_batch_ids))
        for group in groups:
            if group is not None and not group:
                continue
            parts = [w for w in (base, sql_in("id", group) if group is not None else None) if w]
            scanner = tbl.to_lance().scanner(
                columns=cols, filter=" AND ".join(parts) or None, batch_size=batch_size
            )
            for rb in scanner.to_batches():
                if rb.num_rows:
                    yield rb

    def count(self, dataset_id: str, flt: Filter | None = None) -> int:
        tbl = self._open(dataset_id)
        if tbl is None:
            return 0
        where = compile_filter(flt)
        return tbl.count_rows(where) if where else tbl.count_rows()

    def get(self, dataset_id: str, ids: Sequence[str]) -> list[dict]:
        tbl = self._open(dataset_id)
        if tbl is None or not ids:
            return []
        found: dict[str, dict] = {}
        for chunk in chunks(_unique(list(ids)), self.delete_batch_ids):
            for row in self._scan(tbl, DOC_COLUMNS, sql_in("id", chunk)).to_pylist():
                found[row["id"]] = row
        return [found[i] for i in ids if i in found]

    def search(
        self,
        dataset_id: str,
        vector: np.ndarray | None,
        flt: Filter,
        *,
        top_k: int = 10,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        tbl = self._open(dataset_id)
        if tbl is None:
            raise EmptyIndexError(
                f"dataset {dataset_id!r} has not been indexed yet (no table "
                f"{table_name(dataset_id)} in {self.uri}); run its indexing DAG first"
            )
        if not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer (got {top_k!r})")
        where = compile_filter(flt)
        if vector is None:
            rows = self._scan(tbl, HIT_COLUMNS, where, order_by=["uri"], limit=top_k)
            return [_hit(row, 1.0) for row in rows.to_pylist()]

        rows = self._vector_rows(dataset_id, tbl, vector, where, top_k)
        hits = []
        for row in rows:
            score = 1.0 - float(row["_distance"])
            if score_threshold is not None and score < score_threshold:
                continue
            hits.append(_hit(row, score))
        hits.sort(key=lambda h: -h.score)
        return hits

    def _vector_rows(self, dataset_id: str, tbl, vector, where: str | None, limit: int) -> list:
        _, dim = self._model_dim(tbl)
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != dim:
            raise ModelMismatchError(
                f"dataset {dataset_id!r}: query vector has dim {query.shape[0]} but the index "
                f"holds dim {dim}; embed the query with the indexed model"
            )
        if not np.isfinite(query).all() or not np.any(query):
            raise ConfigError("query vector is all zeros or not finite; cannot rank by cosine")
        # Failed documents carry zero vectors: their cosine distance is meaningless.
        where = _and(where, f"status = {sql_string(STATUS_OK)}")
        q = (
            tbl.search(query, vector_column_name="vector")
            .distance_type("cosine")
            .where(where, prefilter=True)
            .select([*HIT_COLUMNS, "_distance"])
            .limit(limit)
        )
        if self._has_vector_index(tbl):
            # An ANN index over a few matching rows can miss them entirely; brute force over
            # a small filtered set is both exact and fast.
            if tbl.count_rows(where) < max(self.exact_search_min_rows, 20 * limit):
                q = q.bypass_vector_index()
                self.stats["exact_searches"] += 1
            else:
                if self.refine_factor:
                    q = q.refine_factor(self.refine_factor)
                if self.ef:
                    q = q.ef(max(self.ef, limit))
                if self.nprobes:
                    q = q.nprobes(self.nprobes)
                self.stats["index_searches"] += 1
        return q.to_arrow().to_pylist()

    def query(
        self,
        dataset_id: str,
        *,
        vector: np.ndarray | None = None,
        where=None,
        top_k: int = 10,
        score_threshold: float | None = None,
        cursor: str | None = None,
        sort: str = "uri",
    ) -> Page:
        from imageindex.query import compile_lancedb, to_text

        tbl = self._open(dataset_id)
        if tbl is None:
            raise EmptyIndexError(
                f"dataset {dataset_id!r} has not been indexed yet (no table "
                f"{table_name(dataset_id)} in {self.uri}); run its indexing DAG first"
            )
        if not isinstance(top_k, int) or not 1 <= top_k <= MAX_VECTOR_WINDOW:
            raise ConfigError(f"top_k must be between 1 and {MAX_VECTOR_WINDOW} (got {top_k!r})")
        where_sql = compile_lancedb(where) if where is not None else None
        digest = query_digest(
            dataset_id,
            vector,
            to_text(where) if where is not None else None,
            sort if vector is None else "score",
            score_threshold,
        )
        pos = decode_cursor(cursor, digest) if cursor else {}

        if vector is not None:
            offset = int(pos.get("o", 0))
            if offset < 0 or offset + top_k > MAX_VECTOR_WINDOW:
                raise ConfigError(
                    f"vector search pages stop at {MAX_VECTOR_WINDOW} results; narrow the query "
                    "with filters or a score threshold"
                )
            rows = self._vector_rows(dataset_id, tbl, vector, where_sql, offset + top_k + 1)
            ranked = sorted(
                ((1.0 - float(r["_distance"]), r) for r in rows), key=lambda t: (-t[0], t[1]["id"])
            )
            if score_threshold is not None:
                ranked = [t for t in ranked if t[0] >= score_threshold]
            page = ranked[offset : offset + top_k]
            more = len(ranked) > offset + top_k and offset + top_k < MAX_VECTOR_WINDOW
            nxt = encode_cursor(digest, o=offset + top_k) if more and page else None
            return Page([_hit(r, sc) for sc, r in page], nxt)

        field, desc = parse_sort(sort, SORT_FIELDS)
        sql = where_sql
        if pos:
            # Keyset paging: "after the last row of the previous page" in (field, id) order, so
            # page N costs the same as page 1 and concurrent writes never shift a page.
            sql = _and(sql, _keyset_sql(field, desc, pos["v"], pos["i"]))
        order = [ColumnOrdering(field, ascending=not desc), ColumnOrdering("id", ascending=True)]
        rows = self._scan(tbl, HIT_COLUMNS, sql, order_by=order, limit=top_k + 1).to_pylist()
        page = rows[:top_k]
        nxt = None
        if len(rows) > top_k:
            v = page[-1][field]
            nxt = encode_cursor(
                digest, v=v.isoformat() if hasattr(v, "isoformat") else v, i=page[-1]["id"]
            )
        return Page([_hit(r, 1.0) for r in page], nxt)

    # ---------------------------------------------------------------------------- maintenance

    def optimize(self, dataset_id: str) -> dict:
        name = table_name(dataset_id)
        tbl = self._require(dataset_id)
        with self._lock(name):
            fragments_before = len(tbl.to_lance().get_fragments())
            # Many small per-batch fragments slow every scan, and rows written since the indexes
            # were built are searched by brute force until this folds them in.
            self._retrying(f"optimize {name} ({self.uri})", lambda: _compact_and_index(tbl))
            tbl.checkout_latest()
            rows = tbl.count_rows()
            have = {tuple(ix.columns) for ix in tbl.list_indices()}
            created: list[str] = []
            # New rows go into small index segments (cheap, exact partitions kept); once they
            # pile up, indexes are rebuilt in full, sized for today's row count.
            for ix in tbl.list_indices():
                segments = tbl.index_stats(ix.name).num_indices
                if segments > MAX_INDEX_SEGMENTS and rows:
                    column = ix.columns[0]
                    if column == "vector":
                        partitions = self.index_partitions or vector_index_partitions(rows)
                        config = HnswSq(distance_type="cosine", num_partitions=partitions)
                        kind = "IVF_HNSW_SQ"
                    elif column in SCALAR_INDEXES:
                        config, kind = SCALAR_INDEXES[column](), SCALAR_INDEXES[column].__name__
                    else:
                        continue
                    tbl.create_index(column, config=config, replace=True)
                    created.append(f"{column}:{kind} (rebuilt from {segments} segments)")
            if rows:
                for column, config in SCALAR_INDEXES.items():
                    if (column,) not in have:
                        tbl.create_index(column, config=config())
                        created.append(f"{column}:{config.__name__}")
            vector_index = ("vector",) in have
            if not vector_index and rows >= self.index_min_rows:
                partitions = self.index_partitions or vector_index_partitions(rows)
                tbl.create_index(
                    "vector", config=HnswSq(distance_type="cosine", num_partitions=partitions)
                )
                created.append("vector:IVF_HNSW_SQ")
                vector_index = True
            fragments_after = len(tbl.to_lance().get_fragments())
        indexes = sorted(f"{','.join(ix.columns)}:{ix.index_type}" for ix in tbl.list_indices())
        return {
            "dataset_id": dataset_id,
            "table": name,
            "rows": rows,
            "fragments_before": fragments_before,
            "fragments_after": fragments_after,
            "indexes_created": created,
            "indexes": indexes,
            "vector_index": vector_index,
            "vector_index_min_rows": self.index_min_rows,
        }


#: Index segments (one per optimize that found new rows) before an index is rebuilt in full.
MAX_INDEX_SEGMENTS = 8


def _compact_and_index(tbl) -> None:
    """Compact small fragments and index new rows as an added segment of each index.

    Not ``Table.optimize()``: its default merges the new rows into the existing vector index by
    retraining it, which at 100k rows collapsed IVF_HNSW_SQ to a single partition (recall@10
    0.96 → 0.62) and cost a full index build on every run that wrote rows.
    """
    ds = tbl.to_lance()
    ds.optimize.compact_files()
    ds.optimize.optimize_indices(num_indices_to_merge=0)
    ds.cleanup_old_versions(older_than=timedelta(days=7))


def _keyset_sql(field: str, desc: bool, last, last_id: str) -> str:
    if field in ("mtime", "indexed_at"):
        from datetime import datetime

        iso = datetime.fromisoformat(str(last)).isoformat()
        lit = f"TIMESTAMP {sql_string(iso)}"
    elif field in ("size",):
        lit = str(int(last))
    else:
        lit = sql_string(str(last))
    op = "<" if desc else ">"
    return f"({field} {op} {lit} OR ({field} = {lit} AND id > {sql_string(str(last_id))}))"


def _table_schema(model: str, dim: int) -> pa.Schema:
    schema = document_schema(dim)
    i = schema.get_field_index("id")
    # Declaring id the primary key makes Lance detect two concurrent merge_inserts adding the
    # same new id; without it both commit and the table ends up with duplicate rows.
    schema = schema.set(i, schema.field(i).with_metadata({PRIMARY_KEY: b"true"}))
    return schema.with_metadata({META_MODEL: model.encode(), META_DIM: str(dim).encode()})


def _hit(row: dict, score: float) -> Hit:
    return hit_from_row(row, score, row.get("mtime"))


__all__ = [
    "LanceDBStore",
    "compile_filter",
    "sql_in",
    "sql_list",
    "sql_string",
]
