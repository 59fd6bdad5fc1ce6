"""Plain values passed between stages. No I/O here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

#: Extensions the sources list, compared case-insensitively.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class FileEntry:
    """One listed file.

    ``uri`` is absolute (``file:///abs/path`` or ``s3://bucket/key``); ``key`` is the path relative
    to the source root, POSIX separators; ``mtime`` is seconds since the epoch (UTC);
    ``fingerprint`` changes whenever the content may have changed: ``etag:<etag>`` for S3,
    ``stat:<size>-<mtime_ns>`` or ``sha256:<hex>`` for local files.
    """

    uri: str
    key: str
    size: int
    mtime: float
    fingerprint: str

    @property
    def file_name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def doc_id(dataset_id: str, version: str, uri: str) -> str:
    """Deterministic document id: a retried or repeated shard overwrites, never duplicates."""
    raw = f"{dataset_id}\x00{version}\x00{uri}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


@dataclass
class Tag:
    """A tag produced by a tagger. ``state`` keeps a requested state (e.g. raised/lowered)."""

    name: str
    score: float
    source: str = "model"
    state: str | None = None


@dataclass
class Hit:
    """One search result."""

    id: str
    uri: str
    file_name: str
    score: float
    dataset_id: str
    dataset_version: str
    width: int | None = None
    height: int | None = None
    format: str | None = None
    size: int | None = None
    mtime: float | None = None
    tags_ai: list[str] = field(default_factory=list)
    tags_user: list[str] = field(default_factory=list)
    thumbnail_uri: str | None = None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "uri": self.uri,
            "file_name": self.file_name,
            "score": round(float(self.score), 6),
            "tags": {"ai": list(self.tags_ai), "user": list(self.tags_user)},
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "size": self.size,
            "mtime": self.mtime,
            "dataset_id": self.dataset_id,
            "dataset_version": self.dataset_version,
            "thumbnail_uri": self.thumbnail_uri,
        }
