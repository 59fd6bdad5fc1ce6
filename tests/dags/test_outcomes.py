"""Library errors become Airflow outcomes in one place (``imageindex.errors.airflow_outcome``),
for the tasks of both DAGs: fail at once, skip, or raise as they are for Airflow's retries."""

from __future__ import annotations

import pytest
from airflow.sdk.api.datamodels._generated import DagRunType
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from airflow.sdk.execution_time.context import set_current_context

from imageindex.errors import (
    AuthError,
    ConfigError,
    SourceError,
    StoreError,
    VersionBusyError,
    airflow_outcome,
)


@pytest.mark.parametrize(
    ("error", "busy_skips", "raised"),
    [
        (ConfigError("registry.yaml: datasets[0].versions: empty"), False, AirflowFailException),
        (AuthError("connection 'dashscope_default' refused"), False, AirflowFailException),
        (VersionBusyError("run a is indexing t/v1"), False, AirflowFailException),
        (VersionBusyError("run a is indexing t/v1"), True, AirflowSkipException),
        (ConfigError("bad"), True, AirflowFailException),  # only a busy version skips
    ],
)
def test_errors_no_retry_fixes_fail_or_skip_naming_the_error(error, busy_skips, raised):
    with pytest.raises(raised) as info, airflow_outcome(busy_skips=busy_skips):
        raise error
    assert str(info.value) == f"{type(error).__name__}: {error}"
    assert info.value.__cause__ is error


@pytest.mark.parametrize(
    "error", [SourceError("bucket unreachable"), StoreError("node down"), OSError("disk")]
)
def test_transient_errors_are_raised_as_they_are_for_retries(error):
    with pytest.raises(type(error)) as info, airflow_outcome(busy_skips=True):
        raise error
    assert info.value is error


def _context(params: dict, *, run_id: str = "manual__x", run_type=DagRunType.MANUAL) -> dict:
    ti = type("TI", (), {"try_number": 1})()
    dag_run = type("DagRun", (), {"run_type": run_type})()
    return {"ti": ti, "params": params, "run_id": run_id, "dag_run": dag_run}


@pytest.mark.parametrize(
    ("run_type", "raised"),
    [
        (DagRunType.MANUAL, AirflowFailException),
        (DagRunType.SCHEDULED, AirflowSkipException),
        (DagRunType.BACKFILL, AirflowSkipException),
    ],
)
def test_index_plan_of_a_busy_version_skips_scheduled_runs_and_fails_others(
    index_dag, run_type, raised
):
    plan = index_dag.get_task("plan").python_callable
    params = {"version": "v1", "mode": "incremental", "shard_size": 10}
    with set_current_context(_context(params, run_id="manual__first")):
        assert plan() == []  # an empty source: no shards, but the version is held
    with (
        set_current_context(_context(params, run_id="scheduled__second", run_type=run_type)),
        pytest.raises(raised, match="VersionBusyError: .*manual__first"),
    ):
        plan()


def test_eval_prepare_fails_at_once_on_an_unknown_model(load_dag, monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGEINDEX_HOME", str(tmp_path / "home"))
    dag = load_dag("imageindex_eval").eval_dag
    prepare = dag.get_task("prepare").python_callable
    params = {**dag.params.dump(), "models": ["clip"]}
    with (
        set_current_context(_context(params)),
        pytest.raises(AirflowFailException, match="ConfigError: .*model 'clip' is unknown"),
    ):
        prepare()
    assert not (tmp_path / "home").exists()  # refused before building anything
