"""The run report and what feeds it: per-shard summaries (XCom-sized), hosted models' request
counters, the failures read back from the shards' files, and the asset events a finished run
emits. Finalize writes the report to the run folder's ``report.json``."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from imageindex.layout import ShardFolder

#: How many failures the report lists one by one (the rest are counted by reason).
REPORT_MAX_FAILURES = 1000


def provider_stats(embedder, tagger) -> dict[str, dict[str, int]]:
    """Request/retry/throttle/failure counters of hosted models (offline models have none)."""
    out = {}
    for role, model in (("embedder", embedder), ("tagger", tagger)):
        stats = getattr(model, "stats", None)
        if isinstance(stats, dict) and stats:
            out[f"{role}:{model.name}"] = {k: int(v) for k, v in stats.items()}
    return out


def stats_delta(before: dict, after: dict) -> dict:
    # Models are cached per worker process, so their counters span tasks: report this task's.
    return {
        key: {k: v - before.get(key, {}).get(k, 0) for k, v in counts.items()}
        for key, counts in after.items()
    }


def shard_summary(pre: dict, emb: dict, ups: dict) -> dict:
    """What finalize needs from one shard: counts and seconds per stage (XCom-sized)."""
    return {
        "providers": emb.get("providers", {}),
        "files": pre["files"],
        "reused": ups.get("reused", 0),
        "reuse_missing": ups.get("reuse_missing", 0),
        "ok": ups["ok"],
        "failed": ups["failed"],
        "upserted": ups["upserted"],
        "seconds": {
            "preprocess": pre["seconds"],
            "tag_embed": emb["seconds"],
            "upsert": ups["seconds"],
        },
    }


def _model_failures(staging, folder: ShardFolder, pre: pa.Table) -> list[dict]:
    """Files the model refused (``features.parquet``'s error column; never the vectors)."""
    if not staging.exists(folder.features):
        return []
    try:
        feats = staging.read_parquet(folder.features, columns=["id", "error"])
    except (KeyError, ValueError, pa.ArrowInvalid):
        return []
    uri_of = dict(zip(pre.column("id").to_pylist(), pre.column("uri").to_pylist(), strict=True))
    return [
        {"uri": uri_of.get(fid), "error_reason": "model_failed", "error_detail": ferr}
        for fid, ferr in zip(
            feats.column("id").to_pylist(), feats.column("error").to_pylist(), strict=True
        )
        if ferr
    ]


def read_failures(staging, shard_manifests: list[str]) -> tuple[list[dict], Counter]:
    """(the first :data:`REPORT_MAX_FAILURES` failures, every failure counted by reason), read
    back from the shards' staging files (XCom only carries counts)."""
    failures: list[dict] = []
    by_reason: Counter = Counter()
    for manifest in shard_manifests:
        folder = ShardFolder.of(manifest)
        if not staging.exists(folder.preprocessed):
            continue
        pre = staging.read_parquet(
            folder.preprocessed, columns=["id", "uri", "ok", "error_reason", "error_detail"]
        )
        bad_rows = pre.filter(pc.invert(pc.field("ok"))).to_pylist()
        bad_rows += _model_failures(staging, folder, pre)
        for row in bad_rows:
            by_reason[row["error_reason"]] += 1
            if len(failures) < REPORT_MAX_FAILURES:
                failures.append(
                    {
                        "uri": row["uri"],
                        "reason": row["error_reason"],
                        "detail": row["error_detail"],
                    }
                )
    return failures, by_reason


def build_report(
    dataset_id: str,
    version: str,
    plan_result: dict,
    shard_results: list[dict] | None,
    stage_seconds: dict | None,
    staging,
) -> dict:
    """The run report before finalize's own work (deletes, optimize, feature table, counts)."""
    counts = plan_result["counts"]
    failures, by_reason = read_failures(staging, plan_result["shards"])
    reuse_missing = sum(r.get("reuse_missing", 0) for r in shard_results or [])
    report = {
        "dataset_id": dataset_id,
        "dataset_version": version,
        "mode": plan_result.get("mode"),
        "run_dir": plan_result["run_dir"],
        "shards": len(plan_result["shards"]),
        "listed": counts["listed"],
        "new": counts["new"],
        "changed": counts["changed"],
        "unchanged": counts["unchanged"],
        "retag": counts.get("retag", 0),
        # new or changed files whose vectors and tags were copied from an indexed document
        "reused": counts.get("reused", 0) - reuse_missing,
        "reuse_missing": reuse_missing,
        # files plan read to compare contents (new or changed ones of an indexed size), bytes
        "content_checks": counts.get("content_checks", 0),
        "content_bytes_read": counts.get("content_bytes_read", 0),
        "deleted": 0,
        "to_delete": counts["deleted"],
        "processed": counts.get("to_process", 0),
        "failed": sum(by_reason.values()),
        "failed_by_reason": dict(by_reason),
        "failures": failures,
        "seconds": dict(stage_seconds or {}),
    }
    if shard_results:
        providers: dict[str, Counter] = {}
        for r in shard_results:
            for key, stats in (r.get("providers") or {}).items():
                providers.setdefault(key, Counter()).update(stats)
        report["providers"] = {k: dict(v) for k, v in providers.items()}
        secs = Counter()
        for r in shard_results:
            for stage, s in (r.get("seconds") or {}).items():
                secs[stage] += s
        report["seconds"].update({k: round(v, 3) for k, v in secs.items()})
    report["seconds"]["plan"] = plan_result.get("seconds")
    return report


def asset_events(report: dict) -> dict[str, dict | None] | None:
    """The extras of the asset events a finished run emits: ``{"dataset": {…}, "features":
    {…} or None}``, or None when the run changed nothing in the version (no file processed or
    deleted, feature table not rewritten) — then no event is emitted, so a DAG scheduled on
    the dataset's assets does not run after every no-change tick."""
    table = report.get("feature_table") or {}
    if not (report.get("processed") or report.get("deleted") or table.get("written")):
        return None
    dataset = {
        k: report.get(k) for k in ("new", "changed", "deleted", "failed", "indexed", "reused")
    }
    features = None
    if table.get("written"):
        features = {"uri": table.get("uri"), "rows": table.get("rows"), "rewritten": True}
    return {
        "dataset": {"dataset_version": report["dataset_version"], **dataset},
        "features": features and {"dataset_version": report["dataset_version"], **features},
    }
