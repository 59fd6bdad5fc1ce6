"""A whole run in this process, without Airflow (CLI, tests, notebooks): the stages wired the way
the index DAG wires them, shard after shard."""

from __future__ import annotations

from datetime import UTC, datetime

from imageindex.pipeline.lease import release_lease
from imageindex.pipeline.report import shard_summary
from imageindex.pipeline.stages.finalize import finalize
from imageindex.pipeline.stages.plan import plan
from imageindex.pipeline.stages.preprocess import preprocess
from imageindex.pipeline.stages.tag_embed import tag_embed
from imageindex.pipeline.stages.upsert import upsert


def run_all(
    dataset_id: str,
    version: str | None = None,
    *,
    mode: str = "incremental",
    run_id: str | None = None,
    shard_size: int | None = None,
    registry_path: str | None = None,
) -> dict:
    """Run every stage in this process, shard after shard, the way the DAG wires them."""
    run_id = run_id or "manual__" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    p = plan(
        dataset_id, version, run_id, mode=mode, shard_size=shard_size, registry_path=registry_path
    )
    try:
        results = []
        for shard in p["shards"]:
            results.append(
                run_shard(dataset_id, p["dataset_version"], shard, registry_path, run_id=run_id)
            )
        return finalize(dataset_id, p["dataset_version"], p, results, registry_path=registry_path)
    finally:
        release_lease(dataset_id, p["dataset_version"], run_id, registry_path=registry_path)


def run_shard(
    dataset_id: str,
    version: str,
    manifest_uri: str,
    registry_path=None,
    *,
    run_id: str | None = None,
) -> dict:
    """One shard's three stages in a row; with ``run_id``, each checks the run's lease."""
    kw = {"registry_path": registry_path, "run_id": run_id}
    a = preprocess(dataset_id, version, manifest_uri, **kw)
    b = tag_embed(dataset_id, version, a["preprocessed"], **kw)
    c = upsert(dataset_id, version, b["features"], a["preprocessed"], **kw)
    return shard_summary(a, b, c)
