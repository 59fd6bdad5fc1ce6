"""A user triggers a run with the form's params through the REST API: the shards run side by
side on the executor and the run report is readable from finalize's XCom."""

from __future__ import annotations

from airflow_cluster import max_concurrency, run_seconds, shard_tis, timeline

DAG = "imageindex_params"


def test_trigger_with_params_runs_shards_side_by_side_and_reports(cluster, var, summary):
    src = var / "photos" / "params" / "v1"
    # Two broken files: the report must count failures by reason.
    (src / "broken").mkdir()
    (src / "broken" / "empty.jpg").write_bytes(b"")
    (src / "broken" / "text.jpg").write_bytes(b"not a picture\n" * 20)
    conf = {"version": "v1", "mode": "full", "shard_size": 4}

    run_id = cluster.trigger(DAG, conf)
    run = cluster.wait_run(DAG, run_id)
    tis = cluster.task_instances(DAG, run_id)
    summary.record(
        "trigger_with_params",
        run_id=run_id,
        state=run["state"],
        run_s=run_seconds(run),
        shard_peak_concurrency=max_concurrency(shard_tis(tis)),
        timeline=timeline(tis),
    )
    assert run["state"] == "success", cluster.tail("scheduler")
    assert run["conf"] == conf

    # 16 files in shards of 4: four mapped shards, each stage once per shard, first try.
    for stage in ("preprocess", "tag_embed", "upsert"):
        stage_tis = shard_tis(tis, stage)
        assert sorted(t["map_index"] for t in stage_tis) == [0, 1, 2, 3], stage
        assert {(t["state"], t["try_number"]) for t in stage_tis} == {("success", 1)}, stage
    # The executor ran shards side by side (dag.test() would run them one after another).
    assert max_concurrency(shard_tis(tis)) >= 2, timeline(tis)

    report = cluster.xcom(DAG, run_id, "finalize")
    summary.record("trigger_with_params", report=report)
    assert report["dataset_version"] == "v1" and report["mode"] == "full"
    assert report["shards"] == 4
    assert (report["listed"], report["processed"], report["indexed_ok"]) == (16, 16, 14)
    assert report["failed"] == 2
    assert report["failed_by_reason"] == {"empty_file": 1, "not_an_image": 1}


def test_an_unknown_version_fails_at_once_without_retries(cluster, summary):
    # The form accepts any well-formed name (logical versions are registered at run time).
    run_id = cluster.trigger(DAG, {"version": "nope"})
    run = cluster.wait_run(DAG, run_id)
    plan = {t["task_id"]: t for t in cluster.task_instances(DAG, run_id)}["plan"]
    log = cluster.log_text(DAG, run_id, "plan", plan["try_number"])
    summary.record(
        "unknown_version",
        run_id=run_id,
        state=run["state"],
        run_s=run_seconds(run),
        plan=(plan["state"], plan["try_number"]),
    )
    assert run["state"] == "failed"
    # A registry error is not retried (it used to be tried 4 times with backoff).
    assert (plan["state"], plan["try_number"]) == ("failed", 1)
    assert "no version 'nope'" in log, log[-3000:]
