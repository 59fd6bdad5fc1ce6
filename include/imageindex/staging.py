"""Intermediate files of pipeline runs, in a local folder or under an ``s3://`` prefix.

Every write is atomic: a reader (a retried task, the next stage) sees the old file, the new file,
or no file, never a partial one. Locally a temporary file in the same folder is renamed over the
target; on S3 a PUT is atomic by itself.

Local URIs may be given as plain paths or ``file:///`` URIs; they are handed back as absolute
paths. Every URI must lie under the staging root (ConfigError otherwise), so a wrong argument
cannot delete files elsewhere. A prefix given to :meth:`Staging.list`, :meth:`Staging.exists` or
:meth:`Staging.delete_prefix` is a folder: ``runs/a`` never matches ``runs/ab``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from imageindex.errors import ConfigError, SourceError
from imageindex.s3util import (
    get_s3_client,
    has_dot_segments,
    iter_objects,
    parse_s3_uri,
    resolve_conn_id,
    s3_error,
)
from imageindex.sources.local import local_path_from_uri

#: Temporary files end with this; listings skip them (a crashed writer may leave one behind).
TMP_SUFFIX = ".imageindex-tmp"


def _clean_parts(parts: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for part in parts:
        for seg in str(part).split("/"):
            if seg in ("", "."):
                continue
            if seg == "..":
                raise ConfigError(f"staging path part {part!r} holds '..'; it must stay under root")
            out.append(seg)
    return out


class Staging(ABC):
    """Files under ``root``: bytes, JSON and Parquet."""

    root: str

    def join(self, *parts: str) -> str:
        """The uri of ``parts`` under the root (``..`` refused)."""
        return "/".join([self.root.rstrip("/"), *_clean_parts(parts)])

    @abstractmethod
    def write_bytes(self, uri: str, data: bytes) -> None: ...

    @abstractmethod
    def read_bytes(self, uri: str) -> bytes:
        """Raises FileNotFoundError when nothing is stored at ``uri``."""

    def write_json(self, uri: str, obj: Any) -> None:
        self.write_bytes(uri, json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8"))

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    @abstractmethod
    def create_bytes(self, uri: str, data: bytes) -> bool:
        """Write ``data`` at ``uri`` only if nothing is there, atomically: of two writers racing
        for the same uri exactly one gets True; the other gets False and the file is unchanged."""

    def create_json(self, uri: str, obj: Any) -> bool:
        return self.create_bytes(uri, json.dumps(obj, indent=2, ensure_ascii=False).encode())

    @abstractmethod
    def write_parquet(self, uri: str, table: pa.Table) -> None: ...

    @abstractmethod
    def read_parquet(self, uri: str, columns: list[str] | None = None) -> pa.Table: ...

    @abstractmethod
    def parquet_writer(self, uri: str, schema: pa.Schema) -> contextlib.AbstractContextManager:
        """A ``pyarrow.parquet.ParquetWriter`` (``write_batch``, ``write_table``) whose file
        appears at ``uri`` only when the ``with`` block exits cleanly."""

    @abstractmethod
    def output_file(self, uri: str) -> contextlib.AbstractContextManager[str]:
        """Yield a local temporary path; when the block ends cleanly its content appears at
        ``uri`` in one step (rename, or one upload on S3); on error nothing appears."""

    @abstractmethod
    def input_file(self, uri: str) -> contextlib.AbstractContextManager[str]:
        """Yield a local path holding the content of ``uri`` (S3: a temporary download)."""

    @abstractmethod
    def exists(self, uri: str) -> bool:
        """A file at ``uri``, or a folder holding at least one file."""

    @abstractmethod
    def delete_prefix(self, uri: str) -> int:
        """Delete the file at ``uri`` or everything under the folder ``uri``; return the count."""

    @abstractmethod
    def list(self, prefix_uri: str) -> Iterator[str]:
        """Uris of the files under the folder ``prefix_uri``, recursively.

        Local folders list in S3 key order; S3 stores in theirs (AWS: key order; SeaweedFS:
        a folder's files before the next sibling).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"


class LocalStaging(Staging):
    def __init__(self, root: str | os.PathLike):
        self._root = local_path_from_uri(root)
        self.root = str(self._root)

    def _path(self, uri: str | os.PathLike) -> Path:
        path = local_path_from_uri(uri)
        if not path.is_relative_to(self._root):
            raise ConfigError(f"{os.fspath(uri)} is outside the staging root {self.root}")
        return path

    @contextlib.contextmanager
    def _atomic_tmp(self, path: Path) -> Iterator[str]:
        """Yield a new temporary file next to ``path``; it is removed afterwards if still there."""
        if path == self._root:
            raise ConfigError(f"cannot write a file over the staging root {self.root}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        # Not mkstemp: its 0600 mode would survive the rename; this honours the umask like open().
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            yield tmp
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @contextlib.contextmanager
    def _atomic(self, path: Path) -> Iterator[str]:
        """Yield a temporary path next to ``path``; rename it over ``path`` on a clean exit."""
        with self._atomic_tmp(path) as tmp:
            yield tmp
            os.replace(tmp, path)

    def write_bytes(self, uri: str, data: bytes) -> None:
        with self._atomic(self._path(uri)) as tmp, open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            # Without fsync a crash after the rename can leave an empty file under the final name.
            os.fsync(f.fileno())

    def read_bytes(self, uri: str) -> bytes:
        return self._path(uri).read_bytes()

    def create_bytes(self, uri: str, data: bytes) -> bool:
        path = self._path(uri)
        with self._atomic_tmp(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                # link() of the complete file fails if the name exists: create-if-absent with
                # no moment where a reader sees half a file (also on NFS, unlike O_EXCL).
                os.link(tmp, path)
            except FileExistsError:
                return False
        return True

    def write_parquet(self, uri: str, table: pa.Table) -> None:
        with self._atomic(self._path(uri)) as tmp:
            pq.write_table(table, tmp)

    def read_parquet(self, uri: str, columns: list[str] | None = None) -> pa.Table:
        # ParquetFile, not read_table: no dataset discovery, no partition columns from the path.
        with pq.ParquetFile(self._path(uri)) as pf:
            return pf.read(columns=columns)

    @contextlib.contextmanager
    def parquet_writer(self, uri: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
        with self._atomic(self._path(uri)) as tmp:
            writer = pq.ParquetWriter(tmp, schema)
            try:
                yield writer
            finally:
                writer.close()

    @contextlib.contextmanager
    def output_file(self, uri: str) -> Iterator[str]:
        with self._atomic(self._path(uri)) as tmp:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())

    @contextlib.contextmanager
    def input_file(self, uri: str) -> Iterator[str]:
        path = self._path(uri)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        yield str(path)

    def exists(self, uri: str) -> bool:
        path = self._path(uri)
        if path.is_dir():
            return next(iter(self.list(str(path))), None) is not None
        return path.exists()

    def delete_prefix(self, uri: str) -> int:
        path = self._path(uri)
        if path.is_file() or path.is_symlink():
            path.unlink()
            return 1
        if not path.is_dir():
            return 0
        count = sum(len(files) for _, _, files in os.walk(path))
        if path == self._root:
            # Keep the root itself: it may be a mount point or made by someone else.
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        else:
            shutil.rmtree(path)
        return count

    def list(self, prefix_uri: str) -> Iterator[str]:
        top = self._path(prefix_uri)
        if top.is_dir():
            yield from self._walk_sorted(str(top))

    def _walk_sorted(self, folder: str) -> Iterator[str]:
        # Sorted like AWS S3 keys ("a.txt" < "a/x" < "b"): the same listing on either backend.
        with os.scandir(folder) as it:
            entries = sorted(
                ((e.name + "/" if e.is_dir(follow_symlinks=False) else e.name), e) for e in it
            )
        for key, entry in entries:
            if key.endswith("/"):
                yield from self._walk_sorted(entry.path)
            elif not key.endswith(TMP_SUFFIX):
                yield entry.path


class S3Staging(Staging):
    #: Keys per DeleteObjects request (the S3 maximum).
    DELETE_BATCH = 1000

    def __init__(self, root: str, *, conn_id: str | None = None, client=None):
        self.bucket, prefix = parse_s3_uri(root)
        self.prefix = prefix.strip("/")
        self.root = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.conn_id = resolve_conn_id(conn_id)
        self._client = client

    @property
    def client(self):
        if self._client is None:
            self._client = get_s3_client(self.conn_id)
        return self._client

    def _key(self, uri: str) -> str:
        """The object key of ``uri`` with no trailing slash ("" for a bucket-wide root)."""
        bucket, key = parse_s3_uri(uri)
        key = key.rstrip("/")
        inside = (
            bucket == self.bucket
            and (not self.prefix or key == self.prefix or key.startswith(self.prefix + "/"))
            and not has_dot_segments(key)
        )
        if not inside:
            raise ConfigError(f"{uri} is outside the staging root {self.root}")
        return key

    def _error(self, exc: BaseException, uri: str, action: str) -> SourceError:
        return s3_error(exc, uri=uri, conn_id=self.conn_id, action=action)

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def write_bytes(self, uri: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(uri)
        if not key:
            raise ConfigError(f"cannot write a file over the staging root {self.root}")
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, uri, "write") from exc

    def create_bytes(self, uri: str, data: bytes) -> bool:
        """S3 conditional write (``If-None-Match: *``): AWS S3 and SeaweedFS answer 412 when
        the key exists. A store that ignores the header makes this last-writer-wins; callers
        that need one winner read the object back as well."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(uri)
        if not key:
            raise ConfigError(f"cannot write a file over the staging root {self.root}")
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise self._error(exc, uri, "write") from exc
        except BotoCoreError as exc:
            raise self._error(exc, uri, "write") from exc
        return True

    def read_bytes(self, uri: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(uri)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"{uri} does not exist in staging") from None
            raise self._error(exc, uri, "read") from exc
        except BotoCoreError as exc:
            raise self._error(exc, uri, "read") from exc

    def write_parquet(self, uri: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(uri, sink.getvalue().to_pybytes())

    def read_parquet(self, uri: str, columns: list[str] | None = None) -> pa.Table:
        with pq.ParquetFile(pa.BufferReader(self.read_bytes(uri))) as pf:
            return pf.read(columns=columns)

    @contextlib.contextmanager
    def parquet_writer(self, uri: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(uri)
        if not key:
            raise ConfigError(f"cannot write a file over the staging root {self.root}")
        # A local temporary file keeps memory flat for big listings; one upload at the end is
        # atomic on S3 (upload_file switches to multipart for large files).
        fd, tmp = tempfile.mkstemp(prefix="imageindex-", suffix=".parquet")
        os.close(fd)
        try:
            writer = pq.ParquetWriter(tmp, schema)
            try:
                yield writer
            finally:
                writer.close()
            try:
                self.client.upload_file(tmp, self.bucket, key)
            except (BotoCoreError, ClientError) as exc:
                raise self._error(exc, uri, "write") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @contextlib.contextmanager
    def output_file(self, uri: str) -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(uri)
        if not key:
            raise ConfigError(f"cannot write a file over the staging root {self.root}")
        fd, tmp = tempfile.mkstemp(prefix="imageindex-out-")
        os.close(fd)
        try:
            yield tmp
            try:  # an object becomes visible only when its (multipart) upload completes
                self.client.upload_file(tmp, self.bucket, key)
            except (BotoCoreError, ClientError) as exc:
                raise self._error(exc, uri, "write") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @contextlib.contextmanager
    def input_file(self, uri: str) -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(uri)
        fd, tmp = tempfile.mkstemp(prefix="imageindex-in-")
        os.close(fd)
        try:
            try:
                self.client.download_file(self.bucket, key, tmp)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    raise FileNotFoundError(f"{uri} does not exist") from None
                raise self._error(exc, uri, "read") from exc
            except BotoCoreError as exc:
                raise self._error(exc, uri, "read") from exc
            yield tmp
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _head(self, key: str, uri: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return False
            raise self._error(exc, uri, "check") from exc
        except BotoCoreError as exc:
            raise self._error(exc, uri, "check") from exc

    def exists(self, uri: str) -> bool:
        key = self._key(uri)
        if key and self._head(key, uri):
            return True
        return next(self._iter_keys(key, uri, page_size=1), None) is not None

    def _iter_keys(self, key: str, uri: str, page_size: int = 1000) -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for obj in iter_objects(self.client, self.bucket, f"{key}/" if key else "", page_size):
                yield obj["Key"]
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, uri, "list") from exc

    def delete_prefix(self, uri: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(uri)
        keys: Iterator[str] = self._iter_keys(key, uri)
        if key and self._head(key, uri):
            # The file itself, if there is one; listing "key/" does not return it.
            keys = itertools.chain([key], keys)
        count = 0
        batch: list[str] = []
        try:
            for k in keys:
                batch.append(k)
                if len(batch) >= self.DELETE_BATCH:
                    count += self._delete_batch(batch, uri)
                    batch = []
            if batch:
                count += self._delete_batch(batch, uri)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, uri, "delete") from exc
        return count

    def _delete_batch(self, keys: list[str], uri: str) -> int:
        resp = self.client.delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
        )
        errors = resp.get("Errors") or []
        if errors:
            first = errors[0]
            raise SourceError(
                f"could not delete {len(errors)} object(s) under {uri}, e.g. "
                f"{self._uri(first.get('Key', '?'))}: {first.get('Code')}: {first.get('Message')}"
            )
        return len(keys)

    def list(self, prefix_uri: str) -> Iterator[str]:
        for k in self._iter_keys(self._key(prefix_uri), prefix_uri):
            yield self._uri(k)


def open_staging(root: str, *, s3_conn_id: str | None = None) -> Staging:
    """A local folder (path or ``file:///``) or an ``s3://bucket/prefix`` staging root."""
    if not isinstance(root, str | os.PathLike) or not os.fspath(root).strip():
        raise ConfigError("the staging root is empty; set IMAGEINDEX_STAGING to a folder or s3://…")
    text = os.fspath(root)
    if text.startswith("s3://"):
        return S3Staging(text, conn_id=s3_conn_id)
    if "://" in text and not text.startswith("file://"):
        raise ConfigError(
            f"staging root {text!r}: only a folder, file:///… or s3://bucket/prefix is supported"
        )
    return LocalStaging(text)
