"""A worker dies in the middle of a stage (the pipeline's fault points, exit 137 like the OOM
killer, first try only): Airflow retries that task instance, the run succeeds, and the index
is exactly what a clean run gives — same ids, nothing missing, nothing twice."""

from __future__ import annotations

import json

import numpy as np
from airflow_cluster import run_seconds, shard_tis, timeline
from tier import TAGS, index_docs

STAGES = ("preprocess", "tag_embed", "upsert")
#: Document fields a retried run must reproduce exactly (thumbnail_uri is compared relative).
COMPARED = ("id", "key", "fingerprint", "status", "error", "width", "height", "tags_ai")


def relative_thumbnail(doc: dict) -> str | None:
    uri = doc.get("thumbnail_uri")
    return uri.split("/thumbnails/", 1)[-1] if uri else uri


def clean_index(tmp_path, monkeypatch, dataset_id: str, source: str) -> dict[str, dict]:
    """The same dataset indexed by the library in this process, with no fault, elsewhere."""
    from imageindex import pipeline

    store = tmp_path / f"clean-{dataset_id}"
    registry = tmp_path / f"clean-{dataset_id}.yaml"
    spec = {
        "datasets": [
            {
                "id": dataset_id,
                "versions": {"v1": {"source": source}},
                "store": {"type": "lancedb", "uri": str(store)},
                "tagger": {"type": "offline", "definitions": str(TAGS)},
            }
        ]
    }
    registry.write_text(json.dumps(spec), encoding="utf-8")
    monkeypatch.setenv("IMAGEINDEX_HOME", str(tmp_path / f"clean-home-{dataset_id}"))
    monkeypatch.setenv("IMAGEINDEX_REGISTRY", str(registry))
    report = pipeline.run_all(dataset_id, "v1", run_id="clean", registry_path=str(registry))
    assert report["failed"] == 0, report
    return index_docs(store, dataset_id, "v1")


def test_workers_killed_mid_stage_are_retried_and_the_index_equals_a_clean_run(
    cluster, registry, fault_file, var, tmp_path, monkeypatch, summary
):
    runs = {}
    # One dataset per stage. The fault file holds one fault at a time, so the next one is
    # written once every shard of the previous run has been killed (its try 2 has started).
    for stage in STAGES:
        dataset_id = f"kill_{stage}"
        dag = f"imageindex_{dataset_id}"
        fault = {"stage": stage, "tries": [1], "dataset": dataset_id, "version": "v1"}
        fault_file.write_text(json.dumps(fault), encoding="utf-8")
        run_id = cluster.trigger(dag, {"shard_size": 3})
        runs[stage] = (dag, run_id)

        def killed_everywhere(dag=dag, run_id=run_id, stage=stage):
            if cluster.run(dag, run_id)["state"] in ("success", "failed"):
                return True
            tis = shard_tis(cluster.task_instances(dag, run_id), stage)
            return len(tis) == 2 and all(t["try_number"] >= 2 for t in tis)

        cluster.wait(killed_everywhere, timeout=300, what=f"{stage} killed in run {run_id}")
    fault_file.unlink()

    for stage, (dag, run_id) in runs.items():
        run = cluster.wait_run(dag, run_id)
        tis = cluster.task_instances(dag, run_id)
        killed = shard_tis(tis, stage)
        first_tries = {
            t["map_index"]: [
                (x["try_number"], x["state"])
                for x in cluster.tries(dag, run_id, t["task_id"], t["map_index"])
            ]
            for t in killed
        }
        summary.record(
            f"killed_in_{stage}",
            run_id=run_id,
            state=run["state"],
            run_s=run_seconds(run),
            tries_by_shard=first_tries,
            timeline=timeline(tis),
        )
        assert run["state"] == "success", f"{stage}: {cluster.tail('scheduler')}"
        # Each shard's task of that stage died once and succeeded on try 2; nothing else retried.
        assert len(killed) == 2
        for t in killed:
            assert (t["state"], t["try_number"]) == ("success", 2), (stage, t)
            history = first_tries[t["map_index"]]
            assert history[0][0] == 1 and history[0][1] != "success", (stage, history)
        others = [t for t in tis if t not in killed and t["state"] == "success"]
        assert all(t["try_number"] == 1 for t in others), timeline(others)

        dataset_id = f"kill_{stage}"
        retried = index_docs(registry.store, dataset_id, "v1")
        source = registry.datasets[dataset_id]["versions"]["v1"]["source"]
        clean = clean_index(tmp_path, monkeypatch, dataset_id, source)
        assert len(clean) == 6
        assert set(retried) == set(clean), f"{stage}: missing or extra documents"
        for uri, doc in clean.items():
            got = retried[uri]
            assert {k: got[k] for k in COMPARED} == {k: doc[k] for k in COMPARED}, (stage, uri)
            assert relative_thumbnail(got) == relative_thumbnail(doc), (stage, uri)
            np.testing.assert_allclose(got["vector"], doc["vector"], atol=1e-5)
