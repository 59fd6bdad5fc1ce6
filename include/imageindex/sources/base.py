"""What every source offers: a streamed recursive listing, reads, and an availability check."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator

from imageindex.types import IMAGE_EXTENSIONS, FileEntry

FINGERPRINTS = ("stat", "sha256")


def is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS


class Source(ABC):
    """A folder or bucket prefix of images.

    ``uri`` is the normalized root: ``file:///abs/dir`` or ``s3://bucket/prefix/``.
    """

    uri: str

    @abstractmethod
    def iter_files(self, page_size: int = 1000) -> Iterator[FileEntry]:
        """Every image file under the root, recursively, yielded as the listing proceeds."""

    @abstractmethod
    def read_bytes(self, uri: str) -> bytes:
        """The content of one file; a uri outside this source's root is refused (SourceError)."""

    def content_fingerprint(self, uri: str) -> tuple[str, int]:
        """``("sha256:<hex>", bytes read)`` of one file's content (compared across versions)."""
        data = self.read_bytes(uri)
        return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)

    @abstractmethod
    def check_available(self) -> None:
        """Raise SourceError saying what to fix when the folder or bucket cannot be listed.

        An empty listing from a missing mount would otherwise look like "every file deleted".
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
