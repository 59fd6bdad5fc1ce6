"""The indexes of a LanceDB table: which ones, how many IVF partitions, and how ``optimize``
folds new rows in (segments added, rebuilt in full once they pile up)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from lancedb.index import Bitmap, BTree, HnswSq, LabelList


#: IVF partitions of the vector index. LanceDB's default (sqrt(n) partitions, or one huge
#: partition for HNSW) gave recall@10 of 0.35-0.74 on 100k x 384 clustered vectors. 12.5k rows
#: per partition gave 0.99-1.0 at 100k but only 0.64 at 1M (80 partitions, 20 probed);
#: n**0.3 / 4 partitions (8 at 100k, 16 at 1M, 31 at 10M) kept filtered recall@10 at 1.0 at
#: 1M with p50 65 ms (bench/bench_store.py; numbers in the notes of the search issue).
def vector_index_partitions(rows: int) -> int:
    return max(1, round(rows**0.3 / 4))


#: Scalar indexes optimize() maintains, by column.
SCALAR_INDEXES: dict[str, Callable[[], Any]] = {
    "id": BTree,
    "uri": BTree,
    "dataset_version": Bitmap,
    "status": Bitmap,
    "tags_ai": LabelList,
    "tags_user": LabelList,
}

#: Index segments (one per optimize that found new rows) before an index is rebuilt in full.
MAX_INDEX_SEGMENTS = 8


def compact_and_index(tbl) -> None:
    """Compact small fragments and index new rows as an added segment of each index.

    Not ``Table.optimize()``: its default merges the new rows into the existing vector index by
    retraining it, which at 100k rows collapsed IVF_HNSW_SQ to a single partition (recall@10
    0.96 → 0.62) and cost a full index build on every run that wrote rows.
    """
    ds = tbl.to_lance()
    ds.optimize.compact_files()
    ds.optimize.optimize_indices(num_indices_to_merge=0)
    ds.cleanup_old_versions(older_than=timedelta(days=7))


def refresh_indexes(tbl, rows: int, *, min_rows: int, partitions: int | None) -> tuple[list, bool]:
    """Rebuild indexes with too many segments, create missing ones (the vector index once the
    table has ``min_rows`` rows); returns (what was created, whether a vector index exists)."""
    have = {tuple(ix.columns) for ix in tbl.list_indices()}
    created: list[str] = []
    # New rows go into small index segments (cheap, exact partitions kept); once they
    # pile up, indexes are rebuilt in full, sized for today's row count.
    for ix in tbl.list_indices():
        segments = tbl.index_stats(ix.name).num_indices
        if segments > MAX_INDEX_SEGMENTS and rows:
            column = ix.columns[0]
            if column == "vector":
                n = partitions or vector_index_partitions(rows)
                config = HnswSq(distance_type="cosine", num_partitions=n)
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
    if not vector_index and rows >= min_rows:
        n = partitions or vector_index_partitions(rows)
        tbl.create_index("vector", config=HnswSq(distance_type="cosine", num_partitions=n))
        created.append("vector:IVF_HNSW_SQ")
        vector_index = True
    return created, vector_index
