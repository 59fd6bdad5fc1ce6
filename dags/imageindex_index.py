"""
# imageindex — index a dataset version

One DAG per dataset declared in the registry (`IMAGEINDEX_REGISTRY`). A run:

1. **plan** — lists the version's source (local folder or `s3://`), diffs it against the index
   (new, changed, unchanged, deleted) and writes shard manifests to the staging location.
2. **shard** (a mapped task group, one per shard) — **preprocess** (decode, EXIF orientation,
   RGB, thumbnail; bad files recorded with a reason) → **tag_embed** (one model pass gives the
   vector and the tags) → **upsert** (deterministic ids: a retried shard never duplicates).
3. **finalize** — deletes documents of removed files (refused when the listing is empty or
   shrank too much), rewrites the version's Parquet feature table when the run changed it,
   writes the run report (the task's XCom).
4. **publish** — emits the asset events of the dataset and its feature table, only when the
   run changed the version (skipped on a no-change run).

Errors no retry can fix (registry, params, credentials, model mismatch, version held by another
run) fail the task at once; the others are retried.

Trigger with the form: `version`, `mode` (`incremental` processes new and changed files only,
`full` reprocesses everything) and `shard_size`. XCom carries staging paths and counts only.
"""

from __future__ import annotations

import functools
import logging
import os
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowSkipException

from imageindex import pipeline
from imageindex.config import settings
from imageindex.errors import RegistryError, airflow_outcome
from imageindex.registry import DatasetSpec, load_registry

log = logging.getLogger(__name__)


#: Concurrent runs of one dataset's DAG (each on its own version).
MAX_ACTIVE_RUNS = 4


def dataset_asset(dataset_id: str) -> Asset:
    return Asset(name=f"imageindex_{dataset_id}", uri=f"imageindex://datasets/{dataset_id}")


def features_asset(dataset_id: str) -> Asset:
    """The dataset's Parquet feature tables (one per version); schedule downstream DAGs on it."""
    return Asset(
        name=f"imageindex_{dataset_id}_features", uri=f"imageindex://features/{dataset_id}"
    )


def upstream_asset(uri: str) -> Asset:
    """An asset a dataset is scheduled on. Another dataset's asset is the very one its DAG
    emits (same name and uri): Airflow keeps one active asset per uri, so a second name for
    it would leave the producing DAG's outlet inactive and fail its ``publish`` task."""
    for prefix, asset_of in (
        ("imageindex://datasets/", dataset_asset),
        ("imageindex://features/", features_asset),
    ):
        if uri.startswith(prefix):
            return asset_of(uri.removeprefix(prefix))
    return Asset(uri)


def stage_args(ds: DatasetSpec, stage: str) -> dict:
    """Per-stage Airflow settings from the registry (pools for paid APIs, queues for GPUs)."""
    opts = dict(ds.tasks.get(stage, {}))
    # A hung store or S3 endpoint must not hold a worker for hours: every task has a limit.
    seconds = opts.pop("execution_timeout_s", None) or settings().task_timeout_s
    opts["execution_timeout"] = timedelta(seconds=seconds)
    return opts


def stage_task(ds: DatasetSpec, stage: str, **task_kwargs):
    """``@task`` for one pipeline stage, with the registry's settings for it. Every stage runs
    through here, so all of them export the try number (``IMAGEINDEX_TRY_NUMBER``, read by the
    fault hook) and give library errors their Airflow outcome (:func:`airflow_outcome`): errors
    no retry can fix fail at once, transient ones (source, store, provider outages) keep
    Airflow's retries, and the plan of a scheduled or backfill run skips when another run holds
    the version (that run covers this interval's changes; the next one catches up)."""

    def decorate(fn):
        @functools.wraps(fn)
        def run_stage(*args, **kwargs):
            ctx = get_current_context()
            os.environ["IMAGEINDEX_TRY_NUMBER"] = str(ctx["ti"].try_number)
            with airflow_outcome(busy_skips=stage == "plan" and _scheduled(ctx)):
                return fn(*args, **kwargs)

        return task(**stage_args(ds, stage), **task_kwargs)(run_stage)

    return decorate


def _scheduled(ctx) -> bool:
    """Whether the run was made by the scheduler (a schedule or a backfill), not by hand."""
    run_type = str(getattr(ctx.get("dag_run"), "run_type", "")).lower().rsplit(".", 1)[-1]
    return run_type in ("scheduled", "backfill")


def run_params(ds: DatasetSpec) -> dict[str, Param]:
    """The trigger form: which version, which mode, how many files per shard."""
    cfg = settings()
    return {
        # Free text, not an enum: logical versions registered by exports are valid too.
        "version": Param(
            ds.current_version,
            type="string",
            examples=list(ds.versions),
            pattern=r"^[A-Za-z0-9_.-]{1,64}$",
            title="Dataset version",
            description="Which version to index: one of the registry's, or a logical "
            "version registered by an export.",
        ),
        "mode": Param(
            "incremental",
            enum=list(pipeline.MODES),
            title="Mode",
            description="incremental: new and changed files; full: every file.",
        ),
        "shard_size": Param(
            ds.shard_size or cfg.shard_size,
            type="integer",
            minimum=1,
            title="Files per shard",
            description="Grows automatically so the shard count stays under the cap.",
        ),
    }


def build_dag(ds: DatasetSpec):
    """The index DAG of one dataset. Its tasks are defined inside (they close over ``ds``), so
    this reads as the DAG's table of contents: longer than a plain function, on purpose."""
    cfg = settings()
    asset = dataset_asset(ds.id)
    features = features_asset(ds.id)
    # A dataset without a feature table never announces one.
    outlets = [asset] if ds.feature_table == "" else [asset, features]

    @dag(
        dag_id=f"imageindex_{ds.id}",
        description=f"Index dataset '{ds.id}' (plan → preprocess → tag_embed → upsert → finalize)",
        doc_md=__doc__,
        schedule=[upstream_asset(uri) for uri in ds.schedule]
        if isinstance(ds.schedule, tuple)
        else ds.schedule,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        # `catchup: true` in the registry: the scheduler also creates the intervals missed
        # since start_date. Backfills (`airflow backfill create`) work either way.
        catchup=ds.catchup,
        # Runs of different versions go side by side (a backfill of v2 does not hold up the
        # scheduled incremental runs of v1); a second run of the same version is refused by
        # the version lease that plan takes and every later stage renews (pipeline.hold_lease).
        max_active_runs=MAX_ACTIVE_RUNS,
        tags=["imageindex", f"dataset:{ds.id}", *ds.tags],
        default_args={
            "retries": cfg.retries,
            "retry_delay": timedelta(seconds=cfg.retry_delay_s),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(seconds=max(cfg.retry_delay_s * 16, 1)),
        },
        params=run_params(ds),
        render_template_as_native_obj=True,
    )
    def index_dataset():
        @stage_task(ds, "plan")
        def plan() -> list[str]:
            """List the source, diff it against the index, write shard manifests.

            Returns the manifests' staging paths (the mapped shards); counts stay in plan.json.
            """
            ctx = get_current_context()
            p = ctx["params"]
            result = pipeline.plan(
                ds.id, p["version"], ctx["run_id"], mode=p["mode"], shard_size=int(p["shard_size"])
            )
            return result["shards"]

        @task_group(group_id="shard")
        def shard(manifest: str):
            @stage_task(ds, "preprocess")
            def preprocess(manifest: str) -> dict:
                """Decode, orient, convert and thumbnail every file; bad files get a reason."""
                version, run_id = _version_and_run()
                return pipeline.preprocess(ds.id, version, manifest, run_id=run_id)

            @stage_task(ds, "tag_embed")
            def tag_embed(pre: dict) -> dict:
                """One model pass per image gives its vector and its ai tags."""
                version, run_id = _version_and_run()
                emb = pipeline.tag_embed(ds.id, version, pre["preprocessed"], run_id=run_id)
                return {"pre": pre, "emb": emb}

            @stage_task(ds, "upsert")
            def upsert(stages: dict) -> dict:
                """Write documents with deterministic ids; a retry overwrites, never duplicates."""
                version, run_id = _version_and_run()
                pre, emb = stages["pre"], stages["emb"]
                ups = pipeline.upsert(
                    ds.id, version, emb["features"], pre["preprocessed"], run_id=run_id
                )
                return pipeline.shard_summary(pre, emb, ups)

            return upsert(tag_embed(preprocess(manifest)))

        @stage_task(ds, "finalize", trigger_rule="none_failed")
        def finalize(shard_results) -> dict:
            """Delete removed files (guarded), optimize the store, write the run report."""
            ctx = get_current_context()
            # One mapped shard can arrive as its bare result rather than a one-item sequence.
            if isinstance(shard_results, dict):
                shard_results = [shard_results]
            results = [r for r in (shard_results or []) if isinstance(r, dict)]
            try:
                plan_result = pipeline.load_plan(ds.id, ctx["params"]["version"], ctx["run_id"])
            except FileNotFoundError:
                raise AirflowSkipException("plan was skipped: nothing to finalize") from None
            report = pipeline.finalize(ds.id, plan_result["dataset_version"], plan_result, results)
            return {k: v for k, v in report.items() if k not in ("failures", "optimize")}

        @task(outlets=outlets, execution_timeout=timedelta(minutes=10))
        def publish(report: dict) -> None:
            """Emit the dataset's asset events, only when the run changed the version."""
            events = pipeline.asset_events(report)
            if events is None:
                raise AirflowSkipException("nothing changed in this version: no asset event")
            outlet_events = get_current_context()["outlet_events"]
            outlet_events[asset].extra = events["dataset"]
            if features in outlets and events["features"]:
                outlet_events[features].extra = events["features"]

        @task(trigger_rule="all_done")
        def release_lease() -> bool:
            """Give the version back, whether the run succeeded or failed."""
            version, run_id = _version_and_run()
            return pipeline.release_lease(ds.id, version, run_id)

        planned = plan()
        report = finalize(shard.expand(manifest=planned))
        publish(report)
        report >> release_lease().as_teardown(setups=planned)

    return index_dataset()


def _version_and_run() -> tuple[str, str]:
    ctx = get_current_context()
    return ctx["params"]["version"], ctx["run_id"]


def _load_dags() -> dict:
    try:
        registry = load_registry()
    except RegistryError as exc:
        if not settings().registry_path.exists():
            log.warning("imageindex: no DAGs generated: %s", exc)
            return {}
        raise
    return {ds.id: build_dag(ds) for ds in registry.datasets.values()}


DAGS = _load_dags()
for _dataset_id, _dag in DAGS.items():
    globals()[_dag.dag_id] = _dag
