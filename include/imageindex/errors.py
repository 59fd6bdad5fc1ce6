"""Typed errors. Each says what to fix and names the file, dataset, field or setting."""

from __future__ import annotations


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
