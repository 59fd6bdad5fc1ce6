"""``make demo``: collect the sample photos, index them with the DAG on a local Airflow
(SQLite, ``dag.test()``), print a few text searches, then the commands to try next.
``demo.py --project DIR``: the same index without Airflow in a copy of the checkout's layout.

The next commands need no environment variables: run from the checkout, the CLI finds
``config/registry.yaml`` and the state folder it names (``home: ../var``). They are also in
README.md, whose shell examples ``tests/test_readme.py`` runs against such an index.
"""

from __future__ import annotations

import json
import os
import shutil
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


def build_project(dest: str | Path, env: dict[str, str] | None = None) -> Path:
    """The demo without Airflow, in ``dest``: the checkout's layout (a copy of ``config/``, a
    link to ``.venv``) with the sample photos in ``var/samples`` indexed by ``imageindex index``
    (the stages the DAG runs, in one process). Commands run there with no ``IMAGEINDEX_*``
    variables behave as in the checkout after ``make demo``; tests/test_readme.py and
    bench/bench_cli.py search such a copy. ``env``: the environment (default: this one without
    ``IMAGEINDEX_*`` but the model cache). Returns ``dest``."""
    dest = Path(dest).absolute()
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "config", dest / "config", dirs_exist_ok=True)
    if not (dest / ".venv").exists():
        (dest / ".venv").symlink_to(REPO / ".venv")
    env = clean_env() if env is None else env
    cli = [str(dest / ".venv" / "bin" / "imageindex")]
    for args in (["samples", "var/samples"], ["index", "--dataset", "samples"]):
        subprocess.run([*cli, *args], cwd=dest, env=env, check=True, capture_output=True)
    return dest


def clean_env() -> dict[str, str]:
    """This environment without ``IMAGEINDEX_*`` settings (a newcomer's shell), keeping the
    model cache: exported models are derived files, reused rather than exported again."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("IMAGEINDEX_") or k == "IMAGEINDEX_MODEL_CACHE"
    }


def main() -> int:
    if sys.argv[1:2] == ["--project"] and len(sys.argv) == 3:
        dest = build_project(sys.argv[2])
        print(f"Demo project (no Airflow) in {dest}; next, in that folder:")
        for command in NEXT_COMMANDS:
            print(f"  {command}")
        return 0
    if sys.argv[1:]:
        print("usage: demo.py [--project DIR]", file=sys.stderr)
        return 2
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
