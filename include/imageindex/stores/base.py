"""The vector store interface the pipeline and the search service talk to.

A store holds one table per dataset; every version of the dataset lives in that table, told apart
by ``dataset_version``. Rows follow :func:`imageindex.stores.schema.document_schema`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from imageindex.errors import ConfigError, ModelMismatchError, StoreError
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

    @abstractmethod
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

        With a vector: by cosine similarity (``1 - cosine distance``, higher is better), the
        filter applied before ranking, failed documents never returned. Without: up to ``top_k``
        documents ordered by uri, score 1.0.
        """

    @abstractmethod
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
        """

    @abstractmethod
    def optimize(self, dataset_id: str) -> dict:
        """Compact the table and create or refresh its indexes; returns what was done."""

    @abstractmethod
    def add_user_tags(self, dataset_id: str, ids: Sequence[str], tags: Sequence[str]) -> int:
        """Add ``tags`` to ``tags_user`` of the given documents; returns rows changed."""

    @abstractmethod
    def remove_user_tags(self, dataset_id: str, ids: Sequence[str], tags: Sequence[str]) -> int:
        """Remove ``tags`` from ``tags_user`` of the given documents; returns rows changed."""


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


def hit_from_row(row: dict, score: float, mtime=None) -> Hit:
    """A :class:`Hit` from a stored row; ``mtime`` is the row's datetime (already parsed)."""
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
