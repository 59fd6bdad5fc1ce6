"""Benchmark ``pipeline.plan`` at scale: list N files, diff them against an index of N documents,
cut shard manifests. Prints one JSON object (logs go to stderr).

Set-up (not timed as part of the plan): a tree of N empty ``.jpg`` files (``--listing fs``; or a
synthetic FileEntry iterator of the same files with ``--listing synthetic``), and a LanceDB table
of N documents built through ``LanceDBStore.upsert`` and compacted/indexed by ``optimize`` as a
previous run's finalize leaves it (scalar indexes; no vector index: plan never reads vectors).
Of the listed files 1% are changed, 0.5% new, and 0.5% of the documents are deleted files.

The plan runs in a child process (fresh interpreter, like an Airflow task) with timing wrappers
around its parts: model check, state load, listing, manifest rows, todo/deletes/shard writes;
the rest of the plan is the diff loop itself. Peak RSS is the child's VmHWM (and
``getrusage(RUSAGE_CHILDREN)``).

    .venv/bin/python bench/bench_plan.py --n 100000
    .venv/bin/python bench/bench_plan.py --n 1000000 --dir /work/main/var/bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
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
    rss_mb,
    set_env,
    time_listing,
    write_registry,
)

RUN_ID = "bench_plan__run"


# --------------------------------------------------------------------------------------------
# child: one timed plan


def child(cfg: dict) -> dict:
    t0 = time.perf_counter()
    set_env(Path(cfg["tmp"]), Path(cfg["registry"]))
    from imageindex import pipeline
    from imageindex.staging import LocalStaging

    import_s = time.perf_counter() - t0
    rss_start = rss_mb()
    secs: Counter = Counter()
    marks: dict = {}
    layout = Layout(Path(cfg["root"]), cfg["n"], per_dir=cfg["per_dir"])

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                secs[name] += time.perf_counter() - t

        return wrapper

    # plan times its own parts when given a clock (no patching of pipeline internals); the
    # memory after the index state is loaded is sampled as that part ends.
    def on_part(name: str) -> None:
        if name == "load_state":
            marks["rss_after_state_mb"] = round(rss_mb(), 1)

    clock = pipeline.StageClock(on_part)
    LocalStaging.delete_prefix = timed("clear_run_dir", LocalStaging.delete_prefix)

    time_listing(secs, "listing", cfg["listing"], layout)

    orig_write = LocalStaging.write_parquet

    def write_parquet(self, uri, table):
        kind = "write_shards" if "/shards/" in str(uri) else "write_deletes"
        timed(kind, orig_write)(self, uri, table)

    LocalStaging.write_parquet = write_parquet
    LocalStaging.read_parquet = timed("read_todo", LocalStaging.read_parquet)

    orig_writer = LocalStaging.parquet_writer

    class TimedWriter:
        def __init__(self, cm):
            self.cm = cm

        def __enter__(self):
            self.w = self.cm.__enter__()
            return self

        def write_table(self, table):
            timed("write_todo", self.w.write_table)(table)

        def __exit__(self, *exc):
            t = time.perf_counter()
            try:
                return self.cm.__exit__(*exc)
            finally:
                secs["write_todo"] += time.perf_counter() - t

    LocalStaging.parquet_writer = lambda self, uri, schema: TimedWriter(
        orig_writer(self, uri, schema)
    )

    peak = {"rss": 0.0}
    stop = threading.Event()

    def sample() -> None:  # cross-check of VmHWM: RSS polled every 20 ms
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], rss_mb())
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    run_id = f"{RUN_ID}_{cfg['mode']}_{cfg['run']}"
    result = pipeline.plan(
        DATASET, VERSION, run_id, mode=cfg["mode"], shard_size=cfg["shard_size"], clock=clock
    )
    plan_s = time.perf_counter() - t
    secs.update(clock.seconds)  # open_run, open_store, check_model(.embedder_init), load_state, ...
    counts = result["counts"]
    # Index entries loaded: every listed file that was not new, and every deleted one.
    marks["state_entries"] = counts["listed"] - counts["new"] + counts["deleted"]
    # The embedder plan checked against the index (cached per process: the same instance).
    if clock.seconds.get("check_model.embedder_init") is not None:
        from imageindex.registry import load_registry

        marks["embedder"] = pipeline.embedder_for(load_registry().get(DATASET))
    release = getattr(pipeline, "release_lease", None)
    if release is not None:  # the DAG's teardown does this; the next child plans the same version
        release(DATASET, VERSION, run_id)
    stop.set()
    sampler.join()

    parts = {k: round(v, 3) for k, v in sorted(secs.items())}
    accounted = sum(v for k, v in secs.items() if k != "check_model.embedder_init")
    parts["diff_loop_and_rest"] = round(plan_s - accounted, 3)
    emb = marks.get("embedder")
    return {
        "mode": cfg["mode"],
        "plan_seconds": round(plan_s, 3),
        "plan_reported_seconds": result["seconds"],
        "import_seconds": round(import_s, 3),
        "parts_seconds": parts,
        "listing_files_per_s": round(cfg["n"] / secs["listing"]) if secs["listing"] else None,
        "state_rows_per_s": round(marks.get("state_entries", 0) / secs["load_state"])
        if secs["load_state"]
        else None,
        "check_model": {
            "seconds": round(secs["check_model"], 3),
            "embedder_init_seconds": round(secs["check_model.embedder_init"], 3),
            # OfflineEmbedder loads its models lazily: name and dim need neither.
            "onnx_model_loaded": bool(emb is not None and getattr(emb, "_forward", None)),
            "text_model_loaded": bool(emb is not None and getattr(emb, "_text_model", None)),
            "onnxruntime_imported": "onnxruntime" in sys.modules,
            "torch_imported": "torch" in sys.modules,
        },
        "counts": result["counts"],
        "shards": len(result["shards"]),
        "shard_size": result["shard_size"],
        "xcom": {
            # What the DAG's plan task returns (XCom) is result["shards"]; plan.json keeps counts.
            "plan_task_return_bytes": len(json.dumps(result["shards"])),
            "plan_result_bytes": len(json.dumps(result)),
            "only_shard_paths": all(
                isinstance(s, str) and s.endswith("/manifest.parquet") for s in result["shards"]
            ),
        },
        "run_dir_bytes": dir_size(Path(result["run_dir"])),
        "memory_mb": {
            "rss_after_imports": round(rss_start, 1),
            "rss_after_state_load": marks.get("rss_after_state_mb"),
            "peak_rss": round(hwm_mb(), 1),
            "peak_rss_polled": round(peak["rss"], 1),
            # Inflated: Linux carries the forking parent's RSS into a child's ru_maxrss.
            "ru_maxrss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
        "state_entries": marks.get("state_entries"),
    }


# --------------------------------------------------------------------------------------------
# parent: fixtures, the child runs, clean-up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="files listed (and indexed)")
    ap.add_argument("--listing", choices=["fs", "synthetic"], default="fs")
    ap.add_argument("--per-dir", type=int, default=1000, help="files per folder")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=1, help="plan runs (fresh child each)")
    ap.add_argument(
        "--modes",
        default="incremental",
        help="comma-separated plan modes to run, e.g. incremental,full (full: every file)",
    )
    ap.add_argument("--build-batch-rows", type=int, default=50_000)
    ap.add_argument(
        "--no-optimize", action="store_true", help="leave the index un-compacted, no indexes"
    )
    ap.add_argument("--dir", default=None, help="parent of the temporary folder")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench_plan_", dir=args.dir)).resolve()
    out: dict = {
        "benchmark": "plan",
        "n": args.n,
        "listing": args.listing,
        "files_per_dir": args.per_dir,
        "cpus": os.cpu_count(),
        "load_avg_1m_start": round(os.getloadavg()[0], 2),
    }
    try:
        root = tmp / "src"
        root.mkdir()
        registry = write_registry(
            tmp / "registry.yaml",
            root,
            tmp / "store",
            # No vector index: plan never reads vectors, and an IVF over zeros is meaningless.
            store_options={"index_min_rows": 10 * args.n + 1},
        )
        set_env(tmp, registry)
        layout = Layout(root, args.n, per_dir=args.per_dir)
        out["expected_counts"] = layout.expected()
        setup: dict = {}
        if args.listing == "fs":
            log(f"creating {args.n:,} files under {root}")
            setup["tree_seconds"] = round(layout.make_tree(), 1)
        log("building the index")
        setup["index"] = build_index(
            layout,
            tmp / "store",
            batch_rows=args.build_batch_rows,
            optimize=not args.no_optimize,
            index_min_rows=10 * args.n + 1,
        )
        setup["store_bytes"] = dir_size(tmp / "store")
        out["setup"] = setup

        cfg = {
            "tmp": str(tmp),
            "registry": str(registry),
            "root": str(root),
            "n": args.n,
            "per_dir": args.per_dir,
            "listing": args.listing,
            "shard_size": args.shard_size,
        }
        runs = []
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        jobs = [(m, r) for r in range(args.repeats) for m in modes]
        for mode, r in jobs:
            log(f"plan run {r + 1}/{args.repeats} ({mode})")
            t0 = time.perf_counter()
            child_cfg = {**cfg, "mode": mode, "run": str(r)}
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(child_cfg)],
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"plan child failed:\n{proc.stderr[-5000:]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            run["child_wall_seconds"] = round(wall, 2)
            runs.append(run)
        out["runs"] = runs
        runs_now = runs
        incr = [r for r in runs_now if r["mode"] == "incremental"] or runs_now
        out["plan_seconds"] = min(r["plan_seconds"] for r in incr)
        out["peak_rss_mb"] = max(r["memory_mb"]["peak_rss"] for r in incr)
        out["listing_seconds"] = min(r["parts_seconds"]["listing"] for r in incr)
        if any(r["mode"] == "full" for r in runs_now):
            full = [r for r in runs_now if r["mode"] == "full"]
            out["full_mode"] = {
                "plan_seconds": min(r["plan_seconds"] for r in full),
                "peak_rss_mb": max(r["memory_mb"]["peak_rss"] for r in full),
                "shards": full[0]["shards"],
                "plan_task_return_bytes": full[0]["xcom"]["plan_task_return_bytes"],
            }
        out["ru_maxrss_children_mb"] = round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
        )
        out["counts_match_expected"] = all(
            r["counts"][k] == out["expected_counts"][k]
            for r in incr
            for k in ("listed", "new", "changed", "unchanged", "deleted")
        )
        out["targets"] = {"plan_seconds": 60, "peak_rss_mb": 2048}
        out["targets_met"] = bool(out["plan_seconds"] < 60 and out["peak_rss_mb"] < 2048)
        out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    finally:
        t0 = time.perf_counter()
        shutil.rmtree(tmp, ignore_errors=True)
        out["cleanup_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
