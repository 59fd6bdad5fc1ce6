"""Vector stores. ``open_store`` turns a store URI or a registry ``store:`` spec into a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imageindex.errors import ConfigError
from imageindex.stores.base import Filter, VectorStore, table_name

STORE_TYPES = ("lancedb", "opensearch")
_OPENSEARCH_SCHEMES = ("opensearch://", "opensearchs://", "opensearch+conn://")
#: What a ``store:`` spec may hold besides ``type`` and ``uri``.
_OPTIONS = {
    "storage_options",
    "index_min_rows",
    "index_partitions",
    "write_batch_rows",
    "delete_batch_ids",
    "file_lock",
    "exact_search_min_rows",
    "refine_factor",
    "ef",
    "max_retries",
}
_VALID_URIS = "a local directory path, file:///abs/path, lancedb:///abs/path or s3://bucket/prefix"


def resolve_store_uri(uri: str) -> str:
    """A URI LanceDB understands: an absolute local path or ``s3://bucket/prefix``."""
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"store uri {uri!r} is empty; use {_VALID_URIS}")
    uri = uri.strip()
    for prefix in ("lancedb://", "file://"):
        if uri.startswith(prefix):
            path = uri[len(prefix) :]
            if not path.startswith("/"):
                raise ConfigError(
                    f"store uri {uri!r} must name an absolute path ({prefix}/abs/path)"
                )
            return path
    if uri.startswith("s3://"):
        if len(uri) <= len("s3://") or uri[len("s3://")] == "/":
            raise ConfigError(f"store uri {uri!r} has no bucket; use s3://bucket/prefix")
        return uri.rstrip("/")
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise ConfigError(f"store uri {uri!r}: unsupported scheme {scheme!r}; use {_VALID_URIS}")
    return str(Path(uri).expanduser().absolute())


def open_store(uri: str | None = None, *, spec: dict | None = None) -> VectorStore:
    """Open the store at ``uri`` or described by ``spec`` (``{type: lancedb, uri: ..., ...}``).

    ``uri`` wins over ``spec["uri"]``; the spec's other keys (``storage_options`` for S3
    credentials and endpoint, index settings) are passed to the store.
    """
    from imageindex.stores.lancedb import LanceDBStore

    spec = dict(spec or {})
    target = uri if uri is not None else spec.get("uri")
    # The registry fills in type "lancedb" when none is given, so the URI scheme decides too.
    if spec.get("type") == "opensearch" or str(target).startswith(_OPENSEARCH_SCHEMES):
        from imageindex.stores.opensearch import from_uri

        return from_uri(target, spec)
    kind = spec.pop("type", "lancedb")
    if kind not in STORE_TYPES:
        raise ConfigError(f"store type {kind!r} is not supported; valid types: {list(STORE_TYPES)}")
    spec_uri = spec.pop("uri", None)
    unknown = sorted(set(spec) - _OPTIONS)
    if unknown:
        raise ConfigError(
            f"store spec has unknown keys {unknown}; valid keys: type, uri, {sorted(_OPTIONS)}"
        )
    chosen = uri if uri is not None else spec_uri
    if chosen is None:
        raise ConfigError(f"no store uri given; set store.uri to {_VALID_URIS}")
    options: dict[str, Any] = dict(spec)
    storage_options = options.pop("storage_options", None)
    if storage_options is not None:
        if not isinstance(storage_options, dict):
            raise ConfigError("store.storage_options must be a mapping of strings")
        storage_options = {str(k): str(v) for k, v in storage_options.items()}
    return LanceDBStore(resolve_store_uri(str(chosen)), storage_options=storage_options, **options)


__all__ = ["Filter", "VectorStore", "open_store", "resolve_store_uri", "table_name", "STORE_TYPES"]
