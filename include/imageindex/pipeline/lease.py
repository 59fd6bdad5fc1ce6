"""One run per dataset version at a time: the version lease.

Plan takes it, every later stage renews it (:func:`hold_lease`), finalize or the DAG's teardown
gives it back (:func:`release_lease`). It is a small JSON file (``layout.StagingLayout.lease``)
in the staging root every worker shares, and it expires after ``IMAGEINDEX_RUN_LEASE_S``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from imageindex.config import settings
from imageindex.errors import VersionBusyError
from imageindex.pipeline.context import RunContext, open_run


def _lease_uri(ctx: RunContext) -> str:
    return ctx.layout.lease(ctx.dataset.id, ctx.version)


def acquire_lease(ctx: RunContext, run_id: str) -> None:
    """Claim the dataset version for ``run_id`` until it finishes (or the lease expires).

    Runs of different versions proceed side by side — a backfill of v2 never waits for the
    scheduled incremental run of v1 — while a second run of the same version is refused with
    :class:`VersionBusyError` instead of redoing the first one's work. The lease lives in the
    staging root every worker shares; it is released by :func:`release_lease` (the DAG's
    teardown, so also after a failed run) and expires after ``IMAGEINDEX_RUN_LEASE_S``.
    """
    staging, uri = ctx.staging, _lease_uri(ctx)
    now = time.time()
    held = _read_lease(staging, uri)
    if held and held.get("run_id") == run_id:
        # Only the holder renews, so a plain overwrite cannot race another run.
        lease = _lease(run_id, now, started_at=held.get("started_at"))
        staging.write_json(uri, lease)
        return
    if held and held.get("expires_at", 0) > now:
        raise _busy(ctx, uri, held)
    if held:
        # Expired: the run that held it is gone. Remove it, then race for a fresh one below.
        staging.delete_prefix(uri)
    # Create-if-absent: of two plans racing here exactly one wins (an O_EXCL link locally,
    # If-None-Match on S3); the loser is refused naming the winner.
    if not staging.create_json(uri, _lease(run_id, now)):
        raise _busy(ctx, uri, _read_lease(staging, uri) or {"run_id": "another run"})
    # A store that ignores conditional writes: the last writer wins and the other steps back.
    now_held = _read_lease(staging, uri) or {"run_id": "another run"}
    if now_held.get("run_id") != run_id:
        raise _busy(ctx, uri, now_held)


def _read_lease(staging, uri: str) -> dict | None:
    try:
        return staging.read_json(uri)
    except FileNotFoundError:
        return None


def _lease(run_id: str, now: float, started_at: str | None = None) -> dict:
    return {
        "run_id": run_id,
        "started_at": started_at or datetime.now(UTC).isoformat(),
        "expires_at": now + settings().run_lease_s,
    }


def _busy(ctx: RunContext, uri: str, held: dict) -> VersionBusyError:
    return VersionBusyError(
        f"run {held.get('run_id')} is indexing {ctx.dataset.id}/{ctx.version} (since "
        f"{held.get('started_at')}); this run stops rather than repeat its work. Trigger "
        "again when it has finished, or remove the lease "
        f"{uri} if that run is gone"
    )


def hold_lease(
    dataset_id: str, version: str, run_id: str | None, *, registry_path: str | None = None
) -> None:
    """Check and renew ``run_id``'s lease on the version at the start of a shard stage or
    finalize: taken again when free or expired (a run whose failed tasks were cleared and
    re-run after its teardown gave the lease back), :class:`VersionBusyError` naming the holder
    when another run holds it. ``run_id`` None (a caller outside a run) checks nothing."""
    if run_id is None:
        return
    acquire_lease(open_run(dataset_id, version, run_id, registry_path=registry_path), run_id)


def release_lease(
    dataset_id: str, version: str, run_id: str, *, registry_path: str | None = None
) -> bool:
    """Give the version's lease back if ``run_id`` holds it; True when released."""
    ctx = open_run(dataset_id, version, run_id, registry_path=registry_path)
    staging, uri = ctx.staging, _lease_uri(ctx)
    try:
        held = staging.read_json(uri)
    except FileNotFoundError:
        return False
    if held.get("run_id") != run_id:
        return False
    staging.delete_prefix(uri)
    return True
