"""The integration tier: one real Airflow per session, driven through REST and the CLI.

Every scenario has its own dataset in one session registry (so runs of different scenarios never
share a version, a lease or a store table), and records what it saw — run ids, try numbers,
timings — on stdout (``-s``) and in ``test-output/integration/summary.json``. Each session's
state and logs (process output in ``logs/``, task logs in ``var/airflow/logs/``) stay in
``test-output/integration/sessions/<time>-<pid>/`` for debugging; the last three are kept.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_cluster import AirflowCluster
from tier import OUTPUT, TAGS, Registry, Summary, write_photos


def pytest_collection_modifyitems(config, items) -> None:
    """Every test of this folder is ``integration`` (``-m "not integration"`` leaves them out)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    """This session's folder under test-output/integration/sessions (concurrent sessions, e.g.
    two checkouts' CI runs, never share one); older sessions beyond the last three go."""
    root = OUTPUT / "sessions"
    path = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    path.mkdir(parents=True)
    for old in sorted(root.iterdir())[:-3]:
        pid = int(old.name.rsplit("-", 1)[-1]) if old.name.rsplit("-", 1)[-1].isdigit() else 0
        if not pid_alive(pid):
            shutil.rmtree(old, ignore_errors=True)
    return path


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def summary(session_dir) -> Iterator[Summary]:
    s = Summary(session_dir / "summary.json")
    yield s
    s.write()
    shutil.copyfile(s.path, OUTPUT / "summary.json")


@pytest.fixture(autouse=True)
def _timed(request, summary) -> Iterator[None]:
    """Each test's wall time goes into the summary."""
    t0 = time.monotonic()
    yield
    summary.record("test_seconds", **{request.node.name: round(time.monotonic() - t0, 1)})


@pytest.fixture(scope="session")
def executor() -> str:
    """The executor of the session's cluster (a Celery tier parametrizes this)."""
    return "LocalExecutor"


@pytest.fixture(scope="session")
def executor_env() -> dict[str, str]:
    """Extra settings the executor needs (a Celery tier: broker, result backend, database)."""
    return {}


@pytest.fixture(scope="session")
def var(session_dir) -> Path:
    """The cluster's state folder: AIRFLOW_HOME (task logs in airflow/logs), staging, store,
    photos, registry."""
    path = session_dir / "var"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def registry(var) -> Registry:
    return Registry(var / "registry.yaml", var / "lancedb")


@pytest.fixture(scope="session")
def fault_file(var) -> Path:
    """Where scenarios write the fault to inject (read by every task at every fault point)."""
    return var / "fault.json"


def warm_model_cache(env: dict[str, str], logs: Path) -> subprocess.Popen:
    """Export the offline models and embed the tag definitions once, before any task needs them
    (concurrent first tasks would each do it). Runs beside the Airflow start-up."""
    code = (
        "from PIL import Image\n"
        "from imageindex.embedders import get_embedder\n"
        "from imageindex.taggers import get_tagger\n"
        "e = get_embedder({'type': 'offline'})\n"
        f"t = get_tagger({{'type': 'offline', 'definitions': {str(TAGS)!r}}}, e)\n"
        "t.tag(e.embed_images([Image.new('RGB', (64, 64))]))\n"
    )
    log = (logs / "warm-model-cache.log").open("wb")
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=log)


@pytest.fixture(scope="session")
def cluster(
    var, registry, fault_file, executor, executor_env, summary, session_dir
) -> Iterator[AirflowCluster]:
    """A started Airflow whose DAGs come from the session registry, all DAGs unpaused (a
    user's first step; scheduled datasets start ticking right away)."""
    declare_datasets(var, registry)
    logs = session_dir / "logs"
    env = {
        "IMAGEINDEX_REGISTRY": str(registry.path),
        "IMAGEINDEX_FAULT_FILE": str(fault_file),
        # Upserts write in chunks of 2 rows, so a worker killed mid-upsert leaves a partial write.
        "IMAGEINDEX_UPSERT_CHUNK_ROWS": "2",
        **executor_env,
    }
    c = AirflowCluster(var, executor=executor, env=env, logs=logs)
    t0 = time.monotonic()
    warm = warm_model_cache(c.env, logs)
    try:
        c.start()
        started = time.monotonic() - t0
        if warm.wait(timeout=300) != 0:
            pytest.fail(f"warming the model cache failed: see {logs / 'warm-model-cache.log'}")
        for dataset_id in registry.datasets:
            c.unpause(f"imageindex_{dataset_id}")
        summary.record(
            "cluster",
            executor=executor,
            api=c.base_url,
            started_s=round(started, 1),
            ready_s=round(time.monotonic() - t0, 1),
            logs=str(logs),
            task_logs=str(Path(c.env["AIRFLOW_HOME"]) / "logs"),
        )
        yield c
    finally:
        warm.kill()
        c.stop()


def declare_datasets(var: Path, registry: Registry) -> None:
    """One dataset per scenario, its photos generated here (nothing is committed)."""
    store_v1 = {"v1": {"source": None}}
    for dataset_id, n, extra in (
        ("params", 14, {}),
        ("kill_preprocess", 6, {}),
        ("kill_tag_embed", 6, {}),
        ("kill_upsert", 6, {}),
        ("pooled", 8, {"tasks": {"tag_embed": {"pool": "imageindex_it_embed"}}}),
        ("cron", 5, {"schedule": "*/1 * * * *"}),
        ("downstream", 3, {"schedule": {"assets": ["imageindex://datasets/cron"]}}),
        ("versions", 8, {"schedule": "@daily"}),
    ):
        src = var / "photos" / dataset_id / "v1"
        write_photos(src, n)
        versions = {k: {"source": str(src)} for k in store_v1}
        registry.add(dataset_id, versions=versions, current_version="v1", **extra)
