"""The feature table: one Parquet file per dataset version with each indexed image's id, uri,
file name, size, width, height, format, tags, model and embedding — for recommendation,
clustering and analytics jobs downstream. Plain Parquet (readable by pandas, pyarrow, Spark,
DuckDB without imageindex); the embedding is a fixed-size list of float32.

Location: ``<root>/<dataset>/<version>/features.parquet`` with ``root`` the dataset's
``feature_table`` in the registry, else ``IMAGEINDEX_FEATURES`` (default
``$IMAGEINDEX_STAGING/features``), local or ``s3://``. Written by the run's finalize step,
streamed from the store batch by batch and replaced atomically, only when the run changed the
version (or the table is missing), so a no-change run costs nothing. Failed documents are not
in it. The DAG announces it as the Airflow asset ``imageindex://features/<dataset>``.
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import pyarrow.compute as pc

from imageindex.layout import feature_table_uri, open_dataset_staging
from imageindex.specs import DatasetSpec
from imageindex.stores.schema import STATUS_OK

__all__ = ["COLUMNS", "feature_table_schema", "feature_table_uri", "write_feature_table"]

log = logging.getLogger(__name__)

#: Store columns copied into the feature table, in order (``vector`` is renamed ``embedding``).
COLUMNS = [
    "id",
    "uri",
    "file_name",
    "size",
    "mtime",
    "width",
    "height",
    "format",
    "tags_ai",
    "tags_user",
    "model",
    "vector",
]


def feature_table_schema(dim: int) -> pa.Schema:
    from imageindex.stores.schema import document_schema

    doc = document_schema(dim)
    fields = [doc.field(c) for c in COLUMNS[:-1]]
    fields.append(pa.field("embedding", pa.list_(pa.float32(), dim)))
    return pa.schema(fields, metadata={"imageindex.dim": str(dim)})


def write_feature_table(
    dataset: DatasetSpec, version: str, store, *, changed: bool = True
) -> dict | None:
    """(Re)write the feature table of ``dataset``/``version`` from the store.

    Skipped when ``changed`` is false and the table exists. Returns ``{"uri", "rows",
    "seconds", "written"}``, or None when feature tables are off for the dataset.
    """
    uri = feature_table_uri(dataset, version)
    if uri is None:
        return None
    t0 = time.perf_counter()
    staging = open_dataset_staging(dataset, uri.rsplit("/", 1)[0])
    if not changed and staging.exists(uri):
        return {"uri": uri, "rows": None, "seconds": 0.0, "written": False}
    info = store.table_info(dataset.id)
    if info is None:
        return None
    schema = feature_table_schema(int(info["dim"]))
    rows = 0
    with staging.parquet_writer(uri, schema) as writer:
        for batch in store.iter_documents(
            dataset.id, version=version, columns=[*COLUMNS, "status"], batch_size=20_000
        ):
            ok = batch.filter(pc.equal(batch.column("status"), STATUS_OK))
            if not ok.num_rows:
                continue
            out = pa.Table.from_arrays([ok.column(c) for c in COLUMNS], names=schema.names).cast(
                schema
            )
            writer.write_table(out)
            rows += out.num_rows
    seconds = round(time.perf_counter() - t0, 3)
    log.info("feature table %s: %d rows in %.1f s", uri, rows, seconds)
    return {"uri": uri, "rows": rows, "seconds": seconds, "written": True}
