"""``dag.test()`` end to end on a real (throwaway) Airflow: SQLite metadata DB, real models,
LanceDB, and SeaweedFS for the S3 variant."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from airflow_local import airflow_env, run_dag  # noqa: E402

pytestmark = pytest.mark.slow


def cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imageindex.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def samples_env(tmp_path_factory):
    """The demo's set-up: sample photos from wheels, the repo's DAG, a fresh Airflow DB."""
    var = tmp_path_factory.mktemp("var")
    reg = var / "registry.yaml"
    reg.write_text(
        (REPO / "config" / "registry.yaml")
        .read_text()
        .replace("../var/", f"{var}/")
        .replace("tags/samples.json", str(REPO / "config/tags/samples.json")),
        encoding="utf-8",
    )
    env = airflow_env(var, IMAGEINDEX_REGISTRY=str(reg), IMAGEINDEX_RETRY_DELAY_S="1")
    assert cli(env, "samples", str(var / "samples")).returncode == 0
    state, seconds, output = run_dag(env, "samples", {"shard_size": 40})
    assert state == "success", output[-5000:]
    return env, var


def test_dag_indexes_the_sample_photos(samples_env):
    env, var = samples_env
    reports = list((var / "staging" / "runs" / "samples" / "v1").glob("*/report.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    n_files = sum(1 for p in (var / "samples").rglob("*") if p.is_file())
    assert report["listed"] == n_files == report["new"]
    assert report["shards"] == -(-n_files // 40)
    assert report["failed"] == 0
    assert report["indexed_ok"] == n_files
    assert set(report["seconds"]) >= {"plan", "preprocess", "tag_embed", "upsert", "finalize"}


def test_search_cli_finds_the_cat_first(samples_env):
    env, _ = samples_env
    out = cli(env, "search", "--dataset", "samples", "--text", "a cat", "--top-k", "5", "--json")
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    assert hits[0]["file_name"] == "chelsea.png"
    assert set(hits[0]) >= {"uri", "file_name", "score", "tags", "width", "height"}
    assert (hits[0]["width"], hits[0]["height"]) == (451, 300)
    assert hits == sorted(hits, key=lambda h: -h["score"])

    out = cli(env, "search", "--dataset", "samples", "--text", "a cup of coffee", "--json")
    assert json.loads(out.stdout)[0]["file_name"] == "coffee.png"


def test_search_by_image_and_tags(samples_env):
    env, var = samples_env
    chelsea = next((var / "samples").rglob("chelsea.png"))
    out = cli(env, "search", "--dataset", "samples", "--image", str(chelsea), "--json")
    hits = json.loads(out.stdout)
    assert hits[0]["file_name"] == "chelsea.png" and hits[0]["score"] > 0.99

    out = cli(
        env,
        "search",
        "--dataset",
        "samples",
        "--text",
        "a room",
        "--tags-any",
        "Interior",
        "--top-k",
        "50",
        "--json",
    )
    hits = json.loads(out.stdout)
    assert hits and all("Interior" in h["tags"]["ai"] for h in hits)
    out = cli(
        env,
        "search",
        "--dataset",
        "samples",
        "--text",
        "a room",
        "--tags-exclude",
        "Interior",
        "--top-k",
        "200",
        "--json",
    )
    assert all("Interior" not in h["tags"]["ai"] for h in json.loads(out.stdout))


def test_second_run_processes_nothing(samples_env):
    env, var = samples_env
    state, _, output = run_dag(env, "samples", {"mode": "incremental"})
    assert state == "success", output[-3000:]
    reports = sorted(
        (var / "staging" / "runs" / "samples" / "v1").glob("*/report.json"),
        key=lambda p: p.stat().st_mtime,
    )
    last = json.loads(reports[-1].read_text())
    assert last["processed"] == 0 and last["shards"] == 0 and last["deleted"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "--dataset", "nope", "--text", "x"], "no dataset 'nope'"),
        (["search", "--dataset", "samples", "--version", "v9", "--text", "x"], "no version"),
        (["search", "--dataset", "samples", "--text", "x", "--top-k", "0"], "--top-k"),
        (["search", "--dataset", "samples", "--image", "/no/such.png"], "no such file"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(samples_env, args, message):
    env, _ = samples_env
    out = cli(env, *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


DSL = "(tags:Animal OR tags:Interior) AND NOT tags.user:rejected AND width >= 256"


def test_dsl_search_with_and_without_text(samples_env):
    env, _ = samples_env
    out = cli(env, "search", "--dataset", "samples", "--dsl", DSL, "--top-k", "200", "--json")
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    assert hits and all(h["width"] >= 256 for h in hits)
    assert all({"Animal", "Interior"} & set(h["tags"]["ai"]) for h in hits)
    assert [h["uri"] for h in hits] == sorted(h["uri"] for h in hits)  # filter-only: by uri

    out = cli(env, "search", "--dataset", "samples", "--dsl", DSL, "--text", "a cat", "--json")
    ranked = json.loads(out.stdout)
    assert ranked[0]["file_name"] == "chelsea.png"
    assert {h["uri"] for h in ranked} <= {h["uri"] for h in hits}


def test_dsl_errors_point_at_the_column(samples_env):
    env, _ = samples_env
    out = cli(env, "search", "--dataset", "samples", "--dsl", "tags:cat AND heigth > 3")
    assert out.returncode == 2
    assert "unknown field 'heigth'" in out.stderr and "height" in out.stderr
    assert "^" in out.stderr


def test_paging_through_filter_results(samples_env):
    env, _ = samples_env
    seen, cursor = [], None
    for _ in range(20):
        args = ["search", "--dataset", "samples", "--dsl", "tags:Interior", "--top-k", "7"]
        out = cli(env, *args, *(["--cursor", cursor] if cursor else []), "--json")
        seen += [h["uri"] for h in json.loads(out.stdout)]
        cursor = None
        for line in out.stderr.splitlines():
            if line.startswith("next page: --cursor "):
                cursor = line.split()[-1]
        if not cursor:
            break
    out = cli(
        env, "search", "--dataset", "samples", "--dsl", "tags:Interior", "--top-k", "500", "--json"
    )
    assert seen == [h["uri"] for h in json.loads(out.stdout)] and len(seen) > 7
