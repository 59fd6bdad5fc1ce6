"""The tag_embed stage: one model pass per image gives its vector and its tags; written to the
shard's ``features.parquet``. Local models take the model input preprocess stored (or decode
the thumbnail), hosted models the thumbnail JPEG itself."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imageindex.layout import ShardFolder
from imageindex.pipeline.context import open_dataset
from imageindex.pipeline.faults import fault_point
from imageindex.pipeline.lease import hold_lease
from imageindex.pipeline.report import provider_stats, stats_delta
from imageindex.pipeline.shards import read_model_inputs


def tag_embed(
    dataset_id: str,
    version: str,
    preprocessed_uri: str,
    *,
    registry_path: str | None = None,
    batch_size: int = 32,
    run_id: str | None = None,
) -> dict:
    """Embed and tag the shard's thumbnails; write vectors and tags to ``features.parquet``."""
    t0 = time.perf_counter()
    hold_lease(dataset_id, version, run_id, registry_path=registry_path)
    ctx = open_dataset(dataset_id, version, registry_path=registry_path)
    staging = ctx.staging
    table = staging.read_parquet(preprocessed_uri, columns=["id", "ok", "thumbnail"])
    table = table.filter(pc.field("ok"))
    embedder = ctx.embedder()
    tagger = ctx.tagger(embedder)
    ids = table.column("id").to_pylist()
    thumbs = table.column("thumbnail").to_pylist()
    pixels = read_model_inputs(staging, preprocessed_uri, ids)
    stats_before = provider_stats(embedder, tagger)
    vectors, tags_ai, tags_detail, errors, model_seconds = _run_models(
        embedder, tagger, thumbs, pixels, batch_size, (dataset_id, version, run_id)
    )
    n = len(ids)
    feats = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "tags_ai": pa.array(tags_ai, pa.list_(pa.string())),
            "tags_detail": pa.array(tags_detail, pa.string()),
            "tag_definitions_hash": pa.array(
                [getattr(tagger, "definitions_hash", None)] * n, pa.string()
            ),
            "model": pa.array([embedder.name] * n, pa.string()),
            "dim": pa.array([embedder.dim] * n, pa.int32()),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1), pa.float32()), embedder.dim
            ),
            # A model's per-file refusal (e.g. an image the API rejects) fails that file only.
            "error": pa.array(errors, pa.string()),
        }
    )
    out_uri = ShardFolder.of(preprocessed_uri).features
    staging.write_parquet(out_uri, feats)
    seconds = time.perf_counter() - t0
    return {
        "providers": stats_delta(stats_before, provider_stats(embedder, tagger)),
        "features": out_uri,
        "preprocessed": preprocessed_uri,
        "embedded": n - sum(1 for e in errors if e),
        "model_failed": sum(1 for e in errors if e),
        "model": embedder.name,
        "seconds": round(seconds, 3),
        "model_seconds": round(model_seconds, 3),
        "images_per_second": round(n / seconds, 2) if seconds > 0 and n else 0.0,
    }


def _tag_detail(per_image) -> str:
    return json.dumps(
        [
            {"name": t.name, "score": round(float(t.score), 4), "source": t.source}
            | ({"state": t.state} if t.state else {})
            for t in per_image
        ],
        ensure_ascii=False,
    )


def _run_models(embedder, tagger, thumbs: list, pixels: list, batch_size: int, where: tuple):
    """(vectors, tags, tag details, per-file errors, seconds in the models) of the images, in
    batches; the next batches are decoded while the model runs on this one. ``where`` is
    (dataset, version, run id) for the fault point."""
    from imageindex.preprocess import model_input

    n = len(thumbs)
    vectors = np.zeros((n, embedder.dim), dtype=np.float32)
    tags_ai: list[list[str]] = []
    tags_detail: list[str] = []
    errors: list[str | None] = []
    size = getattr(embedder, "input_size", 224)
    model_seconds = 0.0
    # Hosted models take the thumbnail JPEG itself; local models take decoded arrays.
    jpeg_embedder = getattr(embedder, "wants_jpeg", False)
    jpeg_tagger = getattr(tagger, "wants_jpeg", False)
    with ThreadPoolExecutor(max_workers=2) as pool:
        batches = [(s, thumbs[s : s + batch_size]) for s in range(0, n, batch_size)]

        def decode(start, batch):
            if jpeg_embedder:
                return None
            return [model_input(pixels[start + i], b, size) for i, b in enumerate(batch)]

        futures = [pool.submit(decode, *b) for b in batches[:2]]
        for bi, (start, jpegs) in enumerate(batches):
            images = futures[bi].result()
            if bi + 2 < len(batches):
                futures.append(pool.submit(decode, *batches[bi + 2]))
            tm = time.perf_counter()
            emb = embedder.embed_jpegs(jpegs) if jpeg_embedder else embedder.embed_images(images)
            tags = tagger.tag_jpegs(jpegs, emb) if jpeg_tagger else tagger.tag(emb)
            model_seconds += time.perf_counter() - tm
            vectors[start : start + len(jpegs)] = emb.vectors
            batch_errors = list(getattr(emb, "errors", None) or [None] * len(jpegs))
            tag_errors = getattr(tagger, "last_errors", None)
            if jpeg_tagger and tag_errors:
                batch_errors = [e or t for e, t in zip(batch_errors, tag_errors, strict=False)]
            errors.extend(batch_errors)
            fault_point("tag_embed", *where)  # features not yet written
            for per_image in tags:
                tags_ai.append(sorted({t.name for t in per_image}))
                tags_detail.append(_tag_detail(per_image))
    return vectors, tags_ai, tags_detail, errors, model_seconds
