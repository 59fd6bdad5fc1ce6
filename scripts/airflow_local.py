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

``python scripts/airflow_local.py standalone`` (``make standalone``) starts the real processes
instead (:func:`components`): the UI and REST API on ``127.0.0.1:$AIRFLOW__API__PORT`` (default
8080), workers calling the execution API on that same port, task log servers on loopback only.
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
LOOPBACK = "127.0.0.1"


def loopback_hostname() -> str:
    """Airflow's ``[core] hostname_callable`` here: the UI fetches a running task's log from
    ``http://<hostname>:<log server port>``, and the log servers listen on loopback only."""
    return LOOPBACK


def airflow_env(var_dir: str | Path, *, port: int | str | None = None, **extra: str) -> dict:
    """Environment for an Airflow whose state lives in ``var_dir/airflow``.

    Everything listens on loopback. The API server's ``port`` (default: ``AIRFLOW__API__PORT``
    from the environment, else 8080) is also the one workers call for the execution API, so
    a UI on another port does not leave tasks calling :8080. The log servers' ports follow
    ``AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT`` / ``…TRIGGER_LOG_SERVER_PORT`` (8793/8794).
    """
    var_dir = Path(var_dir).absolute()
    home = var_dir / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    port = str(int(port or env.get("AIRFLOW__API__PORT") or 8080))
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "4"),
            # Several processes and the CLI write to one SQLite file: under load the default
            # 5 s busy timeout made `airflow backfill create` fail with "database is locked".
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}?timeout=60",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
            "AIRFLOW__API__HOST": LOOPBACK,
            "AIRFLOW__API__PORT": port,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{LOOPBACK}:{port}/execution/",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "airflow_local.loopback_hostname",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": env.get(
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "8793"
            ),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": env.get(
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", "8794"
            ),
            "IMAGEINDEX_HOME": str(var_dir),
            # scripts/: Airflow imports loopback_hostname from this file
            "PYTHONPATH": os.pathsep.join(
                p
                for p in (str(REPO / "include"), str(REPO / "scripts"), env.get("PYTHONPATH", ""))
                if p
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


def components(env: dict[str, str]) -> dict[str, list[str]]:
    """The processes of a local Airflow (what ``airflow standalone`` starts), every listener on
    loopback. Airflow 3.3 has no setting for the log servers' address (they bind every
    interface), so the scheduler and triggerer skip theirs and :func:`serve_logs` serves the
    same logs on ``127.0.0.1``."""
    airflow = [sys.executable, "-m", "airflow"]
    logs = [sys.executable, str(Path(__file__).resolve()), "serve-logs", "--port"]
    api = ["api-server", "--host", LOOPBACK, "--port", env["AIRFLOW__API__PORT"]]
    return {
        "api-server": [*airflow, *api],
        "scheduler": [*airflow, "scheduler", "--skip-serve-logs"],
        "dag-processor": [*airflow, "dag-processor"],
        "triggerer": [*airflow, "triggerer", "--skip-serve-logs"],
        "worker-logs": [*logs, env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"]],
        "trigger-logs": [*logs, env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"]],
    }


def serve_logs(port: int) -> None:
    """Airflow's task log server (``airflow.utils.serve_logs``) on loopback only."""
    import uvicorn

    uvicorn.run(
        "airflow.utils.serve_logs.log_server:get_app",
        factory=True,
        host=LOOPBACK,
        port=port,
        log_config=None,
        access_log=False,
    )


def standalone(env: dict[str, str]) -> int:
    """Start :func:`components` until Ctrl-C or SIGTERM, their output prefixed with their names.

    Each process gets its own process group, so stopping one also stops what it started
    (LocalExecutor workers, API server workers): nothing is left listening."""
    import contextlib
    import signal
    import threading

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also when started in the background (SIGINT ignored)
    migrate(env)
    procs: dict[str, subprocess.Popen] = {}

    def pump(name: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            print(f"{name:>13} | {line}", end="", flush=True)

    try:
        for name, cmd in components(env).items():
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            procs[name] = proc
            threading.Thread(target=pump, args=(name, proc), daemon=True).start()
        url = f"http://{LOOPBACK}:{env['AIRFLOW__API__PORT']}"
        passwords = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        print(f"   standalone | Airflow UI on {url}; user admin, password in {passwords}")
        while all(p.poll() is None for p in procs.values()):
            time.sleep(1)
        gone = [n for n, p in procs.items() if p.poll() is not None]
        print(f"   standalone | {', '.join(gone)} exited; stopping the others", flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # what is left of its group


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
    p.add_argument("command", choices=["run", "_test", "env", "standalone", "serve-logs"])
    p.add_argument("--dataset", default="samples")
    p.add_argument("--conf", default="{}")
    p.add_argument("--var", default=str(REPO / "var"))
    p.add_argument("--port", type=int, help="serve-logs: its port (on loopback)")
    args = p.parse_args()
    if args.command == "_test":
        _test_in_process(args.dataset, json.loads(args.conf))
        return 0
    if args.command == "serve-logs":
        serve_logs(args.port)
        return 0
    env = airflow_env(args.var)
    if args.command == "standalone":
        return standalone(env)
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
