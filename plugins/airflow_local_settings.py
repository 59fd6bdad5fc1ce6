"""Imported by every Airflow process at start-up (the plugins folder is on its ``sys.path``).

In the processes that fork task processes — the scheduler, whose LocalExecutor workers fork one
process per task, and Celery workers, whose pool processes do the same — it imports the task
code's libraries once, so each task inherits them instead of importing them again: parsing the
DAG file and importing the stages took ~0.45 s CPU per task, ~0.05 s with this (measured with
fork on 2 cores). Imports only: ONNX Runtime sessions and Lance's runtime own threads that do not
survive a fork (Lance warns it is not fork-safe), so each task still opens its model (~0.1 s,
from the model cache) and its store.
"""

from __future__ import annotations

import importlib
import logging
import sys

__all__: list[str] = []  # Airflow copies every public name of this module into its settings

#: Libraries the stages import, heaviest first. Not lancedb: it is not fork-safe.
TASK_IMPORTS = (
    "numpy",
    "pyarrow",
    "pyarrow.compute",
    "pyarrow.parquet",
    "PIL.Image",
    "onnxruntime",
    "imageindex.pipeline",
    "imageindex.preprocess",
    "imageindex.embedders.offline",
    "imageindex.taggers.offline",
)


def _forks_tasks(argv: list[str]) -> bool:
    words = [a for a in argv[1:] if not a.startswith("-")]
    return words[:1] == ["scheduler"] or words[:2] == ["celery", "worker"]


def _import_task_libraries() -> None:
    for name in TASK_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a task that needs it reports the error itself
            logging.getLogger(__name__).warning("not pre-imported for tasks: %s (%s)", name, exc)
    # Asset URIs make the task runner load every provider's URI handlers (boto3 for s3://).
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    _ = ProvidersManagerTaskRuntime().asset_uri_handlers


if _forks_tasks(sys.argv):
    _import_task_libraries()
