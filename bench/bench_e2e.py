"""End-to-end images/second of the indexing DAG under a real Airflow executor, where the time
goes, and what each task pays before it does any work. Prints one JSON object (logs: stderr).

1. Generates the largest ``--n`` of photo-like JPEGs (``tests/imagezoo.py`` ``photo_image``:
   gradients, shapes, noise; 1024x768, quality 90, a different seed each), 100 to a folder;
   each smaller ``--n`` is a folder of hard links to the first N. One dataset per N
   (``e2e_<N>``, own store), offline models, tag definitions ``config/tags/samples.json``.
2. Per ``--executor``: ``local`` starts the integration tier's Airflow
   (``tests/integration/airflow_cluster.py``: api-server, scheduler, dag-processor, triggerer on
   loopback, SQLite, ``LocalExecutor`` with ``--parallelism`` slots), ``celery`` the same with
   CeleryExecutor, PostgreSQL, Redis and the ``default`` and ``models`` workers
   (``tests/integration/test_celery.py``); ``dag-test`` runs ``dag.test()`` (one task after
   another, in one process). Each N is triggered through the REST API like a user's run
   (``conf``: ``shard_size``), one after another; cluster start-up is not counted.
3. Per run: wall seconds (run start to end) and images/s; the pipeline's own seconds per stage
   (run report, summed over shards); task-instance seconds per stage (REST start/end times).
   ``share`` splits the run's worker time — task-instance seconds plus the wall seconds when no
   task ran — into the five stages, ``airflow_in_tasks`` (task-instance time outside the
   pipeline call: process fork, DAG parse, task runner, execution-API calls) and ``idle``
   (scheduling gaps); ``airflow_overhead_share`` is the sum of the last two. For one task at
   a time this is exactly (wall - stage seconds) / wall. ``per_task_airflow_seconds``: mean
   task-instance time outside the pipeline, per stage.
4. ``task_process_start``: what a new task process spends before its first image (imports,
   embedder and tagger set-up, ONNX session, label and tag-definition vectors from the model
   cache, store open; wall and CPU seconds; torch must not be imported), in a fresh interpreter
   and in a process forked after the imports ``plugins/airflow_local_settings.py`` makes the
   scheduler and Celery workers do (how the real executors start tasks).
5. Embed stage alone, in a fresh child on the smallest run's preprocessed shards (at most
   ``--embed-images`` images): ``pipeline.tag_embed`` per shard, cold once, then warm rounds
   interleaved with the bare ONNX forward (224x224 uint8 arrays already in memory, normalise +
   ``session.run``) and with the same stage on copies of the shards without the stored model
   input (the thumbnails decoded, as before preprocess stored it), whose vectors must equal the
   stage's to the bit (``vectors_equal``, ``min_cosine``).

Targets (issue 11): ``embed_stage_over_bare_forward`` >= 0.9 (the embed stage including
getting the pixels) and, at 10,000 photos, ``dag_over_embed_stage`` >= 0.5 (DAG images/s over
warm embed-stage images/s); ``targets_met`` tests both per executor (None when no run of
>= 10,000 photos was made). Numbers on a machine shared with other work are noise: note the
load averages in the output.

    .venv/bin/python bench/bench_e2e.py --n 1000 --n 10000 --executor local
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _folder in ("scripts", "tests", "tests/integration", "bench"):
    sys.path.insert(0, str(REPO / _folder))

VERSION = "v1"
TAGS = REPO / "config" / "tags" / "samples.json"
STAGES = ("plan", "preprocess", "tag_embed", "upsert", "finalize")
TARGETS = {"embed_stage_over_bare_forward": 0.9, "dag_over_embed_stage_at_10k": 0.5}


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def dataset_id(n: int) -> str:
    return f"e2e_{n}"


# --------------------------------------------------------------------------------------------
# set-up


def _write_photo(job: tuple[str, int, int, int, int]) -> int:
    from imagezoo import photo_image

    path, seed, width, height, quality = job
    photo_image((width, height), seed).save(path, "JPEG", quality=quality)
    return os.path.getsize(path)


def make_photos(root: Path, sizes: list[int], width: int, height: int, quality: int) -> dict:
    """``root/n<N>/set###/photo#####.jpg`` for each N; smaller sets are hard links. A set made
    before with the same settings (``root/photos.json``) is reused."""
    t0 = time.perf_counter()
    n_max = max(sizes)
    full = root / f"n{n_max}"
    made = root / "photos.json"
    if made.exists():
        known = json.loads(made.read_text())
        same = {k: known.get(k) for k in ("width", "height", "jpeg_quality")}
        if same == {"width": width, "height": height, "jpeg_quality": quality} and all(
            len(list((root / f"n{n}").glob("set*/*.jpg"))) == n for n in sizes
        ):
            return known | {"files": n_max, "reused": True}
    jobs = []
    for i in range(n_max):
        folder = full / f"set{i // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((str(folder / f"photo{i:05d}.jpg"), 1000 + i, width, height, quality))
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        kb = list(pool.map(_write_photo, jobs, chunksize=16))
    for n in sizes:
        if n == n_max:
            continue
        for src, *_ in jobs[:n]:
            dst = root / f"n{n}" / Path(src).relative_to(full)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
    facts = {
        "files": n_max,
        "width": width,
        "height": height,
        "jpeg_quality": quality,
        "kb_mean": round(sum(kb) / n_max / 1024, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    made.write_text(json.dumps(facts))
    return facts


def write_registry(
    path: Path, photos: Path, var: Path, sizes: list[int], tasks: dict | None = None
) -> Path:
    """One dataset per N; ``tasks``: per-stage queues and pools (compose's, for Celery)."""
    datasets = [
        {
            "id": dataset_id(n),
            "current_version": VERSION,
            "versions": {VERSION: {"source": str(photos / f"n{n}")}},
            "store": {"uri": str(var / f"lancedb_{n}")},
            "tagger": {"type": "offline", "definitions": str(TAGS)},
            **({"tasks": tasks} if tasks else {}),
        }
        for n in sizes
    ]
    path.write_text(json.dumps({"datasets": datasets}, indent=1), encoding="utf-8")  # JSON=YAML
    return path


def imageindex_env(registry: Path, model_cache: Path) -> dict[str, str]:
    return {
        "IMAGEINDEX_REGISTRY": str(registry),
        "IMAGEINDEX_MODEL_CACHE": str(model_cache),
        "IMAGEINDEX_RETRY_DELAY_S": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def find_report(var: Path, dataset: str) -> tuple[Path, dict]:
    reports = sorted((var / "staging" / "runs" / dataset / VERSION).glob("*/report.json"))
    if len(reports) != 1:
        raise SystemExit(f"expected one run report of {dataset} under {var}, found {len(reports)}")
    return reports[0].parent, json.loads(reports[0].read_text())


def report_summary(report: dict) -> dict:
    keys = ("listed", "new", "processed", "failed", "indexed_ok", "shards", "seconds")
    return {k: report.get(k) for k in keys}


def stage_seconds(report: dict) -> dict[str, float]:
    return {s: float(report["seconds"].get(s) or 0.0) for s in STAGES}


# --------------------------------------------------------------------------------------------
# reading a run of the real executors


def _stage_of(task_id: str) -> str:
    return task_id.rsplit(".", 1)[-1]


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def split_run(n: int, run: dict, tis: list[dict], report: dict) -> dict:
    """Wall time, stage and Airflow shares of one executor run (see the module docstring)."""
    from airflow_cluster import max_concurrency, parse_time

    start, end = parse_time(run["start_date"]), parse_time(run["end_date"])
    queued = parse_time(run.get("queued_at"))
    wall = (end - start).total_seconds()
    intervals: list[tuple[float, float]] = []
    task_secs = dict.fromkeys(STAGES, 0.0)
    counts = dict.fromkeys(STAGES, 0)
    hosts: dict[str, set] = {}
    busy = 0.0  # every task instance, the lease teardown too
    for ti in tis:
        a, b = parse_time(ti["start_date"]), parse_time(ti["end_date"])
        if not (a and b):
            continue
        stage = _stage_of(ti["task_id"])
        intervals.append((a.timestamp(), b.timestamp()))
        busy += (b - a).total_seconds()
        if stage in task_secs:
            task_secs[stage] += (b - a).total_seconds()
            counts[stage] += 1
            hosts.setdefault(stage, set()).add(f"{ti.get('queue')}@{ti.get('hostname')}")
    pipe = stage_seconds(report)
    idle = max(wall - _union_seconds(intervals), 0.0)
    worker = busy + idle
    in_tasks = busy - sum(pipe.values())
    share = {s: round(pipe[s] / worker, 3) for s in STAGES}
    share |= {"airflow_in_tasks": round(in_tasks / worker, 3), "idle": round(idle / worker, 3)}
    return {
        "state": run["state"],
        "wall_seconds": round(wall, 2),
        "queued_to_start_seconds": round((start - queued).total_seconds(), 2) if queued else None,
        "images_per_s": round(n / wall, 2),
        "task_instances": len(tis),
        "max_parallel_tasks": max_concurrency(tis),
        "stage_seconds": {s: round(v, 2) for s, v in pipe.items()},
        "task_instance_seconds": {s: round(v, 2) for s, v in task_secs.items()},
        "share": share,
        "airflow_overhead_share": round((in_tasks + idle) / worker, 3),
        "per_task_airflow_seconds": {
            s: round((task_secs[s] - pipe[s]) / counts[s], 2) for s in STAGES if counts[s]
        },
        "queues_and_hosts": {s: sorted(h) for s, h in hosts.items()},
        "report": report_summary(report),
    }


def run_executor(executor: str, var: Path, env: dict, sizes: list[int], args) -> dict:
    """Start the executor's Airflow, run each dataset's DAG once, stop it."""
    out: dict = {"runs": {}}
    backing: list = []
    t0 = time.perf_counter()
    try:
        if executor == "celery":
            cluster = start_celery(var, env, backing)
        else:
            from airflow_cluster import AirflowCluster

            cluster = AirflowCluster(
                var / "airflow-local",
                env=env | {"AIRFLOW__CORE__PARALLELISM": str(args.parallelism)},
            )
            backing.append(cluster)
            cluster.start()
        out["cluster_start_seconds_not_counted"] = round(time.perf_counter() - t0, 1)
        for n in sizes:
            dag_id = f"imageindex_{dataset_id(n)}"
            cluster.unpause(dag_id)
            log(f"{executor}: triggering {dag_id}")
            run_id = cluster.trigger(dag_id, {"shard_size": args.shard_size})
            run = cluster.wait_run(dag_id, run_id, timeout=args.run_timeout)
            tis = cluster.task_instances(dag_id, run_id)
            if run["state"] != "success":
                failed = [t["task_id"] for t in tis if t["state"] != "success"]
                raise SystemExit(f"{executor} run {run_id} ended {run['state']}: {failed}")
            run_dir, report = find_report(cluster.var_dir, dataset_id(n))
            out["runs"][str(n)] = split_run(n, run, tis, report) | {"run_dir": str(run_dir)}
            log(f"{executor}: {n} photos in {out['runs'][str(n)]['wall_seconds']} s")
    finally:
        for started in reversed(backing):  # the cluster first, then Redis and PostgreSQL
            started.stop()
    return out


def start_celery(var: Path, env: dict, started: list):
    """The integration tier's CeleryExecutor deployment: docker-compose.yaml's settings,
    PostgreSQL and Redis on loopback, its CPU worker (queues default, preprocess) and model
    worker (queue models). Everything started is appended to ``started``."""
    import services
    from test_celery import CPU_WORKER, MODELS_WORKER, CeleryCluster

    started.append(services.start_postgres())
    started.append(services.start_redis())
    cluster = CeleryCluster(var / "airflow-celery", *started[-2:])
    cluster.env.update(env)
    started.append(cluster)
    cluster.prepare()
    cluster.start()
    cluster.start_worker(CPU_WORKER, "worker-cpu")
    cluster.start_worker(MODELS_WORKER, "worker-models")
    cluster.wait_workers()
    return cluster


def compose_tasks() -> dict:
    """The per-stage queues and pools of compose's registry (tag_embed on the models queue)."""
    import yaml

    registry = yaml.safe_load((REPO / "config" / "registry.compose.yaml").read_text())
    return next(d for d in registry["datasets"] if d["id"] == "samples")["tasks"]


def run_dag_test(var: Path, env: dict, sizes: list[int], args) -> dict:
    """``dag.test()`` runs (tasks one after another in one process), for comparison."""
    from airflow_local import airflow_env, migrate, run_dag

    full = airflow_env(var / "airflow-dagtest", **env)
    migrate(full)
    out: dict = {"runs": {}}
    for n in sizes:
        state, wall, output = run_dag(full, dataset_id(n), {"shard_size": args.shard_size})
        if state != "success":
            raise SystemExit(f"dag.test() of {dataset_id(n)} ended {state}:\n{output[-6000:]}")
        run_dir, report = find_report(var / "airflow-dagtest", dataset_id(n))
        pipe = stage_seconds(report)
        overhead = wall - sum(pipe.values())
        out["runs"][str(n)] = {
            "state": state,
            "wall_seconds": round(wall, 2),
            "images_per_s": round(n / wall, 2),
            "stage_seconds": {s: round(v, 2) for s, v in pipe.items()},
            "share": {s: round(v / wall, 3) for s, v in pipe.items()},
            "airflow_overhead_share": round(overhead / wall, 3),
            "report": report_summary(report),
            "run_dir": str(run_dir),
        }
    return out


# --------------------------------------------------------------------------------------------
# child: what a fresh task process loads before its first image


def child_load(cfg: dict) -> dict:
    """The steps in this fresh interpreter (``forked`` false), or in a process forked from this
    one after it pre-imported what ``plugins/airflow_local_settings.py`` makes the scheduler and
    Celery workers import: how a task process starts under the real executors."""
    if not cfg["forked"]:
        return load_steps(cfg["dataset"])
    sys.path.insert(0, str(REPO / "plugins"))
    import airflow_local_settings

    for name in airflow_local_settings.TASK_IMPORTS:
        __import__(name)
    read, write = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the task process
        try:
            result = {"fork_seconds": round(time.perf_counter() - t0, 4)}
            result |= load_steps(cfg["dataset"])
            os.write(write, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        forked = json.loads(fh.read() or "{}")
    os.waitpid(pid, 0)
    return forked


def load_steps(dataset_id: str) -> dict:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    steps: dict[str, dict] = {}

    def step(name: str, t: float, c: float) -> None:
        steps[name] = {
            "wall": round(time.perf_counter() - t, 3),
            "cpu": round(time.process_time() - c, 3),
        }

    from imageindex import pipeline
    from imageindex.registry import load_registry
    from imageindex.taggers.offline import definition_vectors

    dataset = load_registry().get(dataset_id)
    step("imports_and_registry", wall0, cpu0)
    t, c = time.perf_counter(), time.process_time()
    embedder = pipeline.embedder_for(dataset)
    tagger = pipeline.tagger_for(dataset, embedder)
    step("embedder_and_tagger_init", t, c)
    t, c = time.perf_counter(), time.process_time()
    _ = embedder.onnx_session
    step("onnx_session", t, c)
    t, c = time.perf_counter(), time.process_time()
    _ = embedder.label_vectors
    step("label_vectors", t, c)
    t, c = time.perf_counter(), time.process_time()
    definitions = getattr(tagger, "definitions", None)
    if definitions is not None:
        definition_vectors(embedder, definitions)
    step("tag_definition_vectors", t, c)
    t, c = time.perf_counter(), time.process_time()
    store = pipeline.RunContext(dataset=dataset, version=VERSION).store()
    rows = store.count(dataset.id)
    step("store_open", t, c)
    return {
        "steps": steps,
        "model_load_wall": round(sum(steps[k]["wall"] for k in list(steps)[1:5]), 3),
        "total_wall": round(time.perf_counter() - wall0, 3),
        "total_cpu": round(time.process_time() - cpu0, 3),
        "torch_imported": "torch" in sys.modules,
        "store_rows": rows,
    }


# --------------------------------------------------------------------------------------------
# child: the embed stage alone and the bare forward


def child_embed(cfg: dict) -> dict:
    import numpy as np
    import pyarrow.parquet as pq
    from bench_embed import interleaved_best

    from imageindex import pipeline
    from imageindex.embedders.offline import normalize_pixels
    from imageindex.preprocess import load_model_input
    from imageindex.registry import load_registry

    dataset = cfg["dataset"]
    shards, n = [], 0
    for path in sorted(Path(cfg["run_dir"]).glob("shards/*/preprocessed.parquet")):
        if shards and n >= cfg["max_images"]:
            break
        shards.append(str(path))
        n += sum(pq.read_table(path, columns=["ok"]).column("ok").to_pylist())
    # The same shards without the stored model input: tag_embed decodes the thumbnails.
    decoding = []
    for s in shards:
        copy = Path(s).parent.with_name(Path(s).parent.name + "-decoding") / Path(s).name
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(s, copy)  # no model_input.parquet beside it
        decoding.append(str(copy))
    thumbs: list[bytes] = []
    for s in shards:
        t = pq.read_table(s, columns=["ok", "thumbnail"])
        ok = t.column("ok").to_pylist()
        thumbs += [b for b, k in zip(t.column("thumbnail").to_pylist(), ok, strict=True) if k]

    def stage(paths):
        return lambda: [pipeline.tag_embed(dataset, VERSION, p) for p in paths]

    t0 = time.perf_counter()
    first = pipeline.tag_embed(dataset, VERSION, shards[0])
    cold_first_s = time.perf_counter() - t0

    ds = load_registry().get(dataset)
    embedder = pipeline.embedder_for(ds)
    session = embedder.onnx_session
    size, bs = embedder.input_size, cfg["batch_size"]
    t0 = time.perf_counter()
    arrays = np.stack([load_model_input(b, size) for b in thumbs])
    decode_s = time.perf_counter() - t0
    batches = [arrays[i : i + bs] for i in range(0, len(arrays), bs)]

    def bare() -> None:
        for b in batches:
            session.run(["logits"], {"pixels": normalize_pixels(b)})

    bare()  # warm-up
    best = interleaved_best(
        cfg["repeats"], {"stage": stage(shards), "bare": bare, "decoding": stage(decoding)}
    )
    warm_s = best["stage"][0]
    results = best["stage"][1]
    warm_first_s = results[0]["seconds"]

    def vectors(features: list[str]) -> np.ndarray:
        rows = [pq.read_table(f).sort_by("id").column("vector") for f in features]
        return np.concatenate([np.stack(r.to_numpy(zero_copy_only=False)) for r in rows])

    mine = vectors([r["features"] for r in results])
    old = vectors([r["features"] for r in best["decoding"][1]])
    cosine = (mine * old).sum(axis=1)

    rate = lambda s: round(len(thumbs) / s, 2)  # noqa: E731
    return {
        "images": len(thumbs),
        "shards": len(shards),
        "batch_size": bs,
        "backend": embedder.active_backend,
        "cold_first_shard_seconds": round(cold_first_s, 2),
        "warm_first_shard_seconds": round(warm_first_s, 2),
        "model_load_seconds": round(cold_first_s - warm_first_s, 2),
        "cold_first_shard_reported": first["seconds"],
        "embed_stage_img_s": rate(warm_s),
        "embed_stage_model_part_img_s": rate(sum(r["model_seconds"] for r in results)),
        "embed_stage_cold_img_s": round(len(thumbs) / (warm_s - warm_first_s + cold_first_s), 2),
        "bare_onnx_forward_img_s": rate(best["bare"][0]),
        "embed_stage_decoding_thumbnails_img_s": rate(best["decoding"][0]),
        "decode_thumbnail_to_224_img_s_one_thread": rate(decode_s),
        "vectors_equal": bool(np.array_equal(mine, old)),
        "min_cosine_stored_input_vs_decoded_thumbnail": round(float(cosine.min()), 6),
    }


# --------------------------------------------------------------------------------------------


def run_child(kind: str, cfg: dict, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, kind, json.dumps(cfg)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{proc.stderr[-5000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratios_and_targets(runs: dict, emb: dict) -> tuple[dict, dict]:
    embed = emb["embed_stage_img_s"]
    over_bare = embed / emb["bare_onnx_forward_img_s"]
    ratios = {
        "embed_stage_over_bare_forward": round(over_bare, 3),
        "embed_stage_decoding_thumbnails_over_bare_forward": round(
            emb["embed_stage_decoding_thumbnails_img_s"] / emb["bare_onnx_forward_img_s"], 3
        ),
        "dag_over_embed_stage": {n: round(r["images_per_s"] / embed, 3) for n, r in runs.items()},
        "dag_over_embed_stage_cold": {
            n: round(r["images_per_s"] / emb["embed_stage_cold_img_s"], 3) for n, r in runs.items()
        },
    }
    at_10k = [v for n, v in ratios["dag_over_embed_stage"].items() if int(n) >= 10_000]
    met = {
        "embed_stage_over_bare_forward": over_bare >= TARGETS["embed_stage_over_bare_forward"],
        "dag_over_embed_stage_at_10k": (
            all(v >= TARGETS["dag_over_embed_stage_at_10k"] for v in at_10k) if at_10k else None
        ),
    }
    return ratios, met


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, action="append", help="photos (repeatable; default 1000)")
    ap.add_argument(
        "--executor",
        action="append",
        choices=["local", "celery", "dag-test"],
        help="repeatable; default local",
    )
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--parallelism", type=int, default=4, help="LocalExecutor slots")
    ap.add_argument("--run-timeout", type=float, default=3600)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--repeats", type=int, default=3, help="warm embed-stage rounds")
    ap.add_argument("--embed-images", type=int, default=1000, help="embed stage on this many")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dir", default=None, help="parent of the temporary folder")
    ap.add_argument(
        "--model-cache",
        default=str(REPO / "var" / "test-model-cache"),
        help="copied to the temp folder (exported ONNX model, label vectors)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--photos", default=None, help="photo folder kept between runs (reused)")
    ap.add_argument("_child", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        kind, cfg = args._child[0], json.loads(args._child[1])
        fn = {"embed-child": child_embed, "load-child": child_load}[kind]
        print(json.dumps(fn(cfg)))
        return
    sizes = sorted(set(args.n or [1000]))
    for name in ("IMAGEINDEX_STAGING", "IMAGEINDEX_STORE", "IMAGEINDEX_HOME"):
        os.environ.pop(name, None)  # every path comes from the temp folder
    executors = list(dict.fromkeys(args.executor or ["local"]))

    tmp = Path(tempfile.mkdtemp(prefix="bench_e2e_", dir=args.dir)).resolve()
    out: dict = {
        "benchmark": "e2e",
        "n": sizes,
        "executors": executors,
        "shard_size": args.shard_size,
        "parallelism": args.parallelism,
        "cpus": os.cpu_count(),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "targets": TARGETS,
    }
    try:
        cache = tmp / "model-cache"
        if Path(args.model_cache).is_dir():
            shutil.copytree(args.model_cache, cache)
        photos = Path(args.photos).resolve() if args.photos else tmp / "photos"
        log(f"generating {max(sizes)} photos of {args.width}x{args.height}")
        out["photos"] = make_photos(photos, sizes, args.width, args.height, args.quality)
        results, envs = {}, {}
        for executor in executors:
            var = tmp / executor
            var.mkdir()
            tasks = compose_tasks() if executor == "celery" else None
            registry = write_registry(var / "registry.yaml", photos, var / "stores", sizes, tasks)
            env = envs[executor] = imageindex_env(registry, cache)
            if executor == "dag-test":
                results[executor] = run_dag_test(var, env, sizes, args)
            else:
                results[executor] = run_executor(executor, var, env, sizes, args)
        out["load_avg_after_runs"] = [round(x, 2) for x in os.getloadavg()]

        child_env = dict(os.environ) | envs[executors[0]]
        first = results[executors[0]]["runs"][str(sizes[0])]
        child_env["IMAGEINDEX_HOME"] = str(Path(first["run_dir"]).parents[4])
        log("fresh task process: imports, models, store")
        out["task_process_start"] = {
            kind: run_child("load-child", {"dataset": dataset_id(sizes[0]), "forked": f}, child_env)
            for kind, f in (("fresh_interpreter", False), ("forked_after_pre_import", True))
        }
        log("embed stage alone and bare forward (child process)")
        emb = run_child(
            "embed-child",
            {
                "dataset": dataset_id(sizes[0]),
                "run_dir": first["run_dir"],
                "repeats": args.repeats,
                "batch_size": args.batch_size,
                "max_images": args.embed_images,
            },
            child_env,
        )
        out["embed"] = emb
        for res in results.values():
            res["ratios"], res["targets_met"] = ratios_and_targets(res["runs"], emb)
        out["executor"] = results
        out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
