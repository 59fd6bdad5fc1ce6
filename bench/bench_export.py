"""Export and logical-version reuse at scale: prints one JSON object.

Builds a LanceDB index of N synthetic documents (384-d vectors, stat fingerprints; no image
files are needed), then measures:

- ``export``: every document of the version to Parquet through the search path (keyset pages),
- ``plan``: a logical version made from that export — listing the manifest, diffing, and finding
  the reusable documents (``reused`` must equal N),
- ``shards``: every shard of that version (preprocess skips reused files, tag_embed has nothing
  to embed, upsert copies the documents), and ``finalize`` (incl. the feature table).

    python bench/bench_export.py --n 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

DIM = 384


def build_store(store_uri: str, n: int, batch: int = 50_000) -> None:
    from imageindex.stores import open_store
    from imageindex.stores.schema import document_schema
    from imageindex.types import doc_id

    store = open_store(store_uri)
    store.ensure_table("b", model="conse-efficientnet-lite0-minilm-l6-v2", dim=DIM)
    rng = np.random.default_rng(0)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for start in range(0, n, batch):
        k = min(batch, n - start)
        uris = [f"file:///data/b/{i // 1000:04d}/{i:07d}.jpg" for i in range(start, start + k)]
        vec = rng.standard_normal((k, DIM)).astype(np.float32)
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        cols = {
            "id": [doc_id("b", "v1", u) for u in uris],
            "dataset_id": ["b"] * k,
            "dataset_version": ["v1"] * k,
            "uri": uris,
            "key": [u.split("/data/b/", 1)[1] for u in uris],
            "file_name": [u.rsplit("/", 1)[1] for u in uris],
            "size": [1000 + i for i in range(k)],
            "mtime": [t0] * k,
            "fingerprint": [f"stat:{1000 + i}-{int(t0.timestamp() * 1e9)}" for i in range(k)],
            "status": ["ok"] * k,
            "error": [None] * k,
            "width": [640] * k,
            "height": [480] * k,
            "format": ["JPEG"] * k,
            "mode": ["RGB"] * k,
            "tags_ai": [["cat"] if i % 3 == 0 else ["dog"] for i in range(k)],
            "tags_user": [None] * k,
            "tags_detail": ["[]"] * k,
            "tag_definitions_hash": [None] * k,
            "thumbnail_uri": [None] * k,
            "model": ["conse-efficientnet-lite0-minilm-l6-v2"] * k,
            "dim": [DIM] * k,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), DIM),
            "indexed_at": [t0] * k,
        }
        store.upsert("b", pa.table(cols, schema=document_schema(DIM)))
    store.optimize("b")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    os.environ["IMAGEINDEX_HOME"] = str(tmp / "home")
    os.environ.pop("IMAGEINDEX_STAGING", None)
    os.environ["IMAGEINDEX_REGISTRY"] = str(tmp / "registry.yaml")
    os.environ.setdefault(
        "IMAGEINDEX_MODEL_CACHE",
        str(Path(__file__).resolve().parent.parent / "var" / "test-model-cache"),
    )
    (tmp / "registry.yaml").write_text(
        f"datasets:\n  - id: b\n    versions: {{v1: {tmp / 'none'}}}\n"
        f"    store: {{uri: {tmp / 'store'}}}\n    tagger: {{type: none}}\n",
        encoding="utf-8",
    )
    out: dict = {"n": args.n, "dim": DIM, "cpus": os.cpu_count()}
    try:
        from imageindex import pipeline
        from imageindex.export import export_search, export_version
        from imageindex.search import SearchRequest

        t = time.perf_counter()
        build_store(str(tmp / "store"), args.n)
        out["build_store_s"] = round(time.perf_counter() - t, 2)

        t = time.perf_counter()
        res = export_search(SearchRequest(dataset_id="b"), str(tmp / "all.parquet"))
        s = time.perf_counter() - t
        out["export"] = {
            "rows": res.count,
            "seconds": round(s, 2),
            "rows_per_s": round(res.count / s),
        }
        assert res.count == args.n, res

        t = time.perf_counter()
        half = export_version(SearchRequest(dataset_id="b", tags_any=["cat"]), "cats")
        out["export_version_filtered"] = {
            "rows": half.count,
            "seconds": round(time.perf_counter() - t, 2),
        }

        t = time.perf_counter()
        plan = pipeline.plan("b", "cats", "bench")
        out["plan"] = {
            "seconds": round(time.perf_counter() - t, 2),
            "counts": plan["counts"],
            "shards": len(plan["shards"]),
            "xcom_bytes": len(json.dumps(plan["shards"])),
        }
        assert plan["counts"]["reused"] == half.count, plan["counts"]
        t = time.perf_counter()
        results = [pipeline.run_shard("b", "cats", m) for m in plan["shards"]]
        s = time.perf_counter() - t
        out["shards"] = {
            "seconds": round(s, 2),
            "reused_per_s": round(half.count / s),
            "upsert_s": round(sum(r["seconds"]["upsert"] for r in results), 2),
            "tag_embed_s": round(sum(r["seconds"]["tag_embed"] for r in results), 2),
            "preprocess_s": round(sum(r["seconds"]["preprocess"] for r in results), 2),
        }
        t = time.perf_counter()
        report = pipeline.finalize("b", "cats", plan, results)
        out["finalize"] = {
            "seconds": round(time.perf_counter() - t, 2),
            "indexed_ok": report["indexed_ok"],
            "reused": report["reused"],
            "feature_table_rows": (report.get("feature_table") or {}).get("rows"),
        }
        assert report["indexed_ok"] == half.count
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
