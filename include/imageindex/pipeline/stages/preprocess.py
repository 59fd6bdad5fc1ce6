"""The preprocess stage: decode every file of a shard (:mod:`imageindex.preprocess` does the
decoding), write its thumbnails (they outlive the run) and the shard's preprocessed metadata,
per-file errors and model input pixels."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from imageindex.layout import ShardFolder, open_dataset_staging
from imageindex.pipeline import shards
from imageindex.pipeline.context import RunContext, open_dataset
from imageindex.pipeline.faults import fault_point
from imageindex.pipeline.lease import hold_lease
from imageindex.pipeline.shards import MANIFEST_SCHEMA, MODEL_INPUT_SCHEMA, PREPROCESSED_SCHEMA

log = logging.getLogger(__name__)


def preprocess(
    dataset_id: str,
    version: str,
    manifest_uri: str,
    *,
    registry_path: str | None = None,
    threads: int = 2,
    run_id: str | None = None,
    model_input_max_rows: int | None = None,
) -> dict:
    """Decode every file of a shard, make thumbnails, record metadata and per-file errors.

    Shards of up to ``model_input_max_rows`` files (default
    :data:`~imageindex.pipeline.shards.MODEL_INPUT_MAX_ROWS`) also store the model's input
    pixels, so tag_embed decodes nothing."""
    from imageindex.embedders import model_input_size

    t0 = time.perf_counter()
    hold_lease(dataset_id, version, run_id, registry_path=registry_path)
    ctx = open_dataset(dataset_id, version, registry_path=registry_path)
    staging = ctx.staging
    manifest = staging.read_parquet(manifest_uri)
    # Files whose vectors are reused are neither read nor decoded (upsert copies them).
    rows = [r for r in manifest.to_pylist() if not r.get("reuse_id")]
    max_rows = shards.MODEL_INPUT_MAX_ROWS if model_input_max_rows is None else model_input_max_rows
    # The model inputs (150 KB an image at 224 px) stay in memory until the shard file is
    # written: the huge shards of datasets over ~500k files leave them out (tag_embed decodes).
    input_size = model_input_size(ctx.dataset.embedder) if len(rows) <= max_rows else None
    out, model_inputs, thumb_writes, reasons = _decode(ctx, rows, threads, input_size)
    # Thumbnails outlive the run (search results and the gallery show them).
    thumb_staging = open_dataset_staging(ctx.dataset, ctx.layout.thumbnails(ctx.dataset.id))
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda a: thumb_staging.write_bytes(*a), thumb_writes))
    fault_point("preprocess", ctx.dataset.id, version, run_id)  # thumbnails written, not the shard
    folder = ShardFolder.of(manifest_uri)
    # Always written (empty without pixels), so no earlier try's file outlives this one.
    # Uncompressed, no dictionary: pixels do not compress, and tag_embed reads the file ~12x
    # faster (8 ms for 500 images instead of 100, a tenth of the model's time).
    with staging.output_file(folder.model_input) as path:
        table = pa.table(model_inputs, schema=MODEL_INPUT_SCHEMA)
        pq.write_table(table, path, compression="none", use_dictionary=False)
    staging.write_parquet(folder.preprocessed, pa.table(out, schema=PREPROCESSED_SCHEMA))
    n_ok = sum(out["ok"])
    return {
        "preprocessed": folder.preprocessed,
        "files": len(rows),
        "reused": manifest.num_rows - len(rows),
        "ok": n_ok,
        "failed": len(rows) - n_ok,
        "failed_by_reason": dict(reasons),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _decode(ctx: RunContext, rows: list[dict], threads: int, input_size: int | None):
    """(preprocessed columns, model input columns, thumbnails to write, failures by reason)."""
    from imageindex.preprocess import preprocess_many

    source = ctx.source()
    # The content hash of the bytes decoded is what the document keeps as its fingerprint
    # (for files listed with a stat fingerprint): later versions and touched files are then
    # matched by content without reading them again (see pipeline.reuse).
    content: dict[str, str] = {}

    def loader(uri: str):
        def read() -> bytes:
            data = source.read_bytes(uri)
            content[uri] = "sha256:" + hashlib.sha256(data).hexdigest()
            return data

        return read

    out: dict[str, list] = {name: [] for name in PREPROCESSED_SCHEMA.names}
    model_inputs: dict[str, list] = {"id": [], "pixels": []}
    thumb_writes: list[tuple[str, bytes]] = []
    reasons: Counter = Counter()
    decoded = preprocess_many(
        ((r["uri"], loader(r["uri"])) for r in rows), threads=threads, model_input_size=input_size
    )
    for row, (_, res) in zip(rows, decoded, strict=True):
        for k in MANIFEST_SCHEMA.names:
            out[k].append(row.get(k))
        if (row["fingerprint"] or "").startswith("stat:") and row["uri"] in content:
            out["fingerprint"][-1] = content[row["uri"]]
        thumb_uri = ctx.layout.thumbnail(ctx.dataset.id, row["id"]) if res.ok else None
        for name in ("ok", "width", "height", "format", "mode", "n_frames"):
            out[name].append(getattr(res, name))
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
    return out, model_inputs, thumb_writes, reasons
