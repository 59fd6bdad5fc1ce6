"""Where images come from: a local (or mounted) folder, or an S3 bucket prefix."""

from __future__ import annotations

from imageindex.errors import ConfigError
from imageindex.sources.base import FINGERPRINTS, Source
from imageindex.sources.local import LocalSource, local_path_from_uri
from imageindex.sources.manifest import ManifestSource
from imageindex.sources.s3 import S3Source

__all__ = [
    "LocalSource",
    "ManifestSource",
    "S3Source",
    "Source",
    "local_path_from_uri",
    "open_source",
    "open_version_source",
]


def open_version_source(version, *, s3_conn_id: str | None = None, fingerprint: str = "stat"):
    """The source of a registry :class:`~imageindex.registry.VersionSpec`: its prefix, or for a
    logical version the files its manifest lists."""
    if getattr(version, "manifest", False):
        return ManifestSource(version.source, s3_conn_id=s3_conn_id, fingerprint=fingerprint)
    return open_source(version.source, s3_conn_id=s3_conn_id, fingerprint=fingerprint)


def open_source(uri: str, *, s3_conn_id: str | None = None, fingerprint: str = "stat") -> Source:
    """Open ``file:///abs/dir``, a plain path (relative: against the working directory) or
    ``s3://bucket/prefix``.

    ``fingerprint`` picks how local files are compared between runs: ``stat`` (size and mtime,
    cheap) or ``sha256`` (content hash, reads every file). S3 objects always use their ETag.
    """
    if fingerprint not in FINGERPRINTS:
        raise ConfigError(
            f"fingerprint {fingerprint!r} for source {uri} is not one of {', '.join(FINGERPRINTS)}"
        )
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"source {uri!r} is empty; give a folder path, file:///… or s3://…")
    if uri.startswith("s3://"):
        return S3Source(uri, conn_id=s3_conn_id)
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise ConfigError(
            f"source {uri!r}: scheme {scheme!r} is not supported; use a folder path, "
            "file:///abs/folder or s3://bucket/prefix"
        )
    return LocalSource(uri, fingerprint=fingerprint)
