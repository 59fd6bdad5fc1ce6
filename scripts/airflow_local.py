"""Run imageindex DAGs on a local, throwaway Airflow (SQLite metadata database).

Used by ``make demo``, ``make standalone`` and the end-to-end tests, so all three configure
Airflow the same way. ``python scripts/airflow_local.py run --dataset samples`` triggers one run.

A run here is ``dag.test()`` in one child process: no scheduler and no executor. Every task,
each mapped shard included, runs one after another inside that process (Airflow's
``run_task_in_process``); a failed try waits out its retry delay and runs again there. So it
shows that the DAG's tasks, XComs, retries and trigger rules work, not how an executor runs
them: nothing runs in parallel, and what one task loads (models, clients) is still loaded for
the next. ``AIRFLOW__CORE__EXECUTOR`` in :func:`airflow_env` is for the processes that read it
(``make standalone``'s scheduler); ``dag.test()`` ignores it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def airflow_env(var_dir: str | Path, **extra: str) -> dict[str, str]:
    """Environment for an Airflow whose state lives in ``var_dir/airflow``."""
    var_dir = Path(var_dir).absolute()
    home = var_dir / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "4"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
            "IMAGEINDEX_HOME": str(var_dir),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO / "include"), env.get("PYTHONPATH", "")) if p
            ),
        }
    )
    env.setdefault("IMAGEINDEX_REGISTRY", str(REPO / "config" / "registry.yaml"))
    env.update(extra)
    return env


def migrate(env: dict[str, str]) -> None:
    """Create or upgrade the SQLite metadata database (idempotent)."""
    marker = Path(env["AIRFLOW_HOME"]) / ".migrated"
    if marker.exists():
        return
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    marker.touch()


def run_dag(env: dict[str, str], dataset: str, conf: dict | None = None, timeout: float = 1800):
    """Trigger one run with ``dag.test()`` in a child process; returns (state, seconds, output)."""
    migrate(env)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "_test", "--dataset", dataset, "--conf", json.dumps(conf or {})],
        env=env,
        timeout=timeout,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    state = None
    for line in proc.stdout.splitlines():
        if line.startswith("DAGRUN_STATE="):
            state = line.split("=", 1)[1]
    if proc.returncode != 0 and state is None:
        state = "error"
    return state, seconds, proc.stdout + proc.stderr


def _test_in_process(dataset: str, conf: dict) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "imageindex_index", REPO / "dags" / "imageindex_index.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if dataset not in module.DAGS:
        raise SystemExit(f"no DAG for dataset {dataset!r}; registry has {sorted(module.DAGS)}")
    dr = module.DAGS[dataset].test(run_conf=conf or None)
    state = getattr(dr.state, "value", dr.state)
    print(f"DAGRUN_STATE={state}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["run", "_test", "env"])
    p.add_argument("--dataset", default="samples")
    p.add_argument("--conf", default="{}")
    p.add_argument("--var", default=str(REPO / "var"))
    args = p.parse_args()
    if args.command == "_test":
        _test_in_process(args.dataset, json.loads(args.conf))
        return 0
    env = airflow_env(args.var)
    if args.command == "env":
        for k in sorted(env):
            if k.startswith(("AIRFLOW", "IMAGEINDEX")):
                print(f"export {k}={env[k]!r}")
        return 0
    state, seconds, output = run_dag(env, args.dataset, json.loads(args.conf))
    print(output[-4000:] if state != "success" else "")
    print(f"dag run {state} in {seconds:.1f}s")
    return 0 if state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
