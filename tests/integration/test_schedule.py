"""Runs nobody triggers: a cron dataset gets runs from the scheduler on its own, a run that
finds nothing new maps no shard and announces nothing, and a dataset scheduled on the first
one's asset runs when that asset is updated — by the upstream DAG or by a REST asset event."""

from __future__ import annotations

from airflow_cluster import FINISHED, run_seconds, shard_tis, timeline

CRON = "imageindex_cron"
DOWNSTREAM = "imageindex_downstream"
CRON_ASSET = "imageindex://datasets/cron"


def describe(cluster, dag: str, run: dict) -> dict:
    """A finished run's facts: its shard count, the plan's state, its report if any."""
    tis = cluster.task_instances(dag, run["dag_run_id"])
    by_task = {t["task_id"]: t for t in tis if t["map_index"] < 0}
    finalize = by_task.get("finalize", {})
    report = None
    if finalize.get("state") == "success":
        report = cluster.xcom(dag, run["dag_run_id"], "finalize")
    return {
        "run_id": run["dag_run_id"],
        "run_type": run["run_type"],
        "state": run["state"],
        "run_s": run_seconds(run),
        "plan": by_task.get("plan", {}).get("state"),
        "shards": len(shard_tis(tis)) // 3,
        "new": (report or {}).get("new"),
        "processed": (report or {}).get("processed"),
        "events": len(cluster.asset_events(source_dag_id=dag, source_run_id=run["dag_run_id"])),
        "timeline": timeline(tis),
    }


def scheduled_runs(cluster) -> list[dict]:
    """The cron dataset's finished scheduled runs, described, oldest first."""
    runs = cluster.runs(CRON, run_type="scheduled")
    return [describe(cluster, CRON, r) for r in runs if r["state"] in FINISHED]


def test_the_downstream_dag_is_scheduled_on_the_asset_the_upstream_emits(cluster):
    # One asset, one name: a second name for the uri left the upstream's outlet inactive.
    asset = cluster.asset(CRON_ASSET)
    assert asset["name"] == "imageindex_cron"
    assert {t["dag_id"] for t in asset["producing_tasks"]} == {CRON}
    assert {d["dag_id"] for d in asset["scheduled_dags"]} == {DOWNSTREAM}


def test_cron_dataset_runs_on_its_own_and_a_no_change_run_maps_no_shard(cluster, summary):
    # The DAG was unpaused at session start; nobody triggers it.
    assert cluster.runs(CRON, run_type="manual") == []

    def indexed_then_unchanged():
        runs = scheduled_runs(cluster)
        indexing = [r for r in runs if r["plan"] == "success" and r["shards"] > 0]
        later = [
            r
            for r in runs
            if indexing and r["run_id"] > indexing[0]["run_id"] and r["plan"] == "success"
        ]
        return (runs, indexing[0], later[0]) if indexing and later else None

    runs, indexing, unchanged = cluster.wait(
        indexed_then_unchanged, timeout=300, every=5, what="a cron run, then a no-change one"
    )
    summary.record("cron_schedule", runs=[{k: r[k] for k in r if k != "timeline"} for r in runs])
    summary.record("cron_schedule", indexing=indexing, no_change=unchanged)
    assert all(r["state"] == "success" for r in runs), runs
    assert (indexing["new"], indexing["processed"]) == (5, 5)
    assert indexing["events"] >= 1, "the indexing run announces the dataset's asset"
    # Nothing new: no shard is mapped, nothing processed, no asset event for downstream DAGs.
    assert unchanged["shards"] == 0, unchanged["timeline"]
    assert (unchanged["new"], unchanged["processed"]) == (0, 0)
    assert unchanged["events"] == 0, "a no-change run must not announce the asset"


def test_the_upstream_asset_triggers_the_downstream_dataset(cluster, summary):
    # The cron dataset's indexing run (previous test) updated its asset once.
    announcing = {e["source_run_id"] for e in cluster.asset_events(source_dag_id=CRON)}
    assert announcing, "the cron dataset never announced its asset"

    def triggered(n):
        runs = cluster.runs(DOWNSTREAM, run_type="asset_triggered")
        done = [r for r in runs if r["state"] in FINISHED]
        return done if len(done) >= n else None

    by_dag = cluster.wait(lambda: triggered(1), timeout=180, what="an asset-triggered run")
    first = by_dag[0]
    consumed = cluster.api(
        "GET", f"/api/v2/dags/{DOWNSTREAM}/dagRuns/{first['dag_run_id']}/upstreamAssetEvents"
    )["asset_events"]
    assert {e["source_run_id"] for e in consumed} <= announcing
    assert {e["uri"] for e in consumed} == {CRON_ASSET}

    # A user (or a system outside Airflow) announces the same asset through the REST API.
    event = cluster.post_asset_event(CRON_ASSET, {"note": "integration tier"})
    runs = cluster.wait(
        lambda: triggered(len(by_dag) + 1), timeout=180, what="a REST-triggered run"
    )
    by_rest = runs[-1]
    summary.record(
        "asset_triggered",
        upstream_runs=sorted(announcing),
        by_upstream_dag=[describe(cluster, DOWNSTREAM, r) for r in by_dag],
        rest_event_id=event["id"],
        by_rest_event=describe(cluster, DOWNSTREAM, by_rest),
    )
    assert all(r["state"] == "success" for r in runs), runs
    # One downstream run per upstream change: the cron dataset's no-change runs add none.
    assert len(by_dag) == len(announcing)
