"""The upsert stage: the shard's documents (computed, or copied where plan found the content
indexed) into the store, in chunks; ids are deterministic, so a retry overwrites."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.compute as pc

from imageindex.layout import ShardFolder
from imageindex.pipeline.context import open_dataset
from imageindex.pipeline.documents import build_documents
from imageindex.pipeline.faults import exit_after_upsert_chunks, fault_point
from imageindex.pipeline.lease import hold_lease
from imageindex.pipeline.reuse import reused_documents
from imageindex.pipeline.shards import PREPROCESSED_SCHEMA
from imageindex.stores.schema import STATUS_FAILED

#: Documents per store write (``IMAGEINDEX_UPSERT_CHUNK_ROWS``).
CHUNK_ROWS = 5000


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
    ctx = open_dataset(dataset_id, version, registry_path=registry_path)
    dataset, staging, folder = ctx.dataset, ctx.staging, ShardFolder.of(preprocessed_uri)
    pre = staging.read_parquet(
        preprocessed_uri, columns=[n for n in PREPROCESSED_SCHEMA.names if n != "thumbnail"]
    )
    feats = staging.read_parquet(features_uri)
    embedder = ctx.embedder()
    store = ctx.store()
    store.ensure_table(dataset.id, model=embedder.name, dim=embedder.dim)
    docs = build_documents(
        pre, feats, dataset_id=dataset.id, version=version, model=embedder.name, dim=embedder.dim
    )
    reused, reuse_missing = reused_documents(
        store, staging.read_parquet(folder.manifest), dataset_id=dataset.id, version=version
    )
    if reused.num_rows:
        docs = pa.concat_tables([docs, reused.select(docs.schema.names).cast(docs.schema)])
    written = 0
    chunk = int(os.environ.get("IMAGEINDEX_UPSERT_CHUNK_ROWS") or CHUNK_ROWS)
    for n_chunk, start in enumerate(range(0, docs.num_rows, chunk), 1):
        written += store.upsert(dataset.id, docs.slice(start, chunk))
        if n_chunk == 1:
            fault_point("upsert", dataset.id, version, run_id)  # one chunk written, maybe more
        exit_after_upsert_chunks(n_chunk)
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
    staging.write_json(folder.upserted, result)
    return result
