"""The finalize stage: delete the documents of removed files (guarded against a source that
vanished), optimize the store, rewrite the feature table when the run changed the version, and
write the run report. It gives the version's lease back whatever happens."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

from imageindex.config import settings
from imageindex.errors import UnsafeDeleteError
from imageindex.layout import RunFolder
from imageindex.pipeline.context import RunContext, StageClock, open_dataset
from imageindex.pipeline.faults import fault_point
from imageindex.pipeline.lease import hold_lease, release_lease
from imageindex.pipeline.report import build_report
from imageindex.stores.schema import STATUS_OK

log = logging.getLogger(__name__)


def finalize(
    dataset_id: str,
    version: str,
    plan_result: dict,
    shard_results: list[dict] | None = None,
    *,
    registry_path: str | None = None,
    stage_seconds: dict | None = None,
    clock: StageClock | None = None,
) -> dict:
    """Delete documents of removed files (guarded), optimize the store, write the run report.

    ``clock`` (optional) collects seconds per part (``store_delete``, ``store_optimize``,
    ``feature_table``, ``store_count``, ``open_store``) for benchmarks."""
    try:
        hold_lease(dataset_id, version, plan_result.get("run_id"), registry_path=registry_path)
        ctx = open_dataset(dataset_id, version, registry_path=registry_path, clock=clock)
        ctx.run = RunFolder(plan_result["run_dir"])
        return _finalize(ctx, plan_result, shard_results, stage_seconds)
    finally:
        if plan_result.get("run_id"):  # the run is over: the next one of this version may start
            release_lease(dataset_id, version, plan_result["run_id"], registry_path=registry_path)


def delete_refusal(ctx: RunContext, counts: dict, n_deletes: int) -> str | None:
    """Why the run must not delete ``n_deletes`` documents (the source listed nothing, or more
    than ``IMAGEINDEX_MAX_DELETE_FRACTION`` of the indexed files vanished), or None."""
    indexed_before = counts["unchanged"] + counts["changed"] + counts["deleted"]
    fraction = settings().max_delete_fraction
    dataset, version = ctx.dataset, ctx.version
    if counts["listed"] == 0:
        return (
            f"the source of {dataset.id}/{version} listed no images; refusing to delete "
            f"{n_deletes} document(s). Check that {dataset.version(version).source} is "
            "mounted/reachable and holds images."
        )
    if indexed_before and n_deletes / indexed_before > fraction:
        return (
            f"{n_deletes} of {indexed_before} indexed files of {dataset.id}/{version} "
            f"disappeared from the source, more than IMAGEINDEX_MAX_DELETE_FRACTION="
            f"{fraction}; nothing was deleted. If this is intended, raise the "
            "setting for one run."
        )
    return None


def _finalize(ctx: RunContext, plan_result: dict, shard_results, stage_seconds) -> dict:
    from imageindex.features import write_feature_table
    from imageindex.stores.base import Filter

    t0 = time.perf_counter()
    dataset, version, staging, clock = ctx.dataset, ctx.version, ctx.staging, ctx.clock
    store = ctx.store()
    deletes = staging.read_parquet(ctx.run.deletes)
    report = build_report(dataset.id, version, plan_result, shard_results, stage_seconds, staging)
    refusal = delete_refusal(ctx, plan_result["counts"], deletes.num_rows)
    if refusal is None and deletes.num_rows:
        with clock.part("store_delete"):
            report["deleted"] = store.delete(dataset.id, deletes.column("id").to_pylist())
    fault_point("finalize", dataset.id, version, plan_result.get("run_id"))  # no report yet
    with clock.part("store_optimize"):
        exists = store.table_info(dataset.id) is not None
        report["optimize"] = store.optimize(dataset.id) if exists else {}
    with clock.part("feature_table"):
        report["feature_table"] = write_feature_table(
            dataset, version, store, changed=bool(report["processed"] or report["deleted"])
        )
    with clock.part("store_count"):
        report["indexed"] = store.count(dataset.id, Filter(versions=[version], status=None))
        report["indexed_ok"] = store.count(dataset.id, Filter(versions=[version], status=STATUS_OK))
    report["seconds"]["finalize"] = round(time.perf_counter() - t0, 3)
    report["finished_at"] = datetime.now(UTC).isoformat()
    report["refused_delete"] = refusal
    staging.write_json(ctx.run.report, report)
    log.info("run report %s", json.dumps({k: v for k, v in report.items() if k != "failures"}))
    if refusal:
        raise UnsafeDeleteError(refusal)
    return report
