"""The production store under the real scheduler: a dataset on the session's OpenSearch node
(tests/conftest.py ``opensearch_url``) indexed by a triggered run whose upsert worker dies on
its first try, then an incremental run (new, changed and deleted files): each gives the ids
and counts the library's clean LanceDB run gives."""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit

import numpy as np
from airflow_cluster import run_seconds, shard_tis, timeline
from test_kill import COMPARED, clean_index
from tier import write_photos

from imageindex.stores import open_store


def os_docs(spec: dict, dataset_id: str, version: str) -> dict[str, dict]:
    store = open_store(spec=spec)
    docs = [r for b in store.iter_documents(dataset_id, version=version) for r in b.to_pylist()]
    ids = [d["id"] for d in docs]
    assert len(ids) == len(set(ids)), "duplicate ids in the OpenSearch index"
    return {d["uri"]: d for d in docs}


def test_opensearch_dataset_killed_upsert_and_incremental_equal_lancedb(
    cluster, registry, fault_file, var, tmp_path, monkeypatch, summary, opensearch_url
):
    dataset_id = "on_opensearch"
    dag = f"imageindex_{dataset_id}"
    src = var / "photos" / dataset_id / "v1"
    write_photos(src, 6, seed0=500)
    spec = {
        "type": "opensearch",
        "uri": "opensearch://" + urlsplit(opensearch_url).netloc,
        "index_prefix": f"it-{uuid.uuid4().hex[:8]}",
    }
    registry.add(
        dataset_id, versions={"v1": {"source": str(src)}}, current_version="v1", store=spec
    )
    cluster.unpause(dag)  # waits until the dag-processor has parsed the new dataset

    # 1. A full run whose upsert dies on try 1 in both shards (after a partial bulk write).
    fault = {"stage": "upsert", "tries": [1], "dataset": dataset_id, "version": "v1"}
    fault_file.write_text(json.dumps(fault), encoding="utf-8")
    try:
        run_id = cluster.trigger(dag, {"shard_size": 3})
        run = cluster.wait_run(dag, run_id)
    finally:
        fault_file.unlink(missing_ok=True)
    tis = cluster.task_instances(dag, run_id)
    upserts = shard_tis(tis, "upsert")
    summary.record(
        "opensearch_killed_upsert",
        run_id=run_id,
        state=run["state"],
        run_s=run_seconds(run),
        upsert_tries=[t["try_number"] for t in upserts],
        timeline=timeline(tis),
    )
    assert run["state"] == "success", cluster.tail("scheduler")
    assert [(t["state"], t["try_number"]) for t in upserts] == [("success", 2)] * 2
    got = os_docs(spec, dataset_id, "v1")
    (tmp_path / "full").mkdir()
    clean = clean_index(tmp_path / "full", monkeypatch, dataset_id, str(src))
    assert set(got) == set(clean) and len(got) == 6
    for uri, doc in clean.items():
        assert {k: got[uri][k] for k in COMPARED} == {k: doc[k] for k in COMPARED}, uri
        np.testing.assert_allclose(got[uri]["vector"], doc["vector"], atol=1e-5)

    # 2. Incremental: one new, one changed (other pixels, same name), one deleted.
    write_photos(src, 2, seed0=900, prefix="new")
    changed = sorted(src.glob("p*.jpg"))[0]
    write_photos(src, 1, seed0=902, prefix="tmp")[0].replace(changed)
    deleted = sorted(src.glob("p*.jpg"))[1]
    deleted.unlink()
    run_id = cluster.trigger(dag, {"mode": "incremental", "shard_size": 3})
    run = cluster.wait_run(dag, run_id)
    report = cluster.xcom(dag, run_id, "finalize")
    summary.record(
        "opensearch_incremental", run_id=run_id, state=run["state"], run_s=run_seconds(run),
        report={k: report.get(k) for k in ("new", "changed", "deleted", "unchanged", "indexed")},
    )  # fmt: skip
    assert run["state"] == "success", cluster.tail("scheduler")
    assert (report["new"], report["changed"], report["deleted"]) == (2, 1, 1), report
    got = os_docs(spec, dataset_id, "v1")
    (tmp_path / "incremental").mkdir()
    clean = clean_index(tmp_path / "incremental", monkeypatch, dataset_id, str(src))
    assert set(got) == set(clean) and len(got) == 7
    assert deleted.name not in {d["file_name"] for d in got.values()}
    for uri, doc in clean.items():
        assert {k: got[uri][k] for k in COMPARED} == {k: doc[k] for k in COMPARED}, uri
