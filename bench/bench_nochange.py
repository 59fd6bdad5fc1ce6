"""Benchmark a no-change incremental run over N indexed files, end to end without Airflow:
``plan`` (lists N files, all unchanged, no shards) → ``load_plan`` → ``finalize`` (no deletes,
store optimize, two counts, the run report). Prints one JSON object (logs go to stderr).

Set-up: a tree of N empty ``.jpg`` files (or ``--listing synthetic``) and a LanceDB table of the
same N documents (clustered random unit vectors) upserted and then optimized once, so it holds
the scalar indexes and, from 50k rows on, the vector index a previous run's finalize built.

Each run is a fresh child process (like an Airflow task); the stage timings come from wrappers
around the pipeline functions and the store methods. ``vector_index_partitions_after`` checks
that finalize's optimize leaves the trained vector index alone when nothing changed.

    .venv/bin/python bench/bench_nochange.py --n 100000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_fixture import (  # noqa: E402
    DATASET,
    VERSION,
    Layout,
    build_index,
    dir_size,
    hwm_mb,
    log,
    set_env,
    time_listing,
    write_registry,
)


def vector_index_partitions(store_dir: Path) -> list[int] | None:
    """Partitions of each segment of the vector index (None without one)."""
    import lance

    ds = lance.dataset(str(store_dir / f"images_{DATASET}.lance"))
    if not any(ix["name"] == "vector_idx" for ix in ds.list_indices()):
        return None
    return [i["num_partitions"] for i in ds.stats.index_stats("vector_idx")["indices"]]


def child(cfg: dict) -> dict:
    t0 = time.perf_counter()
    set_env(Path(cfg["tmp"]), Path(cfg["registry"]))
    from imageindex import pipeline
    from imageindex.stores import lancedb  # noqa: F401  (import_seconds covers lancedb)

    import_s = time.perf_counter() - t0
    secs: Counter = Counter()
    layout = Layout(Path(cfg["root"]), cfg["n"], per_dir=cfg["per_dir"], new_every=0)
    layout.changed_every, layout.n_deleted = 0, 0

    time_listing(secs, "plan.listing", cfg["listing"], layout)
    # The stages time their own parts when given a clock (no patching of pipeline internals).
    plan_clock, finalize_clock = pipeline.StageClock(), pipeline.StageClock()

    run_id = f"nochange__{cfg['run']}"
    stages: dict[str, float] = {}
    t = time.perf_counter()
    p = pipeline.plan(DATASET, VERSION, run_id, clock=plan_clock)
    stages["plan"] = time.perf_counter() - t
    t = time.perf_counter()
    p = pipeline.load_plan(DATASET, VERSION, run_id)
    stages["load_plan"] = time.perf_counter() - t
    shard_results = [pipeline.run_shard(DATASET, VERSION, s) for s in p["shards"]]
    t = time.perf_counter()
    report = pipeline.finalize(
        DATASET, p["dataset_version"], p, shard_results, clock=finalize_clock
    )
    stages["finalize"] = time.perf_counter() - t
    secs["plan.load_state"] += plan_clock.seconds["load_state"]
    secs["plan.check_model"] += plan_clock.seconds["check_model"]
    secs["open_store"] += plan_clock.seconds["open_store"] + finalize_clock.seconds["open_store"]
    for part in ("store_optimize", "store_count", "store_delete", "feature_table"):
        secs[f"finalize.{part}"] += finalize_clock.seconds[part]
    opt_result = report.get("optimize") or {}
    release = getattr(pipeline, "release_lease", None)
    if release is not None:  # finalize or the DAG's teardown releases it; make sure
        release(DATASET, VERSION, run_id)
    total = sum(stages.values())
    parts = {k: round(v, 3) for k, v in sorted(secs.items())}
    parts["finalize.other"] = round(
        stages["finalize"] - sum(v for k, v in secs.items() if k.startswith("finalize.")), 3
    )
    return {
        "seconds": {k: round(v, 3) for k, v in stages.items()} | {"total": round(total, 3)},
        "share": {k: round(v / total, 3) for k, v in stages.items()},
        "parts_seconds": parts,
        "optimize_share_of_finalize": round(
            secs["finalize.store_optimize"] / stages["finalize"], 3
        ),
        "optimize_share_of_run": round(secs["finalize.store_optimize"] / total, 3),
        "import_seconds": round(import_s, 3),
        "counts": p["counts"],
        "shards": len(p["shards"]),
        "report": {
            k: report.get(k)
            for k in ("listed", "unchanged", "processed", "deleted", "indexed", "indexed_ok")
        },
        "optimize": {
            k: opt_result.get(k)
            for k in ("fragments_before", "fragments_after", "indexes_created", "vector_index")
        }
        if opt_result
        else report.get("optimize"),
        "vector_index_partitions_after": vector_index_partitions(Path(cfg["tmp"]) / "store"),
        "peak_rss_mb": round(hwm_mb(), 1),
    }


def run_child(cfg: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"no-change child failed:\n{proc.stderr[-5000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["child_wall_seconds"] = round(time.perf_counter() - t0, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--listing", choices=["fs", "synthetic"], default="fs")
    ap.add_argument("--per-dir", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3, help="no-change runs, one child each")
    ap.add_argument("--build-batch-rows", type=int, default=50_000)
    ap.add_argument("--dir", default=None, help="parent of the temporary folder")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench_nochange_", dir=args.dir)).resolve()
    out: dict = {
        "benchmark": "nochange",
        "n": args.n,
        "listing": args.listing,
        "cpus": os.cpu_count(),
        "load_avg_1m_start": round(os.getloadavg()[0], 2),
    }
    try:
        root = tmp / "src"
        root.mkdir()
        registry = write_registry(tmp / "registry.yaml", root, tmp / "store")
        set_env(tmp, registry)
        layout = Layout(root, args.n, per_dir=args.per_dir, new_every=0, changed_every=0)
        layout.n_deleted = 0
        setup: dict = {}
        if args.listing == "fs":
            log(f"creating {args.n:,} files under {root}")
            setup["tree_seconds"] = round(layout.make_tree(), 1)
        log("building the index (upsert, then optimize with the vector index)")
        setup["index"] = build_index(
            layout, tmp / "store", batch_rows=args.build_batch_rows, vectors="random"
        )
        setup["store_bytes"] = dir_size(tmp / "store")
        setup["vector_index_partitions"] = vector_index_partitions(tmp / "store")
        out["setup"] = setup
        cfg = {
            "tmp": str(tmp),
            "registry": str(registry),
            "root": str(root),
            "n": args.n,
            "per_dir": args.per_dir,
            "listing": args.listing,
        }
        runs = []
        for r in range(args.repeats):
            log(f"no-change run {r + 1}/{args.repeats}")
            runs.append(run_child({**cfg, "run": str(r)}))
        out["runs"] = runs
        for mine in [runs]:
            best = min(mine, key=lambda r: r["seconds"]["total"])
            out["current"] = {
                # The first no-change run after the set-up is the first finalize after the
                # vector index was built (it used to retrain that index; now it adds nothing).
                "first_run_seconds": mine[0]["seconds"],
                "first_run_parts_seconds": mine[0]["parts_seconds"],
                "first_run_peak_rss_mb": mine[0]["peak_rss_mb"],
                "max_total_seconds": max(r["seconds"]["total"] for r in mine),
                "vector_index_partitions_after": mine[-1]["vector_index_partitions_after"],
                "best_total_seconds": best["seconds"]["total"],
                "best_seconds": best["seconds"],
                "median_total_seconds": sorted(r["seconds"]["total"] for r in mine)[len(mine) // 2],
                "best_parts_seconds": best["parts_seconds"],
            }
        out["targets"] = {"total_seconds": 60}
        out["targets_met"] = out["current"]["max_total_seconds"] < 60
        out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    finally:
        t0 = time.perf_counter()
        shutil.rmtree(tmp, ignore_errors=True)
        out["cleanup_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
