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
    try:
        held = staging.read_json(uri)
    except FileNotFoundError:
        held = None
    if held and held.get("run_id") != run_id and held.get("expires_at", 0) > now:
        raise VersionBusyError(
            f"run {held['run_id']} is indexing {ctx.dataset.id}/{ctx.version} (since "
            f"{held.get('started_at')}); this run stops rather than repeat its work. Trigger "
            "again when it has finished, or remove the lease "
            f"{uri} if that run is gone"
        )
    renewing = bool(held) and held.get("run_id") == run_id
    lease = {
        "run_id": run_id,
        "started_at": held["started_at"] if renewing else datetime.now(UTC).isoformat(),
        "expires_at": now + settings().run_lease_s,
    }
    staging.write_json(uri, lease)
    # Two plans racing past the check: the last write wins and the other one steps back.
    if staging.read_json(uri).get("run_id") != run_id:
        raise VersionBusyError(f"another run claimed {ctx.dataset.id}/{ctx.version} just now")


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
