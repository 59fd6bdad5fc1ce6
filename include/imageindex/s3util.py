"""S3 clients and ``s3://`` URIs.

Clients come from an Airflow connection (``IMAGEINDEX_S3_CONN_ID``, default ``aws_default``)
through the Amazon provider's ``S3Hook``, so a worker, the CLI and the tests share one way to
configure S3: ``endpoint_url`` in the connection extras points it at SeaweedFS, MinIO, OSS, ...
Outside Airflow a connection can be given as an environment variable::

    AIRFLOW_CONN_MY_S3='{"conn_type": "aws", "login": "KEY", "password": "SECRET",
                         "extra": {"endpoint_url": "http://127.0.0.1:8333", "region_name": "us-east-1"}}'

Where the Amazon provider is not installed, :mod:`imageindex.connections` resolves the connection
(Airflow, else that variable, JSON or URI) and it is handed to boto3.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

from imageindex.connections import Credentials, env_var, find_connection
from imageindex.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

DEFAULT_CONN_ID = "aws_default"

# Loose on purpose: S3-compatible stores accept names AWS would refuse (upper case, underscores).
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

_clients: dict[tuple[int, str], Any] = {}
_clients_lock = threading.Lock()


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")`` (no leading slash).

    A trailing slash is kept: callers decide whether the prefix is a folder or an object key.
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ConfigError(f"{uri!r} is not an S3 URI; write it as s3://bucket/prefix")
    # Not urlsplit: object keys may legitimately hold '?', '#' or '%'.
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ConfigError(f"S3 URI {uri!r} has no bucket name; write it as s3://bucket/prefix")
    if not _BUCKET_RE.match(bucket):
        raise ConfigError(
            f"S3 URI {uri!r}: bucket name {bucket!r} holds characters a bucket name cannot have"
        )
    return bucket, prefix.lstrip("/")


def has_dot_segments(key: str) -> bool:
    """``.`` or ``..`` path segments: S3 keeps them literally, but HTTP layers (and SeaweedFS'
    filer) may collapse them, so such a key could reach outside the prefix it seems to be in."""
    return any(seg in (".", "..") for seg in key.split("/"))


def resolve_conn_id(conn_id: str | None = None) -> str:
    return conn_id or os.environ.get("IMAGEINDEX_S3_CONN_ID") or DEFAULT_CONN_ID


def get_s3_client(conn_id: str | None = None):
    """A boto3 S3 client for the Airflow connection ``conn_id``, one per connection and process.

    boto3 clients are thread-safe, so threads share one; the process id is part of the cache key
    because a forked worker must not reuse its parent's connection pool.
    """
    conn_id = resolve_conn_id(conn_id)
    key = (os.getpid(), conn_id)
    client = _clients.get(key)
    if client is not None:
        return client
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _make_client(conn_id)
            _clients[key] = client
    return client


def clear_client_cache() -> None:
    """Forget cached clients (after a connection's settings changed, e.g. in tests)."""
    with _clients_lock:
        _clients.clear()


def _make_client(conn_id: str):
    try:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    except ImportError:
        log.debug("Airflow Amazon provider not importable; resolving connection %s", conn_id)
        return client_from_connection(conn_id)
    # S3Hook resolves AIRFLOW_CONN_<ID> outside a running Airflow too; an unknown connection
    # falls back to boto3's default credential chain (env vars, ~/.aws, instance role).
    return S3Hook(aws_conn_id=conn_id).get_conn()


def client_from_connection(conn_id: str):
    """A boto3 client for ``conn_id`` as :mod:`imageindex.connections` resolves it (Airflow, else
    ``AIRFLOW_CONN_<CONN_ID>`` in JSON or URI form), without the Amazon provider.

    A connection defined nowhere leaves boto3's default credential chain, as with ``S3Hook``.
    """
    import boto3

    creds = find_connection(conn_id)
    kwargs = {} if creds is None else boto3_kwargs(creds)
    return boto3.session.Session().client("s3", **kwargs)


def boto3_kwargs(creds: Credentials) -> dict[str, Any]:
    """boto3 client arguments from an AWS-style connection: login/password are the access key
    pair; ``extra`` may hold ``endpoint_url`` (else ``host``), ``region_name``,
    ``aws_session_token`` and ``config_kwargs`` (a botocore ``Config``)."""
    extra = creds.extra
    kwargs: dict[str, Any] = {}
    if creds.login:
        kwargs["aws_access_key_id"] = creds.login
    if creds.password:
        kwargs["aws_secret_access_key"] = creds.password
    if extra.get("aws_session_token"):
        kwargs["aws_session_token"] = extra["aws_session_token"]
    endpoint = extra.get("endpoint_url") or creds.host
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if extra.get("region_name"):
        kwargs["region_name"] = extra["region_name"]
    if extra.get("config_kwargs"):
        from botocore.config import Config

        kwargs["config"] = Config(**extra["config_kwargs"])
    return kwargs


def iter_objects(client, bucket: str, prefix: str, page_size: int = 1000) -> Iterator[dict]:
    """Every object under ``prefix`` (ListObjectsV2 entries), one page of ``page_size`` at a time.

    Not botocore's paginator: SeaweedFS 4.x answers ``IsTruncated=false`` when a full page ends on
    a folder marker (a ``.../`` key) whose folder holds more objects, which silently cuts the
    listing short, and a short listing makes finalize delete documents. So a page ending on a
    ``/`` key is always followed by one more request starting after it; on AWS S3 that request
    comes back empty.
    """
    base = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    kwargs: dict[str, Any] = dict(base)
    while True:
        page = client.list_objects_v2(**kwargs)
        contents = page.get("Contents") or []
        yield from contents
        last = contents[-1]["Key"] if contents else None
        if page.get("IsTruncated"):
            token = page.get("NextContinuationToken")
            if token:
                kwargs = {**base, "ContinuationToken": token}
                continue
            if last is None:
                raise SourceError(
                    f"S3 listing of s3://{bucket}/{prefix} is truncated but gave no way to go on"
                )
            kwargs = {**base, "StartAfter": last}
        elif last is not None and last.endswith("/"):
            if kwargs.get("StartAfter") == last:
                return
            kwargs = {**base, "StartAfter": last}
        else:
            return


def s3_error(exc: BaseException, *, uri: str, conn_id: str, action: str) -> SourceError:
    """Turn a botocore exception into a SourceError that says what to fix.

    botocore messages name the operation and the error code, never the credentials, so they are
    safe to pass on.
    """
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    bucket = parse_s3_uri(uri)[0] if uri.startswith("s3://") else "?"
    conn = f"Airflow connection {conn_id!r}"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return SourceError(
            f"cannot {action} {uri}: no S3 credentials; define {conn} "
            f"(e.g. env {env_var(conn_id)}) with login/password or an IAM role"
        )
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return SourceError(
            f"cannot {action} {uri}: the S3 endpoint is unreachable ({exc}); "
            f"check endpoint_url in {conn} and that the server is up"
        )
    if isinstance(exc, ReadTimeoutError | ConnectionClosedError):
        return SourceError(
            f"cannot {action} {uri}: the S3 endpoint did not answer ({exc}); check that the "
            f"server behind {conn} is up and not overloaded"
        )
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return SourceError(
                f"S3 bucket {bucket!r} does not exist (cannot {action} {uri} with {conn}); "
                "create the bucket or fix the uri"
            )
        if code in ("NoSuchKey", "404"):
            return SourceError(f"cannot {action} {uri}: no such object in bucket {bucket!r}")
        if (
            code
            in (
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "403",
            )
            or status == 403
        ):
            return SourceError(
                f"cannot {action} {uri}: access denied ({code}); check the credentials and "
                f"permissions of {conn} on bucket {bucket!r}"
            )
        return SourceError(f"cannot {action} {uri} with {conn}: {code}: {err.get('Message', exc)}")
    return SourceError(f"cannot {action} {uri} with {conn}: {type(exc).__name__}: {exc}")
