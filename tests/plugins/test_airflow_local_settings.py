"""plugins/airflow_local_settings.py: Airflow loads it from the plugins folder at start-up, and
the processes that fork tasks (scheduler, Celery worker) pre-import the stages' libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHECK = """
import json, sys
sys.argv = ["airflow", *sys.argv[1:]]
import airflow  # settings.initialize() imports airflow_local_settings
names = ("numpy", "onnxruntime", "imageindex.pipeline", "imageindex.embedders.offline", "lancedb")
print(json.dumps({n: n in sys.modules for n in names}))
"""


def imported_by(tmp_path: Path, *argv: str) -> dict[str, bool]:
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        PYTHONPATH=str(REPO / "include"),
    )
    out = subprocess.run(
        [sys.executable, "-c", CHECK, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [("scheduler",), ("celery", "worker", "--queues", "models")])
def test_processes_that_fork_tasks_pre_import_the_stages(tmp_path, argv):
    seen = imported_by(tmp_path, *argv)
    assert seen["numpy"] and seen["onnxruntime"] and seen["imageindex.pipeline"]
    assert seen["imageindex.embedders.offline"]
    # Lance is not fork-safe: each task imports and opens its store itself.
    assert not seen["lancedb"]


def test_other_airflow_processes_import_nothing_more(tmp_path):
    seen = imported_by(tmp_path, "dags", "list")
    assert not any(seen.values()), seen
