"""Benchmark the stores side by side in one run: a live OpenSearch node (k-NN, lucene HNSW),
LanceDB, and a numpy flat scan (the exact answer every recall is measured against).

For each: ingest docs/s, filtered top-10 latency p50/p99 with filters keeping 10 % and 1 % of
the documents, and recall@10 against the flat scan; for OpenSearch also the node's memory. The
node is the one ``make opensearch`` runs (started here from ``opensearch/``, Java 17+ and Maven),
or an existing cluster given with ``--opensearch-url``. Prints JSON::

    .venv/bin/python bench/bench_store.py --n 100000 --dim 384

Numbers from a busy machine are noise: ``load_avg`` says how busy it was.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from imageindex.stores import Filter
from imageindex.stores.lancedb import LanceDBStore
from imageindex.stores.schema import STATUS_OK, document_schema
from imageindex.types import doc_id

DATASET = "bench"
MODEL = "synthetic"
#: Tag -> share of documents carrying it: the filters the latency is measured with.
FILTERS = {"ten": 0.10, "one": 0.01}
#: What the live OpenSearch node must reach at 100k x 384 (issue 19).
TARGETS = {"opensearch_filtered_p50_ms_max": 20.0, "opensearch_ingest_docs_per_s_min": 2000.0}


def synthetic_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Clustered unit vectors: real embeddings are clustered, and uniform random vectors in
    high dimensions make every neighbour nearly equidistant, which flatters no index."""
    centers = rng.normal(size=(max(16, n // 500), dim)).astype(np.float32)
    labels = rng.integers(0, len(centers), size=n)
    vecs = centers[labels] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def build_rows(vecs: np.ndarray, tags: list[list[str]]) -> pa.Table:
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
        "tags_ai": tags,
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


def latency(ms: list[float]) -> dict:
    lat = np.array(ms)
    return {
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
    }


def recall(approx: list[list[str]], exact: list[list[str]], k: int) -> float:
    return round(
        float(
            np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact, strict=True)])
        ),
        4,
    )


def flat_scan(vecs, masks, ids, queries, k):
    """Exact top k of each query among each filter's documents: the reference answers."""
    t0 = time.perf_counter()
    matrix = np.ascontiguousarray(vecs, dtype=np.float32)  # "ingest": one normalized matrix
    ingest_s = time.perf_counter() - t0
    row: dict = {"store": "flat", "ingest_docs_per_s": round(len(vecs) / max(ingest_s, 1e-9))}
    answers = {}
    for label, mask in masks.items():
        ms, out = [], []
        for q in queries:
            t0 = time.perf_counter()
            scores = np.where(mask, matrix @ q, -np.inf)  # every document scored, then filtered
            top = np.argpartition(-scores, k)[:k]
            top = top[np.argsort(-scores[top])]
            ms.append((time.perf_counter() - t0) * 1000)
            out.append([ids[t] for t in top])
        answers[label] = out
        row[label] = {**latency(ms), "recall_at_10": 1.0}
    row["memory_bytes"] = int(matrix.nbytes)
    return row, answers


def timed(store, queries, label, k, pid=None):
    """Latencies and hit ids of each query, run once untimed first; and the node's CPU ms per
    timed query when ``pid`` is known."""
    flt = Filter(tags_any=[label]) if label != "all" else Filter()
    for q in queries:  # warm caches, and the JIT of a fresh node (C2 needs many runs)
        store.search(DATASET, q, flt, top_k=k)
    cpu0 = _cpu_seconds(pid)
    ms, out = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = store.search(DATASET, q, flt, top_k=k)
        ms.append((time.perf_counter() - t0) * 1000)
        out.append([h.id for h in hits])
    cpu1 = _cpu_seconds(pid)
    cpu_ms = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) * 1000 / len(queries)
    return ms, out, cpu_ms


def measure_searches(store, row: dict, queries, exact: dict, k: int, pid=None) -> None:
    for label in exact:
        ms, out, cpu_ms = timed(store, queries, label, k, pid)
        row[label] = {**latency(ms), "recall_at_10": recall(out, exact[label], k)}
        if cpu_ms is not None:
            # What a query costs the node: its latency on an idle core.
            row[label]["node_cpu_ms_per_query"] = round(cpu_ms, 2)


def bench_lancedb(rows, queries, exact, k, args) -> dict:
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        store = LanceDBStore(root, index_min_rows=min(50_000, rows.num_rows))
        store.ensure_table(DATASET, model=MODEL, dim=args.dim)
        t0 = time.perf_counter()
        store.upsert(DATASET, rows)
        upsert_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        opt = store.optimize(DATASET)  # what the indexing DAG's finalize runs
        optimize_s = time.perf_counter() - t0
        row = {
            "store": "lancedb",
            "ingest_docs_per_s": round(rows.num_rows / (upsert_s + optimize_s)),
            "upsert_s": round(upsert_s, 2),
            "optimize_s": round(optimize_s, 2),
            "indexes_created": opt["indexes_created"],
        }
        measure_searches(store, row, queries, exact, k)
        row["store_stats"] = dict(store.stats)
    return row


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) a process has used so far (Linux), None when unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parallel_upsert(store, rows: pa.Table, writers: int) -> None:
    """``writers`` threads upsert a slice each, as the indexing DAG's mapped upsert tasks do
    (one bulk request at a time keeps a one-shard index on one core of the node)."""
    from concurrent.futures import ThreadPoolExecutor

    step = -(-rows.num_rows // writers)
    slices = [rows.slice(i, step) for i in range(0, rows.num_rows, step)]
    with ThreadPoolExecutor(writers) as pool:
        for written in pool.map(lambda part: store.upsert(DATASET, part), slices):
            assert written > 0


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - the bench's own node
        return json.loads(resp.read())


def bench_opensearch(rows, queries, exact, k, args) -> dict:
    from imageindex.stores.opensearch import OpenSearchStore

    node = None
    url = args.opensearch_url
    row: dict = {"store": "opensearch"}
    if url is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        import opensearch_node

        reason = opensearch_node.missing_tools()
        if reason:
            return {**row, "skipped": reason}
        os.environ.setdefault("OPENSEARCH_JAVA_OPTS", f"-Xms{args.heap} -Xmx{args.heap}")
        row["build_s"] = round(opensearch_node.build(), 1)
        home = Path(tempfile.mkdtemp(prefix="bench-opensearch-", dir=args.dir))
        node = opensearch_node.OpenSearchNode(home).start()
        url = node.url
        row["node_start_s"] = round(node.start_seconds, 1)
        row["node_heap"] = os.environ["OPENSEARCH_JAVA_OPTS"]
    try:
        row["version"] = _get_json(url)["version"]["number"]
        # Bulk-load settings: no refresh per request, one refresh at the end (finalize).
        store = OpenSearchStore(
            url=url,
            index_prefix=f"bench-{os.getpid()}",
            refresh=False,
            bulk_chunk=args.bulk_chunk,
            replicas=0,
            timeout=300,
            ef_search=args.ef_search,
        )
        store.ensure_table(DATASET, model=MODEL, dim=args.dim)
        pid = node.process.pid if node is not None else None
        try:
            cpu0, client0 = _cpu_seconds(pid), time.process_time()
            t0 = time.perf_counter()
            parallel_upsert(store, rows, args.writers)
            upsert_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            store.optimize(DATASET)
            refresh_s = time.perf_counter() - t0
            cpu1, client1 = _cpu_seconds(pid), time.process_time()
            assert store.count(DATASET) == rows.num_rows
            row.update(
                ef_search=args.ef_search,
                ingest_docs_per_s=round(rows.num_rows / (upsert_s + refresh_s)),
                upsert_s=round(upsert_s, 2),
                refresh_s=round(refresh_s, 2),
                bulk_chunk=args.bulk_chunk,
                writers=args.writers,
                # CPU per 1,000 documents does not depend on how busy the machine was.
                ingest_client_cpu_s_per_1k=round((client1 - client0) * 1000 / rows.num_rows, 3),
            )
            if cpu0 is not None and cpu1 is not None:
                per_1k = (cpu1 - cpu0) * 1000 / rows.num_rows
                row["ingest_node_cpu_s_per_1k"] = round(per_1k, 3)
                # The most this machine could ingest if the node had every core to itself.
                row["ingest_ceiling_docs_per_s"] = round(1000 * (os.cpu_count() or 1) / per_1k)
            # Background merges (HNSW graphs rebuilt) would bill the searches for their CPU.
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 900:
                merges = _get_json(f"{url}/{store.index_name(DATASET)}/_stats/merge")
                if merges["_all"]["total"]["merges"]["current"] == 0:
                    break
                time.sleep(0.5)
            row["merge_wait_s"] = round(time.perf_counter() - t0, 2)
            measure_searches(store, row, queries, exact, k, pid)
            stats = _get_json(f"{url}/_nodes/_local/stats/jvm,indices")["nodes"]
            (node_stats,) = stats.values()
            row["jvm_heap_used_bytes"] = node_stats["jvm"]["mem"]["heap_used_in_bytes"]
            row["index_store_bytes"] = node_stats["indices"]["store"]["size_in_bytes"]
            row["segments"] = node_stats["indices"]["segments"]["count"]
            if node is not None:
                row["node_rss_bytes"] = node.rss_bytes()
            if args.force_merge:
                # The store's force_merge option: one segment, one HNSW graph to search.
                store.force_merge = True
                t0 = time.perf_counter()
                store.optimize(DATASET)
                merged: dict = {"seconds": round(time.perf_counter() - t0, 1)}
                measure_searches(store, merged, queries, exact, k, pid)
                row["after_force_merge"] = merged
        finally:
            store.client.indices.delete(index=store.index_name(DATASET))
    finally:
        if node is not None:
            node.stop()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="for store files (default: a temporary folder)")
    ap.add_argument("--opensearch-url", default=os.environ.get("OPENSEARCH_URL"))
    ap.add_argument("--heap", default="2g", help="heap of the node started here")
    ap.add_argument("--bulk-chunk", type=int, default=500, help="documents per bulk request")
    ap.add_argument("--writers", type=int, default=2, help="parallel OpenSearch upserts")
    ap.add_argument(
        "--ef-search", type=int, default=None, help="the store's ef_search (default: its own)"
    )
    ap.add_argument(
        "--force-merge",
        action="store_true",
        help="then merge OpenSearch's index to one segment and measure the searches again",
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["lancedb", "opensearch"])
    args = ap.parse_args()
    load_start = os.getloadavg()

    rng = np.random.default_rng(args.seed)
    vecs = synthetic_vectors(args.n, args.dim, rng)
    draws = rng.random(args.n)
    tags = [["photo"] + [t for t, share in FILTERS.items() if d < share] for d in draws]
    masks = {t: draws < share for t, share in FILTERS.items()}
    rows = build_rows(vecs, tags)
    ids = rows["id"].to_pylist()
    picks = rng.integers(0, args.n, size=args.queries)
    queries = vecs[picks] + 0.2 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    flat, exact = flat_scan(vecs, masks, ids, queries, args.top_k)
    results = [flat]
    if "lancedb" not in args.skip:
        results.append(bench_lancedb(rows, queries, exact, args.top_k, args))
    if "opensearch" not in args.skip:
        results.append(bench_opensearch(rows, queries, exact, args.top_k, args))

    os_row = next((r for r in results if r["store"] == "opensearch" and "skipped" not in r), None)
    met = None
    if os_row is not None:
        met = bool(
            max(os_row[t]["p50_ms"] for t in FILTERS) <= TARGETS["opensearch_filtered_p50_ms_max"]
            and os_row["ingest_docs_per_s"] >= TARGETS["opensearch_ingest_docs_per_s_min"]
        )
    out = {
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "top_k": args.top_k,
        "filters": {
            t: {"share": share, "matches": int(masks[t].sum())} for t, share in FILTERS.items()
        },
        "cpus": os.cpu_count(),
        "load_avg": {
            "start": [round(x, 2) for x in load_start],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
        "rows": results,
        "targets": TARGETS,
        "targets_met": met,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
