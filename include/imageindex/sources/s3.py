"""A bucket prefix on S3 or an S3-compatible store (SeaweedFS, MinIO, OSS, ...)."""

from __future__ import annotations

from collections.abc import Iterator

from imageindex.errors import SourceError
from imageindex.s3util import (
    get_s3_client,
    has_dot_segments,
    iter_objects,
    parse_s3_uri,
    resolve_conn_id,
    s3_error,
)
from imageindex.sources.base import Source, is_image_name
from imageindex.types import FileEntry


def _s3_exceptions() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


class S3Source(Source):
    """Every image object under ``s3://bucket/prefix``.

    The prefix is a folder: ``s3://b/a`` and ``s3://b/a/`` both list ``a/...`` and never
    ``ab/...``. Keys ending in ``/`` (folder markers) are skipped.
    """

    def __init__(self, uri: str, *, conn_id: str | None = None, client=None):
        self.bucket, prefix = parse_s3_uri(uri)
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.uri = f"s3://{self.bucket}/{self.prefix}"
        self.conn_id = resolve_conn_id(conn_id)
        self._client = client

    @property
    def client(self):
        # Resolved on first use: building a source must not need Airflow or the network.
        if self._client is None:
            self._client = get_s3_client(self.conn_id)
        return self._client

    def iter_files(self, page_size: int = 1000) -> Iterator[FileEntry]:
        errors = _s3_exceptions()
        n = len(self.prefix)
        try:
            for obj in iter_objects(self.client, self.bucket, self.prefix, page_size):
                key = obj["Key"]
                if key.endswith("/") or not is_image_name(key.rsplit("/", 1)[-1]):
                    continue
                etag = obj["ETag"].strip('"')
                yield FileEntry(
                    uri=f"s3://{self.bucket}/{key}",
                    key=key[n:],
                    size=int(obj["Size"]),
                    mtime=obj["LastModified"].timestamp(),
                    fingerprint=f"etag:{etag}",
                )
        except errors as exc:
            raise s3_error(exc, uri=self.uri, conn_id=self.conn_id, action="list") from exc

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = parse_s3_uri(uri)
        if (
            bucket != self.bucket
            or not key.startswith(self.prefix)
            or key == self.prefix
            or has_dot_segments(key)
        ):
            raise SourceError(f"{uri} is outside the source {self.uri}; refusing to read it")
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except _s3_exceptions() as exc:
            raise s3_error(exc, uri=uri, conn_id=self.conn_id, action="read") from exc

    def check_available(self) -> None:
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except _s3_exceptions() as exc:
            raise s3_error(exc, uri=self.uri, conn_id=self.conn_id, action="list") from exc
