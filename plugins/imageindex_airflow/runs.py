"""Runs of a dataset version's index DAG as the View Data page shows them: files done per stage
while a run is in flight, its report afterwards.

Everything is read from the staging location the pipeline writes, at the paths
:mod:`imageindex.layout` gives (the library's one owner of them), so it works the same under any
executor:

- ``runs/<dataset>/<version>/<run>/plan.json``: the run id, when it started, and the shard
  manifests; shard ``i`` holds files ``i * shard_size`` to ``(i + 1) * shard_size`` of the
  ``to_process`` files.
- ``shards/<n>/preprocessed.parquet``, ``features.parquet``, ``upserted.json``: each written
  once, when the shard's preprocess, tag_embed or upsert is done. A stage's files done are the
  files of the shards whose output is there (whole shards: a stage writes nothing until then).
- ``report.json``: written by finalize, the run has finished.
- ``leases/<dataset>/<version>.json``: the run that holds the version (plan takes it, finalize
  or the DAG's teardown gives it back). A run without a report that does not hold the lease
  any more has stopped: it failed, or was killed.

The plugin's one reader of run folders: the runs and datasets routers ask it, never staging.
Like them, it imports the library only in functions.
"""

from __future__ import annotations

import re
import time


def _layout(staging):
    from imageindex.layout import StagingLayout

    return StagingLayout(staging.root)


def _stage_outputs() -> tuple[tuple[str, str], ...]:
    """Shard stages in DAG order, each with the file it leaves in the shard's folder when done."""
    from imageindex.layout import SHARD_OUTPUTS

    return SHARD_OUTPUTS


#: What the page shows of a finished run's report.
REPORT_KEYS = (
    "listed",
    "new",
    "changed",
    "unchanged",
    "retag",
    "reused",
    "processed",
    "deleted",
    "to_delete",
    "failed",
    "failed_by_reason",
    "indexed",
    "indexed_ok",
    "refused_delete",
    "seconds",
)


def _run_order(name: str) -> tuple[str, str]:
    """Airflow run ids are "<type>__<timestamp>", written 2026-12-05T10:00:00+00:00 (made
    safe: 2026-12-05T10_00_00_00_00) or 20261205T100000 (run_all): the first 14 digits of
    the timestamp, YYYYMMDDhhmmss, order them whichever way it is written."""
    digits = re.sub(r"\D", "", name.split("__")[-1])
    return digits[:14], name


def _lease_holder(staging, dataset_id: str, version: str, now: float) -> str | None:
    """The staging folder name of the run holding the version's lease, if one does."""
    from imageindex.layout import safe_run_name

    try:
        lease = staging.read_json(_layout(staging).lease(dataset_id, version))
    except FileNotFoundError:
        return None
    if not lease.get("run_id") or lease.get("expires_at", 0) <= now:
        return None
    return safe_run_name(lease["run_id"])


def _relative_files(staging, folder: str) -> set[str]:
    """Paths of the files under ``folder``, relative to it (one listing)."""
    start = len(folder.rstrip("/")) + 1
    return {uri[start:] for uri in staging.list(folder)}


def _files_by_run(staging, root: str) -> dict[str, set[str]]:
    """``{run folder: paths of its files relative to it}`` from one listing of ``root``."""
    by_run: dict[str, set[str]] = {}
    for path in _relative_files(staging, root):
        name, _, rest = path.partition("/")
        if rest:
            by_run.setdefault(name, set()).add(rest)
    return by_run


def _shard_files(plan: dict) -> list[int]:
    """Files in each shard, in plan order (the manifests are consecutive slices of the todo)."""
    total = int(plan["counts"].get("to_process", 0))
    size = int(plan.get("shard_size") or 0)
    return [max(0, min(size, total - i * size)) for i in range(len(plan["shards"]))]


def _stages(plan: dict | None, files: set[str]) -> list[dict]:
    if plan is None:
        return [
            {"stage": stage, "done": 0, "total": 0, "shards_done": 0, "shards": 0}
            for stage, _ in _stage_outputs()
        ]
    sizes = _shard_files(plan)
    from imageindex.layout import ShardFolder

    # "<run_dir>/shards/00000/manifest.parquet" -> "shards/00000"
    folders = [ShardFolder.of(uri).relative for uri in plan["shards"]]
    out = []
    for stage, output in _stage_outputs():
        done = [f"{folder}/{output}" in files for folder in folders]
        out.append(
            {
                "stage": stage,
                "done": sum(n for n, d in zip(sizes, done, strict=True) if d),
                "total": sum(sizes),
                "shards_done": sum(done),
                "shards": len(folders),
            }
        )
    return out


def _failed_filter(version: str, plan: dict | None, report: dict) -> dict | None:
    """The gallery filter that shows the run's failed files: documents this run stored as
    failed (files that could not be read are not stored; the next run tries them again)."""
    if not report.get("failed"):
        return None
    dsl = "status=failed"
    started, finished = (plan or {}).get("started_at"), report.get("finished_at")
    if started and finished:
        dsl += f" AND indexed_at >= {started} AND indexed_at <= {finished}"
    return {"version": version, "dsl": dsl}


def describe(staging, folder, files: set[str], version: str, holder: str | None) -> dict:
    """One run (its :class:`~imageindex.layout.RunFolder`): its state, files done per stage,
    and its report once finished."""
    from imageindex.layout import PLAN_FILE, REPORT_FILE

    name = folder.name
    plan = staging.read_json(folder.plan) if PLAN_FILE in files else None
    report = staging.read_json(folder.report) if REPORT_FILE in files else None
    if report is not None:
        state = "finished"
    elif holder == name:
        state = "running" if plan is not None else "planning"
    else:
        state = "stopped"
    return {
        "run": name,
        "run_id": (plan or {}).get("run_id"),
        "version": version,
        "state": state,
        "mode": (plan or {}).get("mode"),
        "started_at": (plan or {}).get("started_at"),
        "finished_at": (report or {}).get("finished_at"),
        "files": (plan or {}).get("counts", {}).get("to_process"),
        "shards": len(plan["shards"]) if plan else None,
        "stages": _stages(plan, files),
        "report": {k: report.get(k) for k in REPORT_KEYS} if report else None,
        "failed_filter": _failed_filter(version, plan, report) if report else None,
    }


def list_runs(staging, dataset_id: str, version: str, *, limit: int) -> list[dict]:
    """The version's runs, the one in flight first, then newest first (one listing)."""
    layout = _layout(staging)
    by_run = _files_by_run(staging, layout.runs(dataset_id, version))
    holder = _lease_holder(staging, dataset_id, version, time.time())
    names = sorted(by_run, key=_run_order, reverse=True)
    if holder in by_run:
        names = [holder, *(n for n in names if n != holder)]
    return [
        describe(staging, layout.run_named(dataset_id, version, n), by_run[n], version, holder)
        for n in names[:limit]
    ]


def get_run(staging, dataset_id: str, version: str, name: str) -> dict | None:
    """One run by its staging folder name; None when there is no such folder."""
    folder = _layout(staging).run_named(dataset_id, version, name)
    files = _relative_files(staging, folder.uri)
    if not files:
        return None
    holder = _lease_holder(staging, dataset_id, version, time.time())
    return describe(staging, folder, files, version, holder)


def last_report(staging, dataset_id: str, version: str, *, read: int = 10) -> dict | None:
    """The version's newest run report, its run folder under ``"run"``; None without one.

    One listing; of the ``read`` newest runs by run id that have a report, the one that
    finished last wins (run ids can be written in several ways, finish times cannot).
    """
    from imageindex.layout import REPORT_FILE

    layout = _layout(staging)
    by_run = _files_by_run(staging, layout.runs(dataset_id, version))
    names = [n for n, files in by_run.items() if REPORT_FILE in files]
    best = None
    for name in sorted(names, key=_run_order, reverse=True)[:read]:
        report = staging.read_json(layout.run_named(dataset_id, version, name).report)
        if best is None or str(report.get("finished_at")) > str(best.get("finished_at")):
            best = {**report, "run": name}
    return best
