"""A logical dataset version: the files a manifest lists (an export's output), wherever they
live — local folders or S3 buckets, several roots in one list."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from imageindex.errors import SourceError
from imageindex.manifest import format_of, iter_rows, parse_int, parse_mtime
from imageindex.s3util import get_s3_client, parse_s3_uri, resolve_conn_id, s3_error
from imageindex.sources.base import Source, is_image_name
from imageindex.sources.local import local_path_from_uri, read_local_file
from imageindex.types import FileEntry

log = logging.getLogger(__name__)


def _s3_exceptions() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def normalize_uri(raw: str) -> str:
    """``s3://…`` as given; local paths and ``file:`` uris as ``file:///abs/path``."""
    if raw.startswith("s3://"):
        parse_s3_uri(raw)
        return raw
    if "://" in raw and not raw.startswith("file://"):
        raise SourceError(f"uri {raw!r}: only file:///…, absolute paths and s3://… are supported")
    path = local_path_from_uri(raw)
    if not os.path.isabs(raw) and not raw.startswith("file:"):
        raise SourceError(f"uri {raw!r} is a relative path; manifests hold absolute uris")
    return path.as_uri()


class ManifestSource(Source):
    """Files listed by the manifest at ``uri`` (local path or ``s3://``).

    Reads are allowed only for uris the manifest lists. Rows without ``size``/``mtime``/
    ``fingerprint`` are completed from the file itself (``stat`` or ``sha256`` locally, the
    ETag on S3), so a hand-written list of uris works too. Repeated uris are listed once.
    """

    def __init__(self, uri: str, *, s3_conn_id: str | None = None, fingerprint: str = "stat"):
        self.uri = uri
        self.format = format_of(uri)
        self.conn_id = resolve_conn_id(s3_conn_id)
        self.fingerprint = fingerprint
        self._client = None
        self._allowed: set[str] | None = None

    @property
    def client(self):
        if self._client is None:
            self._client = get_s3_client(self.conn_id)
        return self._client

    def _staging(self):
        from imageindex.staging import open_staging

        parent = self.uri.rsplit("/", 1)[0] if self.uri.startswith("s3://") else None
        if parent is None:
            return open_staging(str(local_path_from_uri(self.uri).parent)), self.uri
        return open_staging(parent, s3_conn_id=self.conn_id), self.uri

    def _rows(self) -> Iterator[tuple[int, dict]]:
        staging, uri = self._staging()
        try:
            with staging.input_file(uri) as path:
                yield from enumerate(iter_rows(path, self.format, label=uri), 1)
        except FileNotFoundError:
            raise SourceError(
                f"manifest {uri} does not exist; export the version again or fix its uri"
            ) from None

    def iter_files(self, page_size: int = 1000) -> Iterator[FileEntry]:
        seen: set[str] = set()
        for n, row in self._rows():
            where = f"manifest {self.uri}, row {n}"
            raw = row.get("uri")
            if not isinstance(raw, str) or not raw.strip():
                raise SourceError(f"{where}: missing 'uri'")
            uri = normalize_uri(raw.strip())
            if uri in seen:
                continue
            seen.add(uri)
            if not is_image_name(uri.rsplit("/", 1)[-1]):
                continue
            yield self._entry(uri, row, where)
        self._allowed = seen

    def _entry(self, uri: str, row: dict, where: str) -> FileEntry:
        size = parse_int(row.get("size"), field="size", where=where)
        mtime = parse_mtime(row.get("mtime"), where=where)
        fp = row.get("fingerprint") or None
        if size is None or mtime is None or fp is None:
            size, mtime, fp = self._stat(uri, size, mtime, fp)
        key = row.get("key") or (
            parse_s3_uri(uri)[1] if uri.startswith("s3://") else str(local_path_from_uri(uri))
        )
        return FileEntry(uri=uri, key=str(key).lstrip("/"), size=size, mtime=mtime, fingerprint=fp)

    def _stat(self, uri: str, size, mtime, fp) -> tuple[int, float, str]:
        if uri.startswith("s3://"):
            bucket, key = parse_s3_uri(uri)
            try:
                head = self.client.head_object(Bucket=bucket, Key=key)
            except _s3_exceptions() as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code")
                if code in ("404", "NoSuchKey", "NotFound"):
                    return self._missing(uri)
                raise s3_error(exc, uri=uri, conn_id=self.conn_id, action="read") from exc
            return (
                size if size is not None else int(head["ContentLength"]),
                mtime if mtime is not None else head["LastModified"].timestamp(),
                fp or f"etag:{head['ETag'].strip(chr(34))}",
            )
        path = local_path_from_uri(uri)
        try:
            st = path.stat()
        except FileNotFoundError:
            return self._missing(uri)
        except OSError as exc:
            raise SourceError(f"{path} (listed in {self.uri}): {exc.strerror or exc}") from exc
        if fp is None:
            from imageindex.sources.local import LocalSource

            fp = LocalSource(path.parent, fingerprint=self.fingerprint)._fingerprint(path, st)
        return (
            size if size is not None else st.st_size,
            mtime if mtime is not None else st.st_mtime,
            fp,
        )

    def _missing(self, uri: str) -> tuple[int, float, str]:
        # Listed anyway: its read then fails like any unreadable file — reported per file, not
        # indexed, and retried by the next run — instead of failing the whole plan.
        log.warning("%s is listed in the manifest %s but does not exist", uri, self.uri)
        return 0, 0.0, "missing:"

    def _check_listed(self, uri: str) -> None:
        if self._allowed is None:
            self._allowed = set()
            for _, row in self._rows():
                if isinstance(row.get("uri"), str) and row["uri"].strip():
                    self._allowed.add(normalize_uri(row["uri"].strip()))
        if uri not in self._allowed:
            raise SourceError(
                f"{uri} is not listed in the manifest {self.uri}; refusing to read it"
            )

    def read_bytes(self, uri: str) -> bytes:
        self._check_listed(uri)
        if uri.startswith("s3://"):
            bucket, key = parse_s3_uri(uri)
            try:
                return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
            except _s3_exceptions() as exc:
                raise s3_error(exc, uri=uri, conn_id=self.conn_id, action="read") from exc
        return read_local_file(local_path_from_uri(uri), since="the export")

    def check_available(self) -> None:
        staging, uri = self._staging()
        try:
            found = staging.exists(uri)
        except FileNotFoundError:
            found = False
        if not found:
            raise SourceError(
                f"manifest {uri} of a logical version does not exist or cannot be read; "
                "export the version again or fix its uri"
            )
