"""The vector store interface the pipeline and the search service talk to.

A store holds one table per dataset; every version of the dataset lives in that table, told apart
by ``dataset_version``. Rows follow :func:`imageindex.stores.schema.document_schema`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from imageindex.errors import ConfigError, ModelMismatchError, StoreError
from imageindex.stores.paging import decode_cursor, encode_cursor, parse_sort, query_digest
from imageindex.stores.schema import STATUS_OK
from imageindex.types import Hit

_DATASET_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def table_name(dataset_id: str) -> str:
    """Name of the table holding ``dataset_id``; the id is validated because it becomes a path."""
    if not isinstance(dataset_id, str) or not _DATASET_ID_RE.match(dataset_id):
        raise ConfigError(
            f"dataset id {dataset_id!r} is invalid: use 1-64 characters from A-Z, a-z, 0-9, '_', '-'"
        )
    return f"images_{dataset_id}"


@dataclass
class Filter:
    """Simple document filters, ANDed together. Empty lists and ``None`` mean "no constraint",
    except ``versions=[]`` and ``uris=[]``, which match nothing.

    Tag conditions look at both ``tags_ai`` and ``tags_user``.
    """

    #: dataset_version IN (...)
    versions: list[str] | None = None
    #: the document has ANY of these tags
    tags_any: list[str] = field(default_factory=list)
    #: the document has ALL of these tags
    tags_all: list[str] = field(default_factory=list)
    #: the document has NONE of these tags
    tags_exclude: list[str] = field(default_factory=list)
    #: uri IN (...)
    uris: list[str] | None = None
    #: status = ...; None = any status
    status: str | None = STATUS_OK


#: Sort keys of filter-only queries (ascending; prefix "-" for descending). Ties break on id.
SORT_FIELDS = ("uri", "file_name", "mtime", "size", "indexed_at")

#: Vector search pages beyond this depth are refused (like OpenSearch's max_result_window):
#: deep offsets cost top-(offset+k) work on every page.
MAX_VECTOR_WINDOW = 10_000


@dataclass
class Page:
    """One page of results; ``next_cursor`` is None on the last page."""

    hits: list[Hit]
    next_cursor: str | None = None


class VectorStore(ABC):
    """A store of documents with vectors. Implementations must be safe to call from several
    processes at once (Airflow mapped tasks upsert into the same table in parallel)."""

    @abstractmethod
    def ensure_table(self, dataset_id: str, *, model: str, dim: int) -> None:
        """Create the dataset's table if absent. If it exists with another model or dim, raise
        :class:`~imageindex.errors.ModelMismatchError` before writing anything."""

    @abstractmethod
    def table_info(self, dataset_id: str) -> dict | None:
        """``{"model": str, "dim": int, "rows": int}``, or None when the table does not exist."""

    @abstractmethod
    def upsert(self, dataset_id: str, table: pa.Table) -> int:
        """Insert or replace rows by ``id``; returns the number of rows written.

        A matched row keeps its ``tags_user`` when the incoming value is null, so user tags
        survive re-indexing. Idempotent, and written batch by batch: re-running an interrupted
        upsert yields the same table as one clean run.
        """

    @abstractmethod
    def delete(self, dataset_id: str, ids: Sequence[str]) -> int:
        """Delete rows by id; returns how many existed."""

    @abstractmethod
    def iter_state(
        self, dataset_id: str, version: str, batch_size: int = 50_000
    ) -> Iterator[pa.RecordBatch]:
        """Stream :data:`~imageindex.stores.schema.STATE_COLUMNS` of one version (no vectors)."""

    @abstractmethod
    def iter_documents(
        self,
        dataset_id: str,
        *,
        version: str | None = None,
        ids: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        batch_size: int = 10_000,
    ) -> Iterator[pa.RecordBatch]:
        """Stream whole documents, vectors included unless ``columns`` leaves them out.

        ``version`` None reads every version; ``ids`` restricts to those documents (unknown ids
        are skipped). Batches have the columns of :func:`~imageindex.stores.schema.document_schema`
        (or ``columns``, in that order); the row order is unspecified. Nothing is held in memory
        beyond one batch, so this feeds feature tables and exports of any size.
        """

    @abstractmethod
    def count(self, dataset_id: str, flt: Filter | None = None) -> int:
        """Rows matching ``flt``; all rows when ``flt`` is None."""

    @abstractmethod
    def get(self, dataset_id: str, ids: Sequence[str]) -> list[dict]:
        """Documents without their vector, in the order of ``ids``; unknown ids are skipped."""

    def search(
        self,
        dataset_id: str,
        vector: np.ndarray | None,
        flt: Filter,
        *,
        top_k: int = 10,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """Top ``top_k`` documents matching ``flt``.

        With a vector: by cosine similarity (``1 - cosine distance``, higher is better; ties by
        id), the filter applied before ranking, failed documents never returned. Without: up to
        ``top_k`` documents ordered by uri, score 1.0.
        """
        target = self._searchable(dataset_id)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer (got {top_k!r})")
        if flt is not None and (flt.versions == [] or flt.uris == []):
            return []  # an empty IN list: no document at all
        where = self._compile_filter(flt)
        if vector is None:
            return [hit for hit, _ in self._sorted_page(target, where, "uri", False, None, top_k)]
        ranked = self._ranked(target, vector, where, top_k, score_threshold)
        return [hit_from_row(row, score) for score, row in ranked[:top_k]]

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
        """One page of documents matching ``where`` (a :mod:`imageindex.query` AST, or None).

        With a vector: ordered by cosine similarity (score desc, then id), the filter applied
        inside the store before ranking, failed documents never returned, at most
        :data:`MAX_VECTOR_WINDOW` results over all pages. Without: every matching document
        (failed ones included), ordered by ``sort`` then id, score 1.0, paged by keyset so
        pages stay stable and cheap at any depth. ``cursor`` is the previous page's
        ``next_cursor``; a cursor from another query is refused.

        The same for every store: cursors, the score threshold and page slicing are done here;
        a store supplies :meth:`_searchable`, :meth:`_compile_where`, :meth:`_nearest` and
        :meth:`_sorted_page`.
        """
        from imageindex.query import to_text

        target = self._searchable(dataset_id)
        if (
            isinstance(top_k, bool)
            or not isinstance(top_k, int)
            or not 1 <= top_k <= MAX_VECTOR_WINDOW
        ):
            raise ConfigError(f"top_k must be between 1 and {MAX_VECTOR_WINDOW} (got {top_k!r})")
        native = self._compile_where(where) if where is not None else None
        text = to_text(where) if where is not None else None
        digest = query_digest(
            dataset_id, vector, text, sort if vector is None else "score", score_threshold
        )
        pos = decode_cursor(cursor, digest) if cursor else {}
        if vector is not None:
            offset = int(pos.get("o", 0))
            if offset < 0 or offset + top_k > MAX_VECTOR_WINDOW:
                raise ConfigError(
                    f"vector search pages stop at {MAX_VECTOR_WINDOW} results; narrow the query "
                    "with filters or a score threshold"
                )
            # One more than the page shows whether another page follows.
            ranked = self._ranked(target, vector, native, offset + top_k + 1, score_threshold)
            page = ranked[offset : offset + top_k]
            more = len(ranked) > offset + top_k and offset + top_k < MAX_VECTOR_WINDOW
            nxt = encode_cursor(digest, o=offset + top_k) if more and page else None
            return Page([hit_from_row(row, score) for score, row in page], nxt)
        field, desc = parse_sort(sort, SORT_FIELDS)
        after = (pos["v"], pos["i"]) if pos else None
        rows = self._sorted_page(target, native, field, desc, after, top_k + 1)
        nxt = None
        if len(rows) > top_k:
            last_value, last_id = rows[top_k - 1][1]
            nxt = encode_cursor(digest, v=last_value, i=last_id)
        return Page([hit for hit, _ in rows[:top_k]], nxt)

    def _ranked(
        self, target, vector, where, limit: int, score_threshold: float | None
    ) -> list[tuple[float, dict]]:
        """:meth:`_nearest`'s (score, row) pairs, at or above the threshold, by score then id."""
        ranked = sorted(
            self._nearest(target, vector, where, limit, score_threshold),
            key=lambda t: (-t[0], t[1].get("id", "")),
        )
        if score_threshold is not None:
            ranked = [t for t in ranked if t[0] >= score_threshold]
        return ranked

    # A store's part of search() and query(): -------------------------------------------------

    @abstractmethod
    def _searchable(self, dataset_id: str):
        """What the other hooks search in (a table, an index), once checked:
        :class:`~imageindex.errors.EmptyIndexError` when the dataset has none yet."""

    @abstractmethod
    def _compile_where(self, where):
        """The store's own filter for a query AST."""

    @abstractmethod
    def _compile_filter(self, flt: Filter | None):
        """The store's own filter for a :class:`Filter` (None when it constrains nothing)."""

    @abstractmethod
    def _nearest(
        self, target, vector, where, limit: int, score_threshold: float | None
    ) -> list[tuple[float, dict]]:
        """Up to ``limit`` (cosine score, row of :data:`HIT_COLUMNS`) pairs nearest ``vector``
        among the ok documents matching ``where``, in any order; the threshold is a hint (the
        caller applies it). :func:`query_vector` checks the vector."""

    @abstractmethod
    def _sorted_page(
        self, target, where, field: str, desc: bool, after: tuple | None, limit: int
    ) -> list[tuple[Hit, tuple]]:
        """Up to ``limit`` documents matching ``where`` in (``field``, id) order, after the
        position ``after`` when given: (hit with score 1.0, its position as (value, id), values
        that JSON keeps)."""

    @abstractmethod
    def optimize(self, dataset_id: str) -> dict:
        """Compact the table and create or refresh its indexes; returns what was done."""

    @abstractmethod
    def add_user_tags(self, dataset_id: str, ids: Sequence[str], tags: Sequence[str]) -> int:
        """Add ``tags`` to ``tags_user`` of the given documents; returns rows changed."""

    @abstractmethod
    def remove_user_tags(self, dataset_id: str, ids: Sequence[str], tags: Sequence[str]) -> int:
        """Remove ``tags`` from ``tags_user`` of the given documents; returns rows changed."""


def check_positive_ints(**settings: object) -> None:
    """Refuse a store setting that is not a positive integer, naming it."""
    for name, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"store setting {name} must be a positive integer (got {value!r})")


def check_model_dim(dataset_id: str, model: object, dim: object) -> None:
    """Refuse what ``ensure_table`` cannot record: an empty model name or a dim below 1."""
    if not isinstance(model, str) or not model:
        raise ConfigError(f"dataset {dataset_id!r}: embedder model name must be non-empty")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"dataset {dataset_id!r}: vector dim must be a positive integer")


def check_same_model(
    dataset_id: str, index: str, have: tuple[str | None, int], model: str, dim: int, drop: str
) -> None:
    """Refuse an embedder other than the one ``index`` (e.g. "the index X in Y") was built with
    (``have``: its model, None when unknown, and dim); ``drop``: how to start over."""
    have_model, have_dim = have
    if have_model is None:
        have_model = model
    if have_model != model or have_dim != dim:
        raise ModelMismatchError(
            f"dataset {dataset_id!r}: {index} holds vectors of model {have_model!r} (dim "
            f"{have_dim}), but the configured embedder is {model!r} (dim {dim}). Configure the "
            f"embedder the index was built with, or use a new dataset id (or {drop}) to re-embed "
            "everything."
        )


def conform_rows(
    dataset_id: str, table: pa.Table, target: pa.Schema, *, model: str | None, dim: int
) -> pa.Table:
    """Incoming rows checked against a store's table, the same way in every store: same model
    and dim (never a silent mix of vector spaces), every column typed as stored, required
    columns non-null, one row per id (the last wins: a merge would write one per duplicate)."""
    extra = [c for c in table.column_names if c not in target.names]
    if extra:
        raise StoreError(
            f"dataset {dataset_id!r}: columns {extra} are not in the document schema; "
            f"build rows with imageindex.stores.schema.document_schema()"
        )
    vec_type = table.schema.field("vector").type if "vector" in table.column_names else None
    if vec_type is not None and pa.types.is_fixed_size_list(vec_type) and vec_type.list_size != dim:
        raise ModelMismatchError(
            f"dataset {dataset_id!r}: incoming vectors have dim {vec_type.list_size} but "
            f"the index holds dim {dim} (model {model!r}); use the indexed embedder"
        )
    if model is not None and "model" in table.column_names:
        import pyarrow.compute as pc

        got = [m for m in pc.unique(table["model"]).to_pylist() if m is not None]
        wrong = [m for m in got if m != model]
        if wrong:
            raise ModelMismatchError(
                f"dataset {dataset_id!r}: incoming rows were embedded by {wrong} but the "
                f"index holds model {model!r}; use the indexed embedder"
            )
    columns = []
    for f in target:
        if f.name in table.column_names:
            columns.append(table[f.name])
        elif f.nullable:
            columns.append(pa.nulls(table.num_rows, f.type))
        else:
            raise StoreError(f"dataset {dataset_id!r}: incoming rows lack column {f.name!r}")
    try:
        out = pa.Table.from_arrays(columns, names=target.names).cast(target.remove_metadata())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise StoreError(
            f"dataset {dataset_id!r}: incoming rows do not fit the document schema "
            f"(dim {dim}): {exc}"
        ) from exc
    for name in ("id", "dataset_id", "dataset_version", "uri"):
        if out[name].null_count:
            raise StoreError(f"dataset {dataset_id!r}: column {name!r} has null values")
    ids = out["id"].to_pylist()
    last = {doc: i for i, doc in enumerate(ids)}
    if len(last) != len(ids):
        out = out.take(sorted(last.values()))
    return out


#: Columns a search hit is built from (never the vector), in every store.
HIT_COLUMNS = [
    "id",
    "uri",
    "file_name",
    "dataset_id",
    "dataset_version",
    "width",
    "height",
    "format",
    "size",
    "mtime",
    "tags_ai",
    "tags_user",
    "thumbnail_uri",
    "indexed_at",
]


def parse_date(value: Any) -> datetime | None:
    """A UTC datetime from a stored date: a datetime, epoch milliseconds or an ISO string."""
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def hit_from_row(row: dict, score: float) -> Hit:
    """A :class:`Hit` from a stored row (its ``mtime`` a datetime or as :func:`parse_date` reads)."""
    mtime = parse_date(row.get("mtime"))
    return Hit(
        id=row["id"],
        uri=row["uri"],
        file_name=row.get("file_name") or row["uri"].rsplit("/", 1)[-1],
        score=score,
        # A hand-made index may lack these; a hit without them beats a KeyError.
        dataset_id=row.get("dataset_id") or "",
        dataset_version=row.get("dataset_version") or "",
        width=row.get("width"),
        height=row.get("height"),
        format=row.get("format"),
        size=row.get("size"),
        mtime=mtime.timestamp() if mtime is not None else None,
        tags_ai=list(row.get("tags_ai") or []),
        tags_user=list(row.get("tags_user") or []),
        thumbnail_uri=row.get("thumbnail_uri"),
    )


def query_vector(dataset_id: str, vector, dim: int) -> np.ndarray:
    """``vector`` as a flat float32 array, checked: ``dim`` long, finite and not all zeros."""
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    if query.shape[0] != dim:
        raise ModelMismatchError(
            f"dataset {dataset_id!r}: query vector has dim {query.shape[0]} but the index "
            f"holds dim {dim}; embed the query with the indexed model"
        )
    if not np.isfinite(query).all() or not np.any(query):
        raise ConfigError("query vector is all zeros or not finite; cannot rank by cosine")
    return query


def select_columns(names: Sequence[str], columns: Sequence[str] | None) -> list[str]:
    """``columns`` checked against the document columns ``names`` (all of them for None)."""
    if columns is None:
        return list(names)
    unknown = [c for c in columns if c not in names]
    if unknown:
        raise ConfigError(f"unknown document column(s) {unknown}; valid: {list(names)}")
    return list(columns)


def chunks(values: Sequence, size: int) -> Iterator[Sequence]:
    """``values`` in slices of ``size`` (bounded IN lists and bulk bodies)."""
    for start in range(0, len(values), size):
        yield values[start : start + size]
