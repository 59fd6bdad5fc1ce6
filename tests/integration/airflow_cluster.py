"""A real Airflow 3 on loopback: api-server, scheduler, dag-processor and triggerer processes.

The integration tier drives it only as a user would: the public REST API (``/api/v2`` with a JWT
from ``/auth/token``, SimpleAuthManager users) and the ``airflow`` CLI. The executor is a
parameter — :func:`cluster_env` is the one place that turns (state folder, executor, extra
settings) into the environment every process gets, starting from ``scripts/airflow_local.py``'s
``airflow_env`` so ``make standalone``, the demo and this tier configure Airflow the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from airflow_local import airflow_env, components, migrate  # noqa: E402

SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)
USERS = {"admin": "admin", "viewer": "viewer"}
FINISHED = {"success", "failed"}


class ClusterError(RuntimeError):
    """The cluster did not start, or a run did not reach a final state in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(
    var_dir: Path, *, executor: str = "LocalExecutor", api_port: int, **extra: str
) -> dict[str, str]:
    """The environment of every process of one cluster (Airflow's and the tier's CLI calls).

    ``airflow_env`` derives what ``make standalone`` uses — loopback listeners, and the
    execution API URL tasks call from the api-server's port; this adds what a test session
    needs (free ports, known users, short retries). ``extra`` wins: a Celery cluster passes
    its broker, result backend and database here.
    """
    settings = {
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__API__WORKERS": "1",
        # Free ports: other Airflows (make standalone, other sessions) may hold 8793/8794.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{u}" for u in USERS),
        # One secret for the api-server and every process that signs or checks task tokens.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        # A registry change (a new version) reaches the DAG's form within seconds.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        # Retries come quickly so a killed worker costs seconds, not the default 30 s doubling.
        "IMAGEINDEX_RETRY_DELAY_S": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    settings.update(extra)
    env = airflow_env(var_dir, port=api_port, **settings)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    return env


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class AirflowCluster:
    """Start, drive and stop one Airflow deployment whose state lives in ``var_dir``.

    ``executor`` picks the executor; ``env`` adds settings (see :func:`cluster_env`); ``logs``
    is where each process writes its output (kept after the session for debugging).
    """

    def __init__(
        self,
        var_dir: Path,
        *,
        executor: str = "LocalExecutor",
        env: dict[str, str] | None = None,
        logs: Path | None = None,
        api_port: int | None = None,
        processes: Iterable[str] | None = None,
    ):
        self.var_dir = Path(var_dir)
        self.executor = executor
        self.api_port = api_port or free_port()
        self.env = cluster_env(
            self.var_dir, executor=executor, api_port=self.api_port, **(env or {})
        )
        self.logs = Path(logs or self.var_dir / "logs")
        self.logs.mkdir(parents=True, exist_ok=True)
        #: What ``make standalone`` starts: api-server, scheduler, dag-processor, triggerer
        #: and the loopback task log servers (``airflow_local.components``).
        self.processes = tuple(processes or components(self.env))
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self._client: httpx.Client | None = None

    # ---------------------------------------------------------------------------------------
    # life cycle

    def start(self, timeout: float = 240) -> None:
        t0 = time.monotonic()
        migrate(self.env)
        for name in self.processes:
            self.spawn(name)
        deadline = t0 + timeout
        while True:
            self.check_alive()
            try:
                if httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"api-server not up after {timeout:.0f}s; {self.tail()}")
            time.sleep(0.5)
        self._client = httpx.Client(
            base_url=self.base_url, timeout=60, headers=self.bearer(self.login("admin"))
        )
        # The scheduler and dag-processor report to /monitor/health once they heartbeat.
        self.wait(self._components_healthy, timeout=deadline - time.monotonic(), what="health")

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start component ``name`` of ``make standalone`` (else ``airflow <name> <args>``) in
        its own process group, its output in the log folder; ``env`` replaces the cluster's
        environment for this process (a Celery worker with its own host name)."""
        key = " ".join((name, *args))
        known = components(self.env)
        command = known[name] if name in known and not args else ["airflow", name, *args]
        if command[0] == "airflow":
            command = [sys.executable, "-m", *command]
        log = (self.logs / f"{key.replace(' ', '_')}.log").open("ab")
        proc = subprocess.Popen(
            command,
            env=env or self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.var_dir,
        )
        log.close()
        self.procs[key] = proc
        return proc

    def check_alive(self) -> None:
        for key, proc in self.procs.items():
            if proc.poll() is not None:
                raise ClusterError(f"airflow {key} exited with {proc.returncode}; {self.tail(key)}")

    def stop(self) -> None:
        """SIGTERM every process group (they fork workers), SIGKILL what lingers."""
        if self._client is not None:
            self._client.close()
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # children left behind by a clean exit too
            proc.wait(timeout=10)

    def tail(self, key: str | None = None, chars: int = 3000) -> str:
        keys = [key] if key else list(self.procs)
        out = []
        for k in keys:
            path = self.logs / f"{k.replace(' ', '_')}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            out.append(f"--- {path} ---\n{text[-chars:]}")
        return "\n".join(out)

    def _components_healthy(self) -> bool:
        health = self.api("GET", "/api/v2/monitor/health")
        wanted = {"metadatabase", "scheduler", "dag_processor", "triggerer"} & {
            p.replace("-", "_") for p in (*self.processes, "metadatabase")
        }
        return all(health.get(c, {}).get("status") == "healthy" for c in wanted)

    # ---------------------------------------------------------------------------------------
    # REST API and CLI

    def login(self, user: str) -> str:
        """A JWT from Airflow's token endpoint, as an API client gets one."""
        response = httpx.post(
            f"{self.base_url}/auth/token",
            json={"username": user, "password": self.passwords()[user]},
            timeout=30,
        )
        if response.status_code != 201:
            raise ClusterError(f"/auth/token for {user}: {response.status_code} {response.text}")
        return response.json()["access_token"]

    def passwords(self) -> dict[str, str]:
        """SimpleAuthManager's generated passwords, by user name."""
        path = Path(self.env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        return json.loads(path.read_text())

    @staticmethod
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        assert self._client is not None, "cluster not started"
        return self._client.request(method, path, **kwargs)

    def api(self, method: str, path: str, *, expect: int | tuple = (200, 201), **kwargs):
        """JSON answer of a REST call; anything but ``expect`` is an error with the body."""
        response = self.request(method, path, **kwargs)
        codes = (expect,) if isinstance(expect, int) else expect
        if response.status_code not in codes:
            raise ClusterError(f"{method} {path}: {response.status_code} {response.text[:2000]}")
        return response.json() if response.content else None

    def cli(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess:
        """``airflow <args>`` with the cluster's environment, as a user's shell would run it."""
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.var_dir,
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"airflow {' '.join(args)}: rc {proc.returncode}\n{proc.stderr[-3000:]}"
            )
        return proc

    def wait(self, predicate, *, timeout: float, what: str, every: float = 1.0):
        """Poll ``predicate()`` until it returns something truthy; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(every)

    # DAGs ------------------------------------------------------------------------------------

    def wait_dag(self, dag_id: str, timeout: float = 120) -> dict:
        """The DAG once the dag-processor has parsed and serialized it."""

        def parsed():
            response = self.request("GET", f"/api/v2/dags/{dag_id}")
            return response.json() if response.status_code == 200 else None

        return self.wait(parsed, timeout=timeout, what=f"DAG {dag_id} to be parsed")

    def unpause(self, dag_id: str) -> None:
        self.wait_dag(dag_id)
        self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def import_errors(self) -> list[dict]:
        return self.api("GET", "/api/v2/importErrors")["import_errors"]

    # runs ------------------------------------------------------------------------------------

    def trigger(self, dag_id: str, conf: dict | None = None, run_id: str | None = None) -> str:
        body: dict = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def runs(self, dag_id: str, **filters) -> list[dict]:
        params = {"limit": 100, "order_by": "id", **filters}
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns", params=params)["dag_runs"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict:
        def finished():
            run = self.run(dag_id, run_id)
            return run if run["state"] in FINISHED else None

        return self.wait(finished, timeout=timeout, what=f"run {dag_id}/{run_id} to finish")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        return self.api("GET", path, params={"limit": 1000})["task_instances"]

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
        return self.api("GET", path)["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index=-1):
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        params = {"map_index": map_index, "deserialize": True}
        return self.api("GET", path, params=params)["value"]

    def log_text(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index=-1):
        """A task try's log, one JSON line per structured record (messages and tracebacks)."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        params = {"full_content": True, "map_index": map_index}
        content = self.api("GET", path, params=params, headers={"Accept": "application/json"})
        lines = content.get("content") or []
        return "\n".join(json.dumps(line, default=str) for line in lines)

    # pools and assets ------------------------------------------------------------------------

    def create_pool(self, name: str, slots: int) -> dict:
        body = {"name": name, "slots": slots, "description": "integration tier"}
        return self.api("POST", "/api/v2/pools", json=body)

    def asset(self, uri: str) -> dict:
        assets = self.api("GET", "/api/v2/assets", params={"uri_pattern": uri})["assets"]
        matches = [a for a in assets if a["uri"] == uri]
        if not matches:
            raise ClusterError(f"no asset {uri}; known: {[a['uri'] for a in assets]}")
        return matches[0]

    def asset_events(self, **filters) -> list[dict]:
        params = {"limit": 1000, **filters}
        return self.api("GET", "/api/v2/assets/events", params=params)["asset_events"]

    def post_asset_event(self, uri: str, extra: dict | None = None) -> dict:
        body = {"asset_id": self.asset(uri)["id"], "extra": extra or {}}
        return self.api("POST", "/api/v2/assets/events", json=body)


# -------------------------------------------------------------------------------------------
# reading a run


def shard_tis(tis: list[dict], stage: str | None = None) -> list[dict]:
    """The mapped shard task instances (``shard.<stage>``, map_index >= 0) of a run."""
    prefix = f"shard.{stage}" if stage else "shard."
    return [t for t in tis if t["task_id"].startswith(prefix) and t["map_index"] >= 0]


def max_concurrency(tis: list[dict]) -> int:
    """The most task instances that were running at one instant (from start/end times)."""
    edges = []
    for t in tis:
        start, end = parse_time(t["start_date"]), parse_time(t["end_date"])
        if start and end:
            edges += [(start, 1), (end, -1)]
    running = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):  # an end before a start at a tie
        running += step
        peak = max(peak, running)
    return peak


def timeline(tis: list[dict]) -> list[dict]:
    """Compact per-task-instance facts for the summary (task, map index, try, state, times)."""
    rows = []
    for t in sorted(tis, key=lambda t: (t["start_date"] or "", t["task_id"], t["map_index"])):
        start, end = parse_time(t["start_date"]), parse_time(t["end_date"])
        rows.append(
            {
                "task": t["task_id"],
                "map": t["map_index"],
                "try": t["try_number"],
                "state": t["state"],
                "start": t["start_date"],
                "seconds": round((end - start).total_seconds(), 2) if start and end else None,
            }
        )
    return rows


def run_seconds(run: dict) -> float | None:
    start, end = parse_time(run.get("start_date")), parse_time(run.get("end_date"))
    return round((end - start).total_seconds(), 1) if start and end else None
