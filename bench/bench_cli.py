"""The ``imageindex search`` command from a cold process: wall and CPU time and peak memory of a
text query, an image query and a filter-only query, against ``python -c "import imageindex"``,
plus the same queries warm (repeated in one process). Prints JSON.

The index is the demo's (``scripts/demo.py --project``: the sample photos indexed without
Airflow) in a temporary copy of the checkout's layout, or ``--project DIR`` (built there when
missing, reused afterwards). Every command runs there as a newcomer would, with no
``IMAGEINDEX_*`` settings. "Cold" is a new interpreter per run; the OS file cache is warm (run
each command once untimed first), as it is for anyone who ran a query a minute ago. The load
average is reported before and after: on a shared machine wall times follow it, CPU times less.

``targets_met``: issue 13's targets, on the median of the cold runs: text query under 1 s and
300 MB peak RSS, filter-only query under 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from demo import build_project, clean_env  # noqa: E402

PYTHON = str(REPO / ".venv" / "bin" / "python")
QUERIES = {
    "text": ["--text", "a cup of coffee"],
    "image": ["--image", "var/samples/skimage/chelsea.png"],
    "filter": ["--tags-any", "Animal", "--dsl", "width >= 256"],
}
TARGETS = {"text_wall_s": 1.0, "text_rss_mb": 300, "filter_wall_s": 0.5}
#: Imported by a query only if something is wrong (torch and friends: the indexing side).
UNWANTED = ["torch", "sentence_transformers", "transformers", "boto3", "botocore", "airflow"]
WARM = """
import json, sys, time
from imageindex.search import SearchRequest, run_search
kw = json.loads(sys.argv[1])
times = []
for _ in range(int(sys.argv[2]) + 1):
    t0 = time.perf_counter()
    run_search(SearchRequest(dataset_id="samples", top_k=10, **kw))
    times.append(time.perf_counter() - t0)
print(json.dumps(times[1:]))
"""


def run_once(argv: list[str], cwd: Path, env: dict) -> None:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")


def measure(argv: list[str], cwd: Path, env: dict, repeats: int) -> dict:
    run_once(argv, cwd, env)  # untimed: file cache
    walls, cpus, rss = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - t0)
        err = proc.stderr.read().decode()
        proc.stderr.close()
        if status:
            raise SystemExit(f"{' '.join(argv)} failed:\n{err[-2000:]}")
        cpus.append(usage.ru_utime + usage.ru_stime)
        rss.append(usage.ru_maxrss / 1024)
    return {
        "wall_s_p50": round(statistics.median(walls), 3),
        "wall_s_min": round(min(walls), 3),
        "cpu_s_p50": round(statistics.median(cpus), 3),
        "peak_rss_mb": round(max(rss), 1),
    }


def imports(argv: list[str], cwd: Path, env: dict) -> dict:
    """Top-level packages the command imports, the slowest first (``-X importtime`` self time)."""
    proc = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True
    )
    self_us: Counter[str] = Counter()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            own, _, name = line[len("import time:") :].split("|")
            self_us[name.strip().split(".")[0]] += int(own)
    return {
        "top_ms": {k: round(v / 1000) for k, v in self_us.most_common(8)},
        "unwanted": sorted(m for m in UNWANTED if m in self_us),
        "pil": "PIL" in self_us,
        "pandas": "pandas" in self_us,
    }


def warm(kw: dict, cwd: Path, env: dict, repeats: int) -> float:
    """Median seconds of the query repeated in one process (model and store loaded)."""
    out = subprocess.run(
        [PYTHON, "-c", WARM, json.dumps(kw), str(repeats)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return round(statistics.median(json.loads(out)) * 1000, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, help="demo project folder (default: a temporary one)")
    ap.add_argument("--repeats", type=int, default=5, help="cold runs per command")
    args = ap.parse_args()
    env = clean_env()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        project = (args.project or Path(tmp) / "demo").absolute()
        if not (project / "var" / "lancedb").exists():
            build_project(project, env=env)
        load_before = os.getloadavg()
        base = measure([PYTHON, "-c", "import imageindex"], project, env, args.repeats)
        results = {}
        warm_kw = {
            "text": {"text": "a cup of coffee"},
            "image": {"image_path": "var/samples/skimage/chelsea.png"},
            "filter": {"tags_any": ["Animal"], "dsl": "width >= 256"},
        }
        for name, flags in QUERIES.items():
            argv = [PYTHON, "-m", "imageindex.cli", "search", "--dataset", "samples", *flags]
            cold = measure(argv, project, env, args.repeats)
            results[name] = {
                "cold": cold,
                "ratio_to_import": round(cold["wall_s_p50"] / base["wall_s_p50"], 1),
                "warm_ms_p50": warm(warm_kw[name], project, env, args.repeats),
                "imports": imports(argv, project, env),
            }
        load_after = os.getloadavg()
    met = {
        "text_wall": results["text"]["cold"]["wall_s_p50"] < TARGETS["text_wall_s"],
        "text_rss": results["text"]["cold"]["peak_rss_mb"] < TARGETS["text_rss_mb"],
        "filter_wall": results["filter"]["cold"]["wall_s_p50"] < TARGETS["filter_wall_s"],
    }
    report = {
        "bench": "cli",
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "repeats": args.repeats,
        "import_imageindex": base,
        "queries": results,
        "targets": TARGETS,
        "targets_detail": met,
        "targets_met": all(met.values()),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
