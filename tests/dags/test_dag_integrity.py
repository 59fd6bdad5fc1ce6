"""Every file in dags/ imports cleanly, fast, without touching sources, stores or models."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    heavy = sorted(
        m for m in ("torch", "onnxruntime", "lancedb", "sentence_transformers", "transformers")
        if m in sys.modules
    )
    print(json.dumps({
        "errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
        "seconds": time.perf_counter() - t0,
        "heavy_modules": heavy,
        "dags": {
            d.dag_id: {
                "tags": sorted(d.tags),
                "retries": [t.retries for t in d.tasks],
                "pools": {t.task_id: t.pool for t in d.tasks},
                "queues": {t.task_id: t.queue for t in d.tasks},
                "tasks": sorted(t.task_id for t in d.tasks),
                "schedule": str(getattr(d.timetable, "_expression", d.timetable)),
                "schedule_assets": {
                    "condition": type(d.timetable.asset_condition).__name__,
                    "uris": sorted(a.uri for a in d.timetable.asset_condition.objects),
                } if getattr(d.timetable, "asset_condition", None) is not None else None,
                "params": sorted(d.params.keys()),
                "doc": bool(d.doc_md),
                "max_active_runs": d.max_active_runs,
                "timeouts": {
                    t.task_id: t.execution_timeout.total_seconds()
                    if t.execution_timeout else None for t in d.tasks
                },
                "teardowns": sorted(t.task_id for t in d.tasks if t.is_teardown),
                "setups": sorted(t.task_id for t in d.tasks if t.is_setup),
                "version_param": d.params.get_param("version").schema
                if "version" in d.params else None,
            }
            for d in bag.dags.values()
        },
    }))
    """
)


def parse_dags(tmp_path: Path, registry: str) -> dict:
    reg = tmp_path / "registry.yaml"
    reg.write_text(registry, encoding="utf-8")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
        "IMAGEINDEX_HOME": str(tmp_path / "home"),
        "IMAGEINDEX_REGISTRY": str(reg),
        # Any attempt to reach S3 at parse time would hang or fail on this closed endpoint.
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AIRFLOW_CONN_AWS_DEFAULT": '{"conn_type": "aws"}',
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO / "dags")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


REGISTRY = """
datasets:
  - id: local_photos
    versions: {v1: /nonexistent/folder}
    schedule: "@daily"
  - id: bucket_photos
    versions: {v1: "s3://no-such-bucket/prefix/", v2: "s3://no-such-bucket/v2/"}
    tags: [team-vision]
    tasks:
      tag_embed: {pool: dashscope, queue: gpu}
"""


def test_every_dag_imports_without_io(tmp_path):
    result = parse_dags(tmp_path, REGISTRY)
    assert result["errors"] == {}
    assert set(result["dags"]) == {
        "imageindex_local_photos",
        "imageindex_bucket_photos",
        "imageindex_eval",
    }
    # Parsing must not load models or open stores (the folders and buckets do not even exist).
    assert result["heavy_modules"] == []
    # Parsing a DAG file is done by the dag-processor every 30 s: keep it cheap.
    assert result["seconds"] < 20


def test_dags_have_tags_retries_params_and_docs(tmp_path):
    dags = parse_dags(tmp_path, REGISTRY)["dags"]
    local = dags["imageindex_local_photos"]
    bucket = dags["imageindex_bucket_photos"]
    assert "imageindex" in local["tags"] and "dataset:local_photos" in local["tags"]
    assert "team-vision" in bucket["tags"]
    for d in (local, bucket):
        assert all(r >= 1 for r in d["retries"])
        assert d["tasks"] == [
            "finalize",
            "plan",
            "publish",
            "release_lease",
            "shard.preprocess",
            "shard.tag_embed",
            "shard.upsert",
        ]
        assert d["params"] == ["mode", "shard_size", "version"]
        assert d["doc"]
        # versions of one dataset index side by side; plan's lease is given back by a teardown
        assert d["max_active_runs"] > 1
        # a hung store or endpoint fails a task instead of holding a worker forever
        assert all(v and v > 0 for k, v in d["timeouts"].items() if k != "release_lease"), d
        assert d["setups"] == ["plan"] and d["teardowns"] == ["release_lease"]
        # free text (logical versions are registered at run time), suggested from the registry
        assert "enum" not in d["version_param"] and d["version_param"]["type"] == "string"
    assert bucket["version_param"]["examples"] == ["v1", "v2"]
    assert "0 0 * * *" in local["schedule"]
    assert bucket["pools"]["shard.tag_embed"] == "dashscope"
    assert bucket["queues"]["shard.tag_embed"] == "gpu"
    assert bucket["pools"]["shard.preprocess"] == "default_pool"


def test_broken_registry_is_an_import_error_naming_the_field(tmp_path):
    result = parse_dags(tmp_path, "datasets:\n  - id: x\n    versions: {v1: 'ftp://nope'}\n")
    assert len(result["errors"]) == 1
    assert "versions.v1.source" in next(iter(result["errors"].values()))


def test_a_dataset_can_be_scheduled_on_upstream_assets(tmp_path):
    registry = (
        "datasets:\n  - id: fed\n    versions: {v1: /nonexistent}\n"
        "    schedule: {assets: ['s3://upstream/photos', 'imageindex://features/other']}\n"
    )
    result = parse_dags(tmp_path, registry)
    assert result["errors"] == {}
    # Triggered when both upstream assets have been updated (a list means all of them).
    assert result["dags"]["imageindex_fed"]["schedule_assets"] == {
        "condition": "AssetAll",
        "uris": ["imageindex://features/other", "s3://upstream/photos"],
    }
