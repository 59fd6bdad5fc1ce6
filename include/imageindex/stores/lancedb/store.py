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
import pyarrow as pa
import pyarrow.compute as pc
from lance.dataset import ColumnOrdering

from imageindex.errors import ConfigError, EmptyIndexError, StoreError
from imageindex.stores.base import (
    HIT_COLUMNS,
    Filter,
    VectorStore,
    check_model_dim,
    check_positive_ints,
    check_same_model,
    chunks,
    conform_rows,
    hit_from_row,
    query_vector,
    select_columns,
    table_name,
)
from imageindex.stores.lancedb.compile import compile_lancedb
from imageindex.stores.lancedb.indexes import (
    SCALAR_INDEXES,
    compact_and_index,
    refresh_indexes,
    vector_index_partitions,
)
from imageindex.stores.lancedb.sql import (
    and_,
    compile_filter,
    keyset_sql,
    sql_in,
    sql_string,
    unique,
)
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


DOC_COLUMNS = [f.name for f in document_schema(1) if f.name != "vector"]

#: storage_options given to remote (s3://, gs://, az://) stores unless the registry sets them.
REMOTE_TIMEOUTS = {"connect_timeout": "10s", "timeout": "120s"}

# Lance reports a lost optimistic commit as OSError/RuntimeError with one of these messages
# (the lancedb layer already retried internally for up to 30 s before giving up).
_RETRYABLE = re.compile(
    r"commit conflict|retryable|too many concurrent writ|conflict detected|merge insert timed out",
    re.IGNORECASE,
)


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
        check_positive_ints(
            index_min_rows=index_min_rows,
            write_batch_rows=write_batch_rows,
            delete_batch_ids=delete_batch_ids,
            max_retries=max_retries,
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
        check_model_dim(dataset_id, model, dim)
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
            have_model = rows["model"][0].as_py() if rows.num_rows else None
        index = f"the index {table_name(dataset_id)} in {self.uri}"
        check_same_model(dataset_id, index, (have_model, have_dim), model, dim, "drop the table")

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
        for chunk in chunks(unique(list(ids)), self.delete_batch_ids):
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
        for chunk in chunks(unique(list(ids)), self.delete_batch_ids):
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
        new = unique([str(t) for t in tags])
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
        groups = [None] if ids is None else list(chunks(unique(list(ids)), self.delete_batch_ids))
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
        for chunk in chunks(unique(list(ids)), self.delete_batch_ids):
            for row in self._scan(tbl, DOC_COLUMNS, sql_in("id", chunk)).to_pylist():
                found[row["id"]] = row
        return [found[i] for i in ids if i in found]

    def _searchable(self, dataset_id: str):
        tbl = self._open(dataset_id)
        if tbl is None:
            raise EmptyIndexError(
                f"dataset {dataset_id!r} has not been indexed yet (no table "
                f"{table_name(dataset_id)} in {self.uri}); run its indexing DAG first"
            )
        return dataset_id, tbl

    def _compile_where(self, where) -> str:
        return compile_lancedb(where)

    def _compile_filter(self, flt: Filter | None) -> str | None:
        return compile_filter(flt)

    def _nearest(
        self, target, vector, where: str | None, limit: int, score_threshold: float | None
    ) -> list[tuple[float, dict]]:
        dataset_id, tbl = target
        query = query_vector(dataset_id, vector, self._model_dim(tbl)[1])
        # Failed documents carry zero vectors: their cosine distance is meaningless.
        where = and_(where, f"status = {sql_string(STATUS_OK)}")
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
        return [(1.0 - float(row["_distance"]), row) for row in q.to_arrow().to_pylist()]

    def _sorted_page(
        self, target, where: str | None, field: str, desc: bool, after: tuple | None, limit: int
    ) -> list[tuple[Hit, tuple]]:
        _, tbl = target
        if after is not None:
            # Keyset paging: "after the last row of the previous page" in (field, id) order, so
            # page N costs the same as page 1 and concurrent writes never shift a page.
            where = and_(where, keyset_sql(field, desc, *after))
        order = [ColumnOrdering(field, ascending=not desc), ColumnOrdering("id", ascending=True)]
        rows = self._scan(tbl, HIT_COLUMNS, where, order_by=order, limit=limit).to_pylist()
        return [(hit_from_row(row, 1.0), (_json_value(row[field]), row["id"])) for row in rows]

    # ---------------------------------------------------------------------------- maintenance

    def optimize(self, dataset_id: str) -> dict:
        name = table_name(dataset_id)
        tbl = self._require(dataset_id)
        with self._lock(name):
            fragments_before = len(tbl.to_lance().get_fragments())
            # Many small per-batch fragments slow every scan, and rows written since the indexes
            # were built are searched by brute force until this folds them in.
            self._retrying(f"optimize {name} ({self.uri})", lambda: compact_and_index(tbl))
            tbl.checkout_latest()
            rows = tbl.count_rows()
            created, vector_index = refresh_indexes(
                tbl, rows, min_rows=self.index_min_rows, partitions=self.index_partitions
            )
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


def _json_value(value):
    return value.isoformat() if hasattr(value, "isoformat") else value


def _table_schema(model: str, dim: int) -> pa.Schema:
    schema = document_schema(dim)
    i = schema.get_field_index("id")
    # Declaring id the primary key makes Lance detect two concurrent merge_inserts adding the
    # same new id; without it both commit and the table ends up with duplicate rows.
    schema = schema.set(i, schema.field(i).with_metadata({PRIMARY_KEY: b"true"}))
    return schema.with_metadata({META_MODEL: model.encode(), META_DIM: str(dim).encode()})


__all__ = ["DOC_COLUMNS", "SCALAR_INDEXES", "LanceDBStore", "vector_index_partitions"]
