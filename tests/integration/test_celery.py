"""The CeleryExecutor for real, without Docker: docker-compose.yaml's Airflow on loopback.

Debian's ``postgresql`` and ``redis-server`` (tests/integration/services.py) stand in for the
compose ``postgres`` and ``redis`` services. Airflow is configured as compose configures its
containers: ``docker/airflow.env`` (compose's ``env_file``) and compose's
``x-airflow-common-env`` interpolated with this session's secrets, with only hosts, ports and
paths swapped (:data:`TIER_OVERRIDES` lists every other difference, and why). The two Celery
workers run compose's own worker commands (queues and concurrency from the file); each gets its
own hostname, as each container has one. The registry's ``tasks:`` (queues, pools) come from
config/registry.compose.yaml.

Checked through the REST API only: a run succeeds with ``tag_embed`` on the ``models`` queue and
the models worker's host, every other stage on the CPU worker's queues and host; and a models
worker SIGKILLed in the middle of ``tag_embed`` gets that task retried (try 2) on the other
models worker (compose's ``--scale airflow-worker-gpu=2``), and the run succeeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import services
import yaml
from airflow_cluster import AirflowCluster, parse_time

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
AIRFLOW_ENV = ROOT / "docker" / "airflow.env"
REGISTRY = ROOT / "config" / "registry.compose.yaml"
#: Process logs, kept after the session (test-output/ is ignored by git).
LOGS = ROOT / "test-output" / "celery" / "logs"
DATASET = "celery"
DAG_ID = f"imageindex_{DATASET}"
ADMIN = "admin"
#: Compose services of the two worker kinds, and the hostnames their processes get here.
CPU_WORKER, MODELS_WORKER = "airflow-worker-cpu", "airflow-worker-gpu"
#: Compose's own hosts, and what stands in for each here (filled by :func:`compose_airflow_env`).
COMPOSE_HOSTS = ("postgres", "redis:6379", "airflow-apiserver:8080")

#: Seconds without a heartbeat after which the scheduler fails a task (compose: 300).
HEARTBEAT_TIMEOUT_S = 20
#: Everything the tier sets differently from compose, besides hosts, ports and secrets.
TIER_OVERRIDES = {
    # Paths: the repository's folders instead of compose's mounts, state in a temp dir.
    "paths": (
        "AIRFLOW_HOME",
        "AIRFLOW__CORE__DAGS_FOLDER",
        "AIRFLOW__CORE__PLUGINS_FOLDER",
        "IMAGEINDEX_HOME",
        "IMAGEINDEX_REGISTRY",
        "IMAGEINDEX_STAGING",
        "IMAGEINDEX_STORE",
        "IMAGEINDEX_FEATURES",
        "IMAGEINDEX_MODEL_CACHE",
    ),
    # Timing: a killed worker is noticed after 20 s instead of 5 min, retried after 1 s.
    "timing": (
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL",
        "IMAGEINDEX_RETRY_DELAY_S",
    ),
}


def compose_file() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def compose_airflow_env(compose: dict, variables: dict[str, str], hosts: dict[str, str]):
    """The environment compose gives an Airflow container, with ``hosts`` swapped in.

    ``variables`` are the ``.env`` values (secrets, ports); every compose host in a value must
    have a stand-in in ``hosts``, so no URL still points at a container.
    """
    from test_compose import as_mapping, interpolate, read_env_file

    env = dict(read_env_file(AIRFLOW_ENV))
    for name, raw in as_mapping(compose["x-airflow-common-env"]).items():
        value = interpolate(raw, variables)
        for host, stand_in in hosts.items():
            value = re.sub(rf"(?<=[@/]){re.escape(host)}(?=[:/])", stand_in, value)
        for host in COMPOSE_HOSTS:
            assert not re.search(rf"[@/]{re.escape(host)}[:/]", value), f"{name}: {value}"
        env[name] = value
    return env


def worker_args(compose: dict, service: str, variables: dict[str, str]) -> list[str]:
    """``airflow`` arguments of a compose worker service (``celery worker --queues …``)."""
    from test_compose import command_words, interpolate

    words = command_words(interpolate(compose["services"][service]["command"], variables))
    assert words[:2] == ["celery", "worker"], words
    return words


def queues(args: list[str]) -> set[str]:
    return set(args[args.index("--queues") + 1].split(","))


def session_pids(sid: int) -> list[int]:
    """Every process of session ``sid`` (a worker, its pool, the supervisors and task runners)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


class CeleryCluster(AirflowCluster):
    """docker-compose.yaml's Airflow: Postgres, Redis, FAB users, compose's Celery workers."""

    def __init__(self, var_dir: Path, pg: services.Postgres, redis: services.Redis):
        self.compose = compose_file()
        example = {}
        for line in (ROOT / ".env.example").read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                example[name] = value
        self.variables = {
            **example,
            "POSTGRES_PASSWORD": pg.password,
            "REDIS_PASSWORD": redis.password,
            "AIRFLOW_FERNET_KEY": _fernet_key(),
            "AIRFLOW_JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW_API_SECRET_KEY": secrets.token_hex(32),
            "AIRFLOW_ADMIN_PASSWORD": secrets.token_hex(12),
            # 2 cores: compose's default of 8 CPU task processes would only thrash.
            "CPU_WORKER_CONCURRENCY": "2",
        }
        self.admin_password = self.variables["AIRFLOW_ADMIN_PASSWORD"]
        api_port = services.free_port()
        self.compose_env = compose_airflow_env(
            self.compose,
            self.variables,
            {
                "postgres": f"127.0.0.1:{pg.port}",
                "redis:6379": f"127.0.0.1:{redis.port}",
                "airflow-apiserver:8080": f"127.0.0.1:{api_port}",
            },
        )
        var_dir = Path(var_dir)
        cache = os.environ.get("IMAGEINDEX_MODEL_CACHE") or str(var_dir / "model-cache")
        overrides = {
            "IMAGEINDEX_HOME": str(var_dir),
            "IMAGEINDEX_REGISTRY": str(var_dir / "registry.yaml"),
            "IMAGEINDEX_STAGING": str(var_dir / "staging"),
            "IMAGEINDEX_STORE": str(var_dir / "lancedb"),
            "IMAGEINDEX_FEATURES": str(var_dir / "features"),
            "IMAGEINDEX_MODEL_CACHE": cache,
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "IMAGEINDEX_RETRY_DELAY_S": "1",
            # The tests' fault hook (pipeline.fault_point), read by every task.
            "IMAGEINDEX_FAULT_FILE": str(var_dir / "fault.json"),
            # The scheduler's health server (on by docker/airflow.env) on loopback, free port.
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(services.free_port()),
        }
        super().__init__(
            var_dir,
            executor="CeleryExecutor",
            env={**self.compose_env, **overrides},
            logs=LOGS,
            api_port=api_port,
            # The Celery workers run the tasks; no LocalExecutor worker log server.
            processes=("api-server", "scheduler", "dag-processor", "triggerer", "trigger-logs"),
        )
        self.workers: dict[str, dict] = {}
        self.fault_file = var_dir / "fault.json"

    def passwords(self) -> dict[str, str]:
        return {ADMIN: self.admin_password}

    def prepare(self) -> None:
        """What compose's airflow-init does that this tier needs: migrate, admin user, pools."""
        from airflow_local import migrate

        migrate(self.env)
        self.cli(
            "users", "create", "--role", "Admin", "--username", ADMIN,
            "--password", self.admin_password, "--email", "admin@example.com",
            "--firstname", "Admin", "--lastname", "tier",
        )  # fmt: skip
        from test_compose import as_mapping, interpolate

        init = self.compose["services"]["airflow-init"]
        script = interpolate(init["command"][1], self.variables)
        pools = re.findall(r"^airflow pools set .*$", script, re.M)
        assert pools, "airflow-init creates no pools?"
        # The lines as airflow-init runs them, with its variables (pool sizes).
        init_env = {
            k: interpolate(v, self.variables)
            for k, v in as_mapping(init["environment"]).items()
            if k.endswith("_POOL_SLOTS")
        }
        proc = subprocess.run(
            ["bash", "-euc", "\n".join(pools)],
            env={**self.env, **init_env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    def start_worker(self, service: str, hostname: str) -> None:
        """Compose's ``service`` worker command, as host ``hostname``."""
        args = worker_args(self.compose, service, self.variables)
        env = {
            **self.env,
            # Each container has its own host name; here each worker process says its own.
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "services.tier_hostname",
            "IMAGEINDEX_TIER_HOSTNAME": hostname,
            "PYTHONPATH": os.pathsep.join((str(Path(__file__).parent), self.env["PYTHONPATH"])),
        }
        # Celery's node name; the pid file (airflow's default, $AIRFLOW_HOME/airflow-worker.pid,
        # is one per host); no task log server on every interface (the api-server reads the
        # task logs from the shared AIRFLOW_HOME), so the tier listens on loopback only.
        args += ["--celery-hostname", f"{hostname}@tier", "--pid", f"{hostname}.pid"]
        args += ["--skip-serve-logs"]
        proc = self.spawn(*args, env=env)
        self.workers[hostname] = {
            "service": service,
            "queues": queues(args),
            "proc": proc,
            "key": " ".join(args),
        }

    def wait_workers(self, timeout: float = 120) -> None:
        """Until every worker answers a Celery ping (compose's worker healthcheck)."""
        names = {f"{h}@tier" for h in self.workers}

        def pong():
            proc = subprocess.run(
                [sys.executable, "-m", "celery", "--app",
                 "airflow.providers.celery.executors.celery_executor.app",
                 "inspect", "ping", "--json", "--timeout", "2"],
                env=self.env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            return all(n in proc.stdout for n in names)

        self.wait(pong, timeout=timeout, what=f"Celery workers {sorted(names)}", every=1)

    def kill_worker(self, hostname: str) -> list[int]:
        """SIGKILL the worker's whole session, as a machine or container dies."""
        proc = self.workers[hostname]["proc"]
        self.procs.pop(self.workers[hostname]["key"])
        pids = session_pids(proc.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return pids


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def write_registry(var_dir: Path, photos: Path) -> dict:
    """The tier's registry: compose's samples dataset (its ``tasks:`` queues and pools, its
    tagger), with a local photo folder and a LanceDB store instead of S3 and OpenSearch."""
    compose_registry = yaml.safe_load(REGISTRY.read_text(encoding="utf-8"))
    samples = next(d for d in compose_registry["datasets"] if d["id"] == "samples")
    tagger = dict(samples["tagger"])
    tagger["definitions"] = str((REGISTRY.parent / tagger["definitions"]).resolve())
    dataset = {
        "id": DATASET,
        "current_version": "v1",
        "versions": {"v1": {"source": str(photos)}},
        "tagger": tagger,
        "store": {"type": "lancedb", "uri": str(var_dir / "lancedb")},
        "schedule": None,
        "tasks": samples["tasks"],
    }
    registry = {"defaults": {"embedder": {"type": "offline"}}, "datasets": [dataset]}
    (var_dir / "registry.yaml").write_text(yaml.safe_dump(registry), encoding="utf-8")
    return samples["tasks"]


@pytest.fixture(scope="module")
def backing():
    lacking = services.missing()
    if lacking:
        pytest.skip(f"not installed: {', '.join(lacking)} (.ci/run installs them with apt-get)")
    pg = services.start_postgres()
    try:
        redis = services.start_redis()
    except BaseException:
        pg.stop()
        raise
    yield pg, redis
    redis.stop()
    pg.stop()


@pytest.fixture(scope="module")
def celery_cluster(backing):
    from imagezoo import make_photo

    pg, redis = backing
    # Not pytest's tmp_path: other pytest sessions on this machine prune those while we run.
    var_dir = Path(tempfile.mkdtemp(prefix="imageindex-celery-"))
    photos = var_dir / "photos"
    for i in range(24):
        make_photo(photos / f"p{i:03d}.jpg", size=(320, 240), seed=i)
    tasks = write_registry(var_dir, photos)
    t0 = time.perf_counter()
    c = CeleryCluster(var_dir, pg, redis)
    c.timings = {"postgres_start_s": pg.start_seconds, "redis_start_s": redis.start_seconds}
    c.stage_tasks = tasks
    try:
        c.prepare()
        c.timings["migrate_users_pools_s"] = time.perf_counter() - t0
        c.start()
        c.start_worker(CPU_WORKER, "worker-cpu")
        c.start_worker(MODELS_WORKER, "worker-models")
        c.wait_workers()
        c.timings["cluster_start_s"] = time.perf_counter() - t0
        c.unpause(DAG_ID)
        yield c
    except BaseException:
        print(c.tail(chars=4000))
        raise
    finally:
        c.stop()
        shutil.rmtree(var_dir, ignore_errors=True)


def by_task(tis: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for ti in tis:
        out.setdefault(ti["task_id"].rsplit(".", 1)[-1], []).append(ti)
    return out


def test_env_is_composes(celery_cluster):
    """The processes run with compose's settings: the env file verbatim, compose's URLs with
    only hosts and ports changed, and nothing else differing but the listed overrides."""
    from test_compose import read_env_file

    for name, value in read_env_file(AIRFLOW_ENV).items():
        assert celery_cluster.env[name] == value, name
    assert celery_cluster.env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert celery_cluster.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith(
        "postgresql+psycopg2://airflow:"
    )
    assert celery_cluster.env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:")
    overridden = {n for names in TIER_OVERRIDES.values() for n in names}
    for name, value in celery_cluster.compose_env.items():
        if name not in overridden:
            assert celery_cluster.env[name] == value, f"{name}: the tier differs from compose"
    config = celery_cluster.cli("config", "get-value", "core", "executor").stdout.strip()
    assert config == "CeleryExecutor"


def seconds_of(ti: dict) -> float | None:
    start, end = parse_time(ti.get("start_date")), parse_time(ti.get("end_date"))
    return round((end - start).total_seconds(), 1) if start and end else None


def test_run_routes_stages_to_their_workers(celery_cluster, summary):
    t0 = time.perf_counter()
    run_id = celery_cluster.trigger(DAG_ID, conf={"shard_size": 12})
    run = celery_cluster.wait_run(DAG_ID, run_id, timeout=420)
    seconds = time.perf_counter() - t0
    tis = celery_cluster.task_instances(DAG_ID, run_id)
    assert run["state"] == "success", [(t["task_id"], t["state"]) for t in tis]
    stages = by_task(tis)
    assert celery_cluster.stage_tasks["tag_embed"]["queue"] == "models"
    assert len(stages["tag_embed"]) == 2, "24 photos in shards of 12"
    models = celery_cluster.workers["worker-models"]["queues"]
    cpu = celery_cluster.workers["worker-cpu"]["queues"]
    evidence = []
    for stage, instances in stages.items():
        want = celery_cluster.stage_tasks.get(stage, {}).get("queue", "default")
        host = "worker-models" if want in models else "worker-cpu"
        assert want in (models if host == "worker-models" else cpu)
        for ti in instances:
            evidence.append((stage, ti["map_index"], ti["queue"], ti["hostname"], ti["state"]))
            evidence[-1] += (seconds_of(ti),)
            assert ti["state"] == "success", evidence[-1]
            assert ti["queue"] == want, evidence[-1]
            assert ti["hostname"] == host, evidence[-1]
    assert {e[3] for e in evidence if e[0] == "tag_embed"} == {"worker-models"}
    report = celery_cluster.xcom(DAG_ID, run_id, "finalize")
    assert report["indexed"] == 24, report
    summary.record(
        "celery_routing",
        run_id=run_id,
        run_s=round(seconds, 1),
        **{k: round(v, 1) for k, v in celery_cluster.timings.items()},
        task_instances=sorted(evidence),
    )


def test_killed_models_worker_retried_on_the_other(celery_cluster, summary):
    """``--scale airflow-worker-gpu=2``: the worker running tag_embed dies (SIGKILL of its whole
    session); the scheduler notices the missing heartbeats and try 2 runs on the other one."""
    celery_cluster.start_worker(MODELS_WORKER, "worker-models-2")
    celery_cluster.wait_workers()
    run_id = f"celery_kill_{secrets.token_hex(4)}"
    # Try 1 of this run's tag_embed stops in the middle (a batch embedded, features not yet
    # written) and stays there until its worker is killed; try 2 goes through.
    fault = {"stage": "tag_embed", "tries": [1], "run_id": run_id, "hang_s": 600}
    celery_cluster.fault_file.write_text(json.dumps(fault), encoding="utf-8")
    t0 = time.perf_counter()
    celery_cluster.trigger(DAG_ID, conf={"shard_size": 100, "mode": "full"}, run_id=run_id)

    def tag_embed_running():
        tis = by_task(celery_cluster.task_instances(DAG_ID, run_id)).get("tag_embed", [])
        return next((t for t in tis if t["state"] == "running" and t["hostname"]), None)

    ti = celery_cluster.wait(tag_embed_running, timeout=300, what="tag_embed running")
    victim = ti["hostname"]
    assert victim in ("worker-models", "worker-models-2")
    assert ti["try_number"] == 1
    # The task's own log says it reached the fault point (past the model load, mid-stage).
    logs = Path(celery_cluster.env["AIRFLOW_HOME"]) / "logs"

    def at_fault_point():
        return any(
            "fault injection: hanging" in p.read_text(errors="replace")
            for p in logs.glob(f"dag_id={DAG_ID}/run_id={run_id}/task_id=*tag_embed/**/attempt=1*")
        )

    celery_cluster.wait(at_fault_point, timeout=120, what="tag_embed at its fault point")
    killed = celery_cluster.kill_worker(victim)
    killed_at = time.perf_counter() - t0
    run = celery_cluster.wait_run(DAG_ID, run_id, timeout=420)
    seconds = time.perf_counter() - t0
    tries = celery_cluster.tries(DAG_ID, run_id, ti["task_id"], 0)
    seen = [(t["try_number"], t["state"], t["hostname"], t["queue"], seconds_of(t)) for t in tries]
    assert run["state"] == "success", seen
    assert [t["try_number"] for t in tries] == [1, 2], seen
    first, second = tries
    assert first["hostname"] == victim and first["state"] == "failed", seen
    # Failed by the scheduler once heartbeats stopped (not by the task: it hung until killed).
    assert seconds_of(first) >= HEARTBEAT_TIMEOUT_S - 5, seen
    other = ({"worker-models", "worker-models-2"} - {victim}).pop()
    assert second["hostname"] == other and second["state"] == "success", seen
    assert first["queue"] == second["queue"] == "models", seen
    report = celery_cluster.xcom(DAG_ID, run_id, "finalize")
    assert report["indexed"] == 24, report
    summary.record(
        "celery_worker_killed",
        run_id=run_id,
        killed=victim,
        killed_processes=len(killed),
        killed_at_s=round(killed_at, 1),
        run_s=round(seconds, 1),
        tag_embed_tries=seen,
    )
