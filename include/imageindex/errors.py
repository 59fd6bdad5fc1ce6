"""Typed errors. Each says what to fix and names the file, dataset, field or setting; and what
each means for an Airflow task: fail at once, skip, or retry (:func:`airflow_outcome`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class ImageIndexError(Exception):
    """Base class for every error raised on purpose by imageindex."""


class ConfigError(ImageIndexError):
    """A setting, registry entry or argument is invalid."""


class RegistryError(ConfigError):
    """The dataset registry file is invalid; the message names file, dataset and field."""


class SourceError(ImageIndexError):
    """A source could not be listed or read (missing folder, unreachable bucket, ...)."""


class StoreError(ImageIndexError):
    """The vector store refused an operation or is unreachable."""


class ModelMismatchError(StoreError):
    """The configured embedder does not match the vectors already in the index."""


class EmptyIndexError(ImageIndexError):
    """Search was asked of a dataset version that has no indexed documents."""


class UnsafeDeleteError(ImageIndexError):
    """Finalize refused to delete: the listing was empty or shrank beyond the allowed fraction."""


class ImageError(ImageIndexError):
    """One image could not be decoded; recorded per file, never fatal for a shard."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ProviderError(ImageIndexError):
    """A hosted model service failed in a way no retry fixed (down, throttled too long, bad URL).

    Per-file refusals are not raised: they come back as per-file errors (see
    :class:`imageindex.embedders.base.ImageEmbeddings`).
    """


class AuthError(ProviderError):
    """A hosted model service refused the credentials; the message names the Airflow connection."""


class VersionBusyError(ImageIndexError):
    """Another run is indexing the same dataset version right now (see pipeline leases)."""


# --------------------------------------------------------------------------------------------
# What an error means for the Airflow task that raised it. Plain values here; Airflow is
# imported only by airflow_outcome, when an error has to be turned into its exception.

FAIL, SKIP, RETRY = "fail", "skip", "retry"

#: Errors no retry can fix: a bad registry entry, version or param, a rejected key, an index
#: built by another model, another run holding the version. The task fails at once.
PERMANENT_ERRORS = (ConfigError, AuthError, ModelMismatchError, VersionBusyError)


def outcome(exc: BaseException, *, busy_skips: bool = False) -> str:
    """:data:`FAIL` (at once, no retries), :data:`SKIP` or :data:`RETRY` (Airflow's retries)
    for an error raised in a task.

    ``busy_skips``: another run holding the version skips the task instead of failing it (the
    plan of a scheduled or backfill run: the run in flight covers its changes, the next one
    catches up).
    """
    if busy_skips and isinstance(exc, VersionBusyError):
        return SKIP
    return FAIL if isinstance(exc, PERMANENT_ERRORS) else RETRY


@contextlib.contextmanager
def airflow_outcome(*, busy_skips: bool = False) -> Iterator[None]:
    """Run a task's body so that each library error has the :func:`outcome` it calls for:
    ``AirflowFailException`` or ``AirflowSkipException`` (naming the error), or raised as it
    is for Airflow's retries. Used by every task of the DAGs in ``dags/``."""
    try:
        yield
    except ImageIndexError as exc:
        verdict = outcome(exc, busy_skips=busy_skips)
        if verdict == RETRY:
            raise
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        airflow_exc = AirflowSkipException if verdict == SKIP else AirflowFailException
        raise airflow_exc(f"{type(exc).__name__}: {exc}") from exc
