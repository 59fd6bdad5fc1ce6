"""Fault injection for the kill tests and the integration tier (off unless set): every stage has
a fault point where the process dies like an OOM-killed worker (exit 137, no clean-up).

* ``IMAGEINDEX_FAULT_EXIT_IN=<stage>[@<tries>]``: ``tag_embed`` dies on every try,
  ``tag_embed@1`` on try 1 only (Airflow's retry then succeeds), ``tag_embed@1,2`` on tries 1
  and 2. Stages: plan, preprocess, tag_embed, upsert, finalize. The try number is
  ``IMAGEINDEX_TRY_NUMBER`` (the DAG exports the task instance's at the start of every stage
  task), else ``AIRFLOW_CTX_TRY_NUMBER``, else 1.
* ``IMAGEINDEX_FAULT_FILE=<path>``: while that file exists it is read at every fault point, so
  a running scheduler gets a different fault per scenario without a restart; JSON like
  ``{"stage": "tag_embed", "tries": [1], "dataset": "x", "version": "v1", "run_id": "…"}``
  (only ``stage`` is required; each other key narrows where it fires).
* ``IMAGEINDEX_FAULT_EXIT_AFTER_UPSERT_CHUNKS=<n>``: upsert dies after writing ``n`` chunks.
"""

from __future__ import annotations

import json
import logging
import os
import time

from imageindex.errors import ConfigError
from imageindex.specs import STAGES

log = logging.getLogger(__name__)

#: Stages that have a fault point (see :func:`fault_point`): every stage.
FAULT_STAGES = STAGES


def current_try_number() -> int:
    """The Airflow try number of the running task: ``IMAGEINDEX_TRY_NUMBER`` (exported by the
    DAG at the start of each task), else ``AIRFLOW_CTX_TRY_NUMBER`` (Airflow's task runner),
    else 1 (a run outside Airflow)."""
    for name in ("IMAGEINDEX_TRY_NUMBER", "AIRFLOW_CTX_TRY_NUMBER"):
        raw = os.environ.get(name)
        if raw and raw.strip().isdigit():
            return int(raw)
    return 1


def parse_fault_spec(spec: str) -> tuple[str, frozenset[int] | None]:
    """``"<stage>[@<tries>]"`` → (stage, tries or None for every try); ``tag_embed@1,2``."""
    stage, _, tries = spec.strip().partition("@")
    if stage not in FAULT_STAGES:
        raise ConfigError(
            f"IMAGEINDEX_FAULT_EXIT_IN={spec!r}: stage {stage!r} is not one of {FAULT_STAGES}"
        )
    if not tries:
        return stage, None
    try:
        numbers = frozenset(int(t) for t in tries.split(","))
    except ValueError:
        raise ConfigError(
            f"IMAGEINDEX_FAULT_EXIT_IN={spec!r}: tries must be numbers like tag_embed@1,2"
        ) from None
    return stage, numbers


def _fault_file_spec(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"IMAGEINDEX_FAULT_FILE={path}: not readable JSON: {exc}") from None
    if not isinstance(spec, dict) or spec.get("stage") not in FAULT_STAGES:
        raise ConfigError(
            f'IMAGEINDEX_FAULT_FILE={path}: needs {{"stage": one of {list(FAULT_STAGES)}}}'
        )
    hang = spec.get("hang_s", 0)
    if isinstance(hang, bool) or not isinstance(hang, int | float) or hang < 0:
        raise ConfigError(
            f"IMAGEINDEX_FAULT_FILE={path}: hang_s must be seconds >= 0, not {hang!r}"
        )
    return spec


def fault_point(
    stage: str, dataset: str | None = None, version: str | None = None, run_id: str | None = None
) -> None:
    """Fault injection for the kill tests: die like an OOM-killed worker (exit 137, no cleanup)
    in the middle of ``stage`` (one of :data:`FAULT_STAGES`).

    Two ways to ask for it:

    * ``IMAGEINDEX_FAULT_EXIT_IN=<stage>[@<tries>]`` — ``tag_embed`` kills every try,
      ``tag_embed@1`` only the first one (so Airflow's retry succeeds), ``tag_embed@1,2`` the
      first two. The try number is :func:`current_try_number`.
    * ``IMAGEINDEX_FAULT_FILE=<path>`` — when that file exists, it is read at every fault point
      (a long-running scheduler picks up a different fault per scenario without a restart):
      ``{"stage": "tag_embed", "tries": [1], "dataset": "x", "version": "v1", "run_id": "…"}``;
      only ``stage`` is required, each other key narrows where the fault fires. With
      ``"hang_s": N`` the task sleeps N seconds there instead of exiting, so a test can kill the
      worker that runs it while it is provably in the middle of the stage.
    """
    wanted: list[tuple[str, frozenset[int] | None, float]] = []
    if os.environ.get("IMAGEINDEX_FAULT_EXIT_IN"):
        wanted.append((*parse_fault_spec(os.environ["IMAGEINDEX_FAULT_EXIT_IN"]), 0.0))
    path = os.environ.get("IMAGEINDEX_FAULT_FILE")
    spec = _fault_file_spec(path) if path else None
    if spec is not None and all(
        spec.get(key) in (None, value)
        for key, value in (("dataset", dataset), ("version", version), ("run_id", run_id))
    ):
        tries = spec.get("tries")
        tries = frozenset(int(t) for t in tries) if tries else None
        wanted.append((spec["stage"], tries, float(spec.get("hang_s") or 0)))
    try_number = current_try_number()
    for want_stage, tries, hang_s in wanted:
        if want_stage == stage and (tries is None or try_number in tries):
            if hang_s:
                log.error("fault injection: hanging %gs in %s (try %d)", hang_s, stage, try_number)
                time.sleep(hang_s)
                return
            log.error("fault injection: exiting in the middle of %s (try %d)", stage, try_number)
            logging.shutdown()
            os._exit(137)


def int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def exit_after_upsert_chunks(n_chunk: int) -> None:
    """``IMAGEINDEX_FAULT_EXIT_AFTER_UPSERT_CHUNKS``: die like an OOM-killed worker, mid-shard,
    once upsert has written that many chunks."""
    fail_after = int_env("IMAGEINDEX_FAULT_EXIT_AFTER_UPSERT_CHUNKS", 0)
    if fail_after and n_chunk >= fail_after:
        log.error("fault injection: exiting after %d upsert chunk(s)", n_chunk)
        os._exit(137)
