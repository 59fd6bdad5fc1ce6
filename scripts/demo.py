"""``make demo``: collect the sample photos, index them with the DAG on a local Airflow
(SQLite, ``dag.test()``), print a few text searches, then the commands to try next.

The next commands need no environment variables: run from the checkout, the CLI finds
``config/registry.yaml`` and the state folder it names (``home: ../var``). They are also in
README.md, whose shell examples ``tests/test_readme.py`` runs against such an index.
"""

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
# Printed at the end, pasted as they are in the checkout (README.md shows the same lines).
NEXT_COMMANDS = [
    '.venv/bin/imageindex search --dataset samples --text "a cup of coffee" --top-k 5 --json',
    ".venv/bin/imageindex search --dataset samples --image var/samples/skimage/chelsea.png",
    ".venv/bin/imageindex search --dataset samples --dsl 'tags:Animal AND width >= 256'",
    ".venv/bin/imageindex datasets",
]


def next_commands(var: Path) -> list[str]:
    """NEXT_COMMANDS, with ``IMAGEINDEX_HOME=…`` in front when the demo's state is not the
    registry's ``home`` (``var/``), so they still find it."""
    if var.absolute() == (REPO / "var").absolute():
        return list(NEXT_COMMANDS)
    return [f"IMAGEINDEX_HOME={var} {c}" for c in NEXT_COMMANDS]


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
    print(f"\nNext, in {REPO} (the venv's `imageindex`; no environment variables needed):")
    for command in next_commands(var):
        print(f"  {command}")
    print("More in README.md (search, export, the notebook API: imageindex.search(...)).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
