"""``make demo``: collect the sample photos, index them with the DAG on a local Airflow
(SQLite, ``dag.test()``), then print a few text searches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from airflow_local import REPO, airflow_env, run_dag  # noqa: E402

QUERIES = ["a cat", "a cup of coffee", "a dog", "a bedroom", "a motorcycle"]


def main() -> int:
    var = Path(os.environ.get("IMAGEINDEX_HOME") or REPO / "var")
    env = airflow_env(var)
    imageindex = [sys.executable, "-m", "imageindex.cli"]
    out = subprocess.run(
        [*imageindex, "samples", str(var / "samples")], env=env, check=True, capture_output=True
    )
    print("collected sample photos:", json.loads(out.stdout)["files"])
    t0 = time.perf_counter()
    state, seconds, output = run_dag(env, "samples", {"mode": "incremental"})
    if state != "success":
        print(output[-6000:])
        print(f"DAG run ended in state {state}", file=sys.stderr)
        return 1
    print(f"indexed with the imageindex_samples DAG (dag.test) in {time.perf_counter() - t0:.1f}s")
    for q in QUERIES:
        print(f"\n$ imageindex search --dataset samples --text {q!r} --top-k 3")
        subprocess.run(
            [*imageindex, "search", "--dataset", "samples", "--text", q, "--top-k", "3"],
            env=env,
            check=True,
        )
    # The managed service's "export results": every animal photo, as a file list for training.
    dest = var / "exports" / "animals.jsonl"
    print(f"\n$ imageindex export --dataset samples --tags-any Animal --to {dest}")
    subprocess.run(
        [*imageindex, "export", "--dataset", "samples", "--tags-any", "Animal", "--to", str(dest)],
        env=env,
        check=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
