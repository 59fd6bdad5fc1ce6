"""``dag.test()`` end to end on a real (throwaway) Airflow: SQLite metadata DB, real models,
LanceDB, and SeaweedFS for the S3 variant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from airflow_local import airflow_env, migrate, run_dag  # noqa: E402

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
    interior = json.loads(out.stdout)
    assert interior and all("Interior" in h["tags"]["ai"] for h in interior)

    def search_all(*args: str) -> list[dict]:
        out = cli(
            env, "search", "--dataset", "samples", "--text", "a room", "--top-k", "200", *args
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    everything = search_all("--json")
    assert len(everything) == sum(1 for p in (var / "samples").rglob("*") if p.is_file())
    excluded = search_all("--tags-exclude", "Interior", "--json")
    assert excluded and all("Interior" not in h["tags"]["ai"] for h in excluded)
    # Exactly the photos without the tag: none lost, none kept that carry it.
    assert sorted(h["uri"] for h in excluded) == sorted(
        h["uri"] for h in everything if "Interior" not in h["tags"]["ai"]
    )


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


# --------------------------------------------------------------------------------------------
# Defects found on a walk through `make standalone` (issue 11)


def airflow_db(var: Path, sql: str, *args) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(var / "airflow" / "airflow.db") as db:
        return db.execute(sql, args).fetchall()


def last_run(var: Path) -> str:
    return airflow_db(
        var, "SELECT run_id FROM dag_run WHERE dag_id='imageindex_samples' ORDER BY id DESC"
    )[0][0]


def task_states(var: Path, run_id: str) -> dict[str, tuple[str, int]]:
    rows = airflow_db(
        var,
        "SELECT task_id, state, try_number FROM task_instance WHERE run_id=? AND map_index<=0",
        run_id,
    )
    return {task: (state, tries) for task, state, tries in rows}


def test_no_change_run_emits_no_asset_event_and_keeps_the_report(samples_env):
    env, var = samples_env
    events = (
        "SELECT a.uri, count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id GROUP BY a.uri"
    )
    before = dict(airflow_db(var, events))
    # the first run changed the version: one event per asset
    assert before["imageindex://datasets/samples"] >= 1
    assert before["imageindex://features/samples"] == before["imageindex://datasets/samples"]
    state, _, output = run_dag(env, "samples", {})
    assert state == "success", output[-3000:]
    assert dict(airflow_db(var, events)) == before
    run_id = last_run(var)
    states = task_states(var, run_id)
    assert states["publish"][0] == "skipped" and states["finalize"][0] == "success"
    (value,) = airflow_db(
        var,
        "SELECT value FROM xcom WHERE run_id=? AND task_id='finalize' AND key='return_value'",
        run_id,
    )[0]
    report = json.loads(value)
    assert report["processed"] == 0 and report["listed"] > 0


def test_unknown_version_fails_at_once_without_retries(samples_env):
    env, var = samples_env
    state, _, output = run_dag(env, "samples", {"version": "nope"})
    assert state == "failed", output[-3000:]
    states = task_states(var, last_run(var))
    assert states["plan"] == ("failed", 1), states
    assert "has no version 'nope'" in output


def stage_args(stage: str, staging: Path) -> tuple:
    """Arguments of each stage task: staging files that are not there (a transient error)."""
    shard = staging / "runs" / "t" / "v1" / "gone" / "shards" / "00000"
    pre = {"preprocessed": str(shard / "preprocessed.parquet")}
    return {
        "plan": (),
        "shard.preprocess": (str(shard / "manifest.parquet"),),
        "shard.tag_embed": (pre,),
        "shard.upsert": ({"pre": pre, "emb": {"features": str(shard / "features.parquet")}},),
        "finalize": ([],),
    }[stage]


STAGES = ["plan", "shard.preprocess", "shard.tag_embed", "shard.upsert", "finalize"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_fails_at_once_on_errors_a_retry_cannot_fix(
    stage, index_dag, monkeypatch, tmp_path
):
    from airflow.sdk.exceptions import AirflowFailException
    from airflow.sdk.execution_time.context import set_current_context

    fn = index_dag.get_task(stage).python_callable
    monkeypatch.delenv("IMAGEINDEX_TRY_NUMBER", raising=False)

    def context(version: str) -> dict:
        ti = type("TI", (), {"try_number": 3})()
        params = {"version": version, "mode": "incremental", "shard_size": 10}
        return {"ti": ti, "params": params, "run_id": "manual__x", "dag_run": None}

    # a version missing from the registry (a RegistryError): no retry can fix it
    with set_current_context(context("nope")), pytest.raises(AirflowFailException) as failed:
        fn(*stage_args(stage, tmp_path / "home" / "staging"))
    assert "RegistryError" in str(failed.value) and "has no version 'nope'" in str(failed.value)
    assert os.environ["IMAGEINDEX_TRY_NUMBER"] == "3"  # exported for the fault hook
    # a transient error (here: a staging file not there) keeps Airflow's retries
    if stage.startswith("shard."):
        with set_current_context(context("v1")), pytest.raises(FileNotFoundError):
            fn(*stage_args(stage, tmp_path / "home" / "staging"))


def test_dag_hands_the_try_number_to_the_fault_hook(samples_env):
    env, var = samples_env
    # The DAG overrides the outer try number with the task's own (1 under dag.test()).
    state, _, output = run_dag(
        {**env, "IMAGEINDEX_TRY_NUMBER": "7", "IMAGEINDEX_FAULT_EXIT_IN": "plan@7"}, "samples", {}
    )
    assert state == "success", output[-3000:]
    lease = var / "staging" / "leases" / "samples" / "v1.json"
    try:
        state, _, output = run_dag(
            {**env, "IMAGEINDEX_TRY_NUMBER": "7", "IMAGEINDEX_FAULT_EXIT_IN": "plan@1"},
            "samples",
            {},
        )
        assert (
            state != "success"
            and "fault injection: exiting in the middle of plan (try 1)" in output
        )
    finally:
        lease.unlink(missing_ok=True)  # the killed run never gave its version back


def test_backfill_of_a_version_as_docs_production_gives_it(tmp_path):
    """The commands of docs/production.md ("Backfills") against a real metadata DB: a backfill
    on a dataset with a time schedule creates runs whose conf names the version; on a dataset
    without a schedule Airflow refuses it and `dags trigger --conf` is the way."""
    import sqlite3

    docs = (REPO / "docs" / "production.md").read_text(encoding="utf-8")
    assert '--dag-run-conf \'{"version": "v2"}\'' in docs
    assert 'airflow dags trigger imageindex_street --conf \'{"version": "v2"}\'' in docs
    reg = tmp_path / "registry.yaml"
    reg.write_text(
        "datasets:\n"
        f"  - id: manual\n    versions: {{v1: {tmp_path}/a, v2: {tmp_path}/b}}\n"
        f"  - id: street\n    versions: {{v1: {tmp_path}/a, v2: {tmp_path}/b}}\n"
        "    schedule: '@daily'\n    catchup: true\n",
        encoding="utf-8",
    )
    env = airflow_env(tmp_path / "var", IMAGEINDEX_REGISTRY=str(reg))
    migrate(env)

    def airflow(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "airflow", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    assert airflow("dags", "reserialize").returncode == 0
    one_day = ("--from-date", "2026-06-01", "--to-date", "2026-06-01")
    conf = ("--dag-run-conf", '{"version": "v2"}')
    out = airflow("backfill", "create", "--dag-id", "imageindex_street", *one_day, *conf)
    assert out.returncode == 0, out.stderr[-3000:]
    refused = airflow("backfill", "create", "--dag-id", "imageindex_manual", *one_day, *conf)
    assert refused.returncode != 0 and "non-periodic schedule" in refused.stderr
    out = airflow("dags", "trigger", "imageindex_manual", "--conf", '{"version": "v2"}')
    assert out.returncode == 0, out.stderr[-3000:]
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        runs = db.execute("SELECT dag_id, run_type, conf FROM dag_run ORDER BY id").fetchall()
    assert [(d, t, json.loads(c)) for d, t, c in runs] == [
        ("imageindex_street", "backfill", {"version": "v2"}),
        ("imageindex_manual", "manual", {"version": "v2"}),
    ]
    # the registry's catchup reaches the DAG
    probe = (
        "import importlib.util as u; s = u.spec_from_file_location('d', 'dags/imageindex_index.py'); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); "
        "print({k: d.catchup for k, d in sorted(m.DAGS.items())})"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.stdout.strip().splitlines()[-1] == "{'manual': False, 'street': True}", out.stderr
