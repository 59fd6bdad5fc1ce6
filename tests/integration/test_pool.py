"""A pool is the concurrency limit for a paid or scarce model: the registry puts ``tag_embed``
in it (``tasks: {tag_embed: {pool: …}}``), the user creates it with one slot through the REST
API, and no two ``tag_embed`` instances ever run at once while the other stages still do."""

from __future__ import annotations

from airflow_cluster import max_concurrency, run_seconds, shard_tis, timeline

DAG = "imageindex_pooled"
POOL = "imageindex_it_embed"


def test_a_pool_of_one_slot_runs_tag_embed_one_at_a_time(cluster, summary):
    pool = cluster.create_pool(POOL, 1)
    assert pool["slots"] == 1

    run_id = cluster.trigger(DAG, {"shard_size": 2})
    run = cluster.wait_run(DAG, run_id)
    tis = cluster.task_instances(DAG, run_id)
    embeds = shard_tis(tis, "tag_embed")
    preprocess = shard_tis(tis, "preprocess")
    summary.record(
        "pool_of_one",
        run_id=run_id,
        state=run["state"],
        run_s=run_seconds(run),
        tag_embed_peak=max_concurrency(embeds),
        preprocess_peak=max_concurrency(preprocess),
        timeline=timeline(tis),
    )
    assert run["state"] == "success"
    assert len(embeds) == 4 and {t["pool"] for t in embeds} == {POOL}
    assert {t["state"] for t in embeds} == {"success"}
    # Never two tag_embed at once, although the executor had room: the unpooled preprocess
    # tasks of the same shards ran side by side.
    assert max_concurrency(embeds) == 1, timeline(embeds)
    assert max_concurrency(preprocess) >= 2, timeline(preprocess)
    assert {t["pool"] for t in preprocess} == {"default_pool"}
