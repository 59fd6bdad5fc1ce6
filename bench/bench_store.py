"""Benchmark the LanceDB store: upsert throughput, filtered top-k latency with and without the
vector index, and recall of the indexed search against the exact one. Prints JSON.

    .venv/bin/python bench/bench_store.py --n 100000 --dim 384
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from imageindex.stores import Filter
from imageindex.stores.lancedb_store import LanceDBStore
from imageindex.stores.schema import STATUS_OK, document_schema
from imageindex.types import doc_id

DATASET = "bench"
MODEL = "synthetic"


def synthetic_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Clustered unit vectors: real embeddings are clustered, and uniform random vectors in
    high dimensions make every neighbour nearly equidistant, which flatters no index."""
    centers = rng.normal(size=(max(16, n // 500), dim)).astype(np.float32)
    labels = rng.integers(0, len(centers), size=n)
    vecs = centers[labels] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def build_rows(vecs: np.ndarray, tagged: np.ndarray) -> pa.Table:
    n, dim = vecs.shape
    uris = [f"file:///bench/img{i:07d}.jpg" for i in range(n)]
    now = datetime(2024, 1, 1, tzinfo=UTC)
    cols = {
        "id": [doc_id(DATASET, "v1", u) for u in uris],
        "dataset_id": [DATASET] * n,
        "dataset_version": ["v1"] * n,
        "uri": uris,
        "key": [u[len("file:///bench/") :] for u in uris],
        "file_name": [u[len("file:///bench/") :] for u in uris],
        "size": np.full(n, 50_000, dtype=np.int64),
        "mtime": [now] * n,
        "fingerprint": [f"stat:{i}" for i in range(n)],
        "status": [STATUS_OK] * n,
        "width": np.full(n, 640, dtype=np.int32),
        "height": np.full(n, 480, dtype=np.int32),
        "format": ["JPEG"] * n,
        "mode": ["RGB"] * n,
        "tags_ai": [["ten", "photo"] if t else ["photo"] for t in tagged],
        "model": [MODEL] * n,
        "dim": np.full(n, dim, dtype=np.int32),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim),
        "indexed_at": [now] * n,
    }
    schema = document_schema(dim)
    arrays = [
        pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type) for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def timed_searches(store, queries, flt, top_k):
    for q in queries[:5]:  # warm caches and the index
        store.search(DATASET, q, flt, top_k=top_k)
    latencies, results = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = store.search(DATASET, q, flt, top_k=top_k)
        latencies.append((time.perf_counter() - t0) * 1000)
        results.append([h.id for h in hits])
    lat = np.array(latencies)
    summary = {
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "mean_ms": round(float(lat.mean()), 2),
    }
    return summary, results


def recall(approx: list[list[str]], exact: list[list[str]], k: int) -> float:
    return float(
        np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact, strict=True)])
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--batch-rows", type=int, default=5_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="store directory (default: a temporary one)")
    ap.add_argument(
        "--exact-min-rows",
        type=int,
        default=None,
        help="search exactly when the filter matches fewer rows (store default when unset)",
    )
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    vecs = synthetic_vectors(args.n, args.dim, rng)
    tagged = rng.random(args.n) < 0.10
    rows = build_rows(vecs, tagged)
    picks = rng.integers(0, args.n, size=args.queries)
    queries = vecs[picks] + 0.2 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    flt = Filter(tags_any=["ten"])

    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        store = LanceDBStore(
            root,
            index_min_rows=min(50_000, args.n),
            write_batch_rows=args.batch_rows,
            **({"exact_search_min_rows": args.exact_min_rows} if args.exact_min_rows else {}),
        )
        store.ensure_table(DATASET, model=MODEL, dim=args.dim)

        t0 = time.perf_counter()
        store.upsert(DATASET, rows)
        upsert_s = time.perf_counter() - t0
        # Re-index of unchanged rows: every id matches, user tags are looked up.
        half = rows.slice(0, args.n // 2)
        t0 = time.perf_counter()
        store.upsert(DATASET, half)
        reupsert_s = time.perf_counter() - t0

        flat, exact = timed_searches(store, queries, flt, args.top_k)
        flat_all, exact_all = timed_searches(store, queries, Filter(), args.top_k)

        t0 = time.perf_counter()
        opt = store.optimize(DATASET)
        optimize_s = time.perf_counter() - t0

        indexed, approx = timed_searches(store, queries, flt, args.top_k)
        indexed_all, approx_all = timed_searches(store, queries, Filter(), args.top_k)
        selective, _ = timed_searches(
            store, queries[:20], Filter(uris=[rows["uri"][0].as_py()]), args.top_k
        )

        out = {
            "n": args.n,
            "dim": args.dim,
            "queries": args.queries,
            "top_k": args.top_k,
            "filter": "tags_any=['ten']",
            "filter_matches": int(tagged.sum()),
            "upsert": {
                "rows": args.n,
                "seconds": round(upsert_s, 2),
                "rows_per_s": round(args.n / upsert_s),
                "batch_rows": args.batch_rows,
            },
            "reupsert_existing": {
                "rows": half.num_rows,
                "rows_per_s": round(half.num_rows / reupsert_s),
            },
            "search_no_index": {"filtered": flat, "unfiltered": flat_all},
            "optimize": {
                "seconds": round(optimize_s, 2),
                "created": opt["indexes_created"],
            },
            "search_indexed": {
                "filtered": indexed,
                "unfiltered": indexed_all,
                "selective_filter_exact_fallback": selective,
            },
            "recall_at_k": {
                "filtered": round(recall(approx, exact, args.top_k), 4),
                "unfiltered": round(recall(approx_all, exact_all, args.top_k), 4),
            },
            "store_stats": dict(store.stats),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
