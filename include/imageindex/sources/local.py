"""A folder on a local disk or a mounted share (NFS, SMB, a Docker volume, ...)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_from_bytes, unquote_to_bytes, urlsplit

from imageindex.errors import ConfigError, SourceError
from imageindex.sources.base import FINGERPRINTS, Source, is_image_name
from imageindex.types import FileEntry

log = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20


def local_path_from_uri(uri: str | os.PathLike) -> Path:
    """``file:///abs/p%20q`` or a plain path -> an absolute :class:`Path` (``..`` collapsed).

    Inverse of ``Path.as_uri()``, including names that are not valid UTF-8.
    """
    text = os.fspath(uri)
    if text.startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(
                f"{text!r} names host {parts.netloc!r}; only local file:/// URIs are supported "
                "(mount the share and use its local path)"
            )
        # as_uri() percent-encodes the file system bytes, so decode back to bytes, not to UTF-8.
        text = os.fsdecode(unquote_to_bytes(parts.path))
        if not text.startswith("/"):
            raise ConfigError(f"{uri!r} is not an absolute file URI; write file:///abs/folder")
    # abspath, not resolve(): a root reached through a symlink keeps its name, and the
    # inside-the-root check on reads stays lexical, like the listing.
    return Path(os.path.abspath(text))


def read_local_file(path: Path, *, since: str = "the listing") -> bytes:
    """The bytes of ``path``; a missing or unreadable file is a SourceError saying which."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"{path} does not exist (deleted since {since}?)") from None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc


def sha256_file(path: Path | str) -> tuple[str, int]:
    """``("sha256:<hex>", size)`` of a file, read in 1 MiB chunks (never whole in memory)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        raise SourceError(f"{path} does not exist (deleted since the listing?)") from None
    except OSError as exc:
        raise SourceError(
            f"cannot read {path} to hash it: {exc.strerror or exc}; fix its permissions"
        ) from exc
    return f"sha256:{digest.hexdigest()}", size


class LocalSource(Source):
    """Every image under a folder. Hidden entries are skipped; directory symlinks are not followed
    (no loops, no escaping the root), symlinked files are listed."""

    def __init__(self, root: str | os.PathLike, *, fingerprint: str = "stat"):
        if fingerprint not in FINGERPRINTS:
            raise ConfigError(
                f"fingerprint {fingerprint!r} is not one of {', '.join(FINGERPRINTS)} "
                f"(source {os.fspath(root)})"
            )
        self.root = local_path_from_uri(root)
        self.uri = self.root.as_uri()
        self.fingerprint = fingerprint

    def iter_files(self, page_size: int = 1000) -> Iterator[FileEntry]:
        # page_size only matters for S3; a local folder is read one directory at a time.
        stack: list[tuple[str, str]] = [(str(self.root), "")]
        while stack:
            dir_path, rel = stack.pop()
            subdirs: list[tuple[str, str]] = []
            for entry in self._scan(dir_path):
                name = entry.name
                if name.startswith("."):
                    continue
                if not _utf8(name):
                    # Such a name cannot be stored as a key or URI downstream (UTF-8 everywhere).
                    log.warning("skipping %r in %s: name is not valid UTF-8", name, dir_path)
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append((entry.path, f"{rel}{name}/"))
                        continue
                    if not is_image_name(name) or not entry.is_file():
                        continue
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # removed while listing (or a dangling symlink): it is gone indeed
                except OSError as exc:
                    raise SourceError(
                        f"cannot stat {entry.path}: {exc.strerror or exc}; fix its permissions "
                        "or remove it (skipping it would count it as deleted)"
                    ) from exc
                yield FileEntry(
                    # Path(p).as_uri() for an absolute POSIX path, without building a Path per
                    # file (a third of the listing time at a million files)
                    uri="file://" + quote_from_bytes(os.fsencode(entry.path)),
                    key=rel + name,
                    size=st.st_size,
                    mtime=st.st_mtime,
                    fingerprint=self._fingerprint(entry.path, st),
                )
            stack.extend(reversed(subdirs))

    def _scan(self, dir_path: str) -> list[os.DirEntry]:
        is_root = dir_path == str(self.root)
        try:
            with os.scandir(dir_path) as it:
                # One directory's names are held to sort them (determinism); never the whole tree.
                return sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            if is_root:
                raise SourceError(self._missing_message()) from None
            return []  # removed while listing: its files are gone indeed
        except NotADirectoryError:
            if is_root:
                raise SourceError(
                    f"source {self.root} is a file, not a folder; point the source at its folder"
                ) from None
            return []
        except PermissionError:
            raise SourceError(
                f"cannot list folder {dir_path}: permission denied; grant read and execute "
                "permission to the user running imageindex (skipping the folder would count "
                "its files as deleted)"
            ) from None
        except OSError as exc:
            raise SourceError(
                f"cannot list folder {dir_path}: {exc.strerror or exc}; check the mount"
            ) from exc

    def _fingerprint(self, path: Path | str, st: os.stat_result) -> str:
        if self.fingerprint == "stat":
            return f"stat:{st.st_size}-{st.st_mtime_ns}"
        return sha256_file(path)[0]

    def content_fingerprint(self, uri: str) -> tuple[str, int]:
        return sha256_file(self._inside(uri))

    def read_bytes(self, uri: str) -> bytes:
        return read_local_file(self._inside(uri))

    def _inside(self, uri: str) -> Path:
        path = local_path_from_uri(uri)
        if path == self.root or not path.is_relative_to(self.root):
            raise SourceError(
                f"{uri} is outside the source folder {self.root}; refusing to read it"
            )
        return path

    def check_available(self) -> None:
        try:
            if not self.root.exists():
                raise SourceError(self._missing_message())
            if not self.root.is_dir():
                raise SourceError(
                    f"source {self.root} is a file, not a folder; point the source at its folder"
                )
            with os.scandir(self.root) as it:
                next(it, None)
        except PermissionError:
            raise SourceError(
                f"cannot list source folder {self.root}: permission denied; grant read and "
                "execute permission to the user running imageindex"
            ) from None
        except OSError as exc:
            raise SourceError(
                f"cannot list source folder {self.root}: {exc.strerror or exc}; check the mount"
            ) from exc

    def _missing_message(self) -> str:
        return (
            f"source folder {self.root} does not exist or is not mounted; mount it or fix the "
            "source path in the registry"
        )


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
