"""New versions of a dataset, side by side: v1 is indexed by the scheduler; v2 and v3 are
registered later (copies of v1 plus new files), v2 indexed from the REST API (``conf``
version), v3 by ``airflow backfill create`` exactly as docs/production.md documents it. Both
run at once, both reuse v1's content, and a second run of a version is refused without
touching the first."""

from __future__ import annotations

import re
import shlex
import shutil

from airflow_cluster import FINISHED, REPO, parse_time, run_seconds, timeline
from tier import index_docs, write_photos

DATASET = "versions"
DAG = f"imageindex_{DATASET}"
#: One day of the DAG's @daily schedule, long after its start date.
BACKFILL_DAY = "2026-06-01"


def documented_commands(prefix: str) -> list[list[str]]:
    """The shell commands starting with ``prefix`` in docs/production.md's code blocks."""
    doc = (REPO / "docs" / "production.md").read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", doc, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith(prefix):
                found.append(shlex.split(line, comments=True))
    return found


def documented_backfill(dag_id: str, day: str, conf: str) -> list[str]:
    """The ``airflow backfill create`` command docs/production.md gives, for this DAG and day.

    Only the values of --dag-id, --from-date, --to-date and --dag-run-conf are replaced; every
    other flag stays as documented, so the docs cannot drift from what works."""
    commands = documented_commands("airflow backfill create")
    assert commands, "docs/production.md documents no `airflow backfill create` command"
    args = commands[0][1:]
    assert "--dag-run-conf" in args, "the documented backfill does not say how to pick a version"
    values = {"--dag-id": dag_id, "--from-date": day, "--to-date": day, "--dag-run-conf": conf}
    return [values.get(prev, arg) for prev, arg in zip(["", *args[:-1]], args, strict=True)]


def copy_version(src, dst, n_new: int, seed0: int) -> int:
    """A new version folder: every file of ``src`` copied (new mtimes, same bytes) plus new
    photos. Returns the number of files."""
    dst.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        shutil.copy(f, dst / f.name)
    write_photos(dst, n_new, seed0=seed0, prefix="new")
    return len(list(dst.iterdir()))


def overlap_s(a: dict, b: dict) -> float:
    """Seconds two runs were both running (negative: the gap between them)."""
    start = max(parse_time(a["start_date"]), parse_time(b["start_date"]))
    end = min(parse_time(a["end_date"]), parse_time(b["end_date"]))
    return round((end - start).total_seconds(), 1)


def test_v1_is_indexed_by_the_scheduler(cluster, summary):
    def scheduled():
        runs = [r for r in cluster.runs(DAG, run_type="scheduled") if r["state"] in FINISHED]
        return runs[0] if runs else None

    run = cluster.wait(scheduled, timeout=240, every=2, what="the first scheduled run")
    report = cluster.xcom(DAG, run["dag_run_id"], "finalize")
    summary.record("version_v1", run_id=run["dag_run_id"], run_s=run_seconds(run), report=report)
    assert run["state"] == "success"
    assert (report["dataset_version"], report["new"], report["indexed_ok"]) == ("v1", 8, 8)


def test_new_versions_from_rest_and_backfill_run_side_by_side_reusing_v1(
    cluster, registry, var, summary
):
    v1 = var / "photos" / DATASET / "v1"
    n_v2 = copy_version(v1, var / "photos" / DATASET / "v2", n_new=2, seed0=100)
    n_v3 = copy_version(v1, var / "photos" / DATASET / "v3", n_new=1, seed0=200)
    registry.add_version(DATASET, "v2", var / "photos" / DATASET / "v2")
    registry.add_version(DATASET, "v3", var / "photos" / DATASET / "v3")

    rest_run = cluster.trigger(DAG, {"version": "v2"})
    command = documented_backfill(DAG, BACKFILL_DAY, '{"version": "v3"}')
    backfill = cluster.cli(*command)

    def backfill_runs():
        runs = cluster.runs(DAG, run_type="backfill")
        return runs if runs and all(r["state"] in FINISHED for r in runs) else None

    backfilled = cluster.wait(backfill_runs, timeout=300, every=2, what="the backfill runs")
    rest = cluster.wait_run(DAG, rest_run)
    reports = {
        r["dag_run_id"]: cluster.xcom(DAG, r["dag_run_id"], "finalize")
        for r in [rest, *backfilled]
        if r["state"] == "success"
    }
    summary.record(
        "new_versions",
        backfill_command=" ".join(["airflow", *command]),
        backfill_stdout=backfill.stdout[-1500:],
        rest={"run_id": rest_run, "state": rest["state"], "run_s": run_seconds(rest)},
        backfill=[
            {"run_id": r["dag_run_id"], "state": r["state"], "conf": r["conf"],
             "run_s": run_seconds(r), "overlap_with_rest_s": overlap_s(rest, r)}
            for r in backfilled
        ],
        reports={k: {f: v.get(f) for f in ("dataset_version", "new", "reused", "processed",
                                           "indexed_ok")} for k, v in reports.items()},
    )  # fmt: skip
    assert rest["state"] == "success", timeline(cluster.task_instances(DAG, rest_run))
    assert all(r["state"] == "success" for r in backfilled), backfilled
    assert {r["conf"]["version"] for r in backfilled} == {"v3"}
    # The REST run of v2 and the backfill of v3 were in flight at the same time.
    assert max(overlap_s(rest, r) for r in backfilled) > 0

    v2 = reports[rest_run]
    assert (v2["dataset_version"], v2["reused"], v2["indexed_ok"]) == ("v2", 8, n_v2)
    (v3,) = [reports[r["dag_run_id"]] for r in backfilled if reports[r["dag_run_id"]]["new"]]
    assert (v3["dataset_version"], v3["reused"], v3["indexed_ok"]) == ("v3", 8, n_v3)

    assert len(index_docs(registry.store, DATASET, "v1")) == 8
    assert len(index_docs(registry.store, DATASET, "v2")) == n_v2
    assert len(index_docs(registry.store, DATASET, "v3")) == n_v3


def test_a_second_run_of_a_version_fails_naming_the_first_and_leaves_it_alone(
    cluster, registry, summary
):
    before = index_docs(registry.store, DATASET, "v2")
    first = cluster.trigger(DAG, {"version": "v2", "mode": "full", "shard_size": 4})

    def planned():
        tis = {t["task_id"]: t for t in cluster.task_instances(DAG, first)}
        return tis.get("plan", {}).get("state") in ("success", "failed", "upstream_failed")

    cluster.wait(planned, timeout=180, what=f"{first} to plan")
    second = cluster.trigger(DAG, {"version": "v2"})
    runs = {r: cluster.wait_run(DAG, r) for r in (first, second)}
    plan = {t["task_id"]: t for t in cluster.task_instances(DAG, second)}["plan"]
    log = cluster.log_text(DAG, second, "plan", plan["try_number"])
    report = cluster.xcom(DAG, first, "finalize")
    summary.record(
        "same_version_twice",
        first={"run_id": first, "state": runs[first]["state"], "run_s": run_seconds(runs[first])},
        second={"run_id": second, "state": runs[second]["state"], "plan_try": plan["try_number"]},
        first_report={k: report[k] for k in ("processed", "indexed_ok", "reused")},
    )
    assert runs[first]["state"] == "success"
    # Manual runs fail (scheduled and backfill ones skip) at once, naming the holder.
    assert runs[second]["state"] == "failed"
    assert (plan["state"], plan["try_number"]) == ("failed", 1)
    assert first in log, log[-3000:]
    # The first run did all its work and the index of v2 is whole.
    assert report["processed"] == len(before) and report["indexed_ok"] == len(before)
    after = index_docs(registry.store, DATASET, "v2")
    assert set(after) == set(before)
    assert {d["id"] for d in after.values()} == {d["id"] for d in before.values()}
