"""Which OpenSearch store a registry ``store:`` entry names: ``opensearch://``,
``opensearchs://`` or ``opensearch+conn://<airflow connection id>``, and the spec's options."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from imageindex.errors import ConfigError
from imageindex.stores.opensearch.client import client_for_conn_id, redact
from imageindex.stores.opensearch.store import OpenSearchStore

_CONN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
#: URI schemes :func:`from_uri` accepts, and the HTTP scheme each stands for.
URI_SCHEMES = {"opensearch": "http", "opensearchs": "https", "http": "http", "https": "https"}
CONN_SCHEME = "opensearch+conn"
#: Keys a registry ``store:`` spec may hold for this store (besides ``type`` and ``uri``).
SPEC_OPTIONS = (
    "index_prefix",
    "refresh",
    "bulk_chunk",
    "timeout",
    "verify_certs",
    "ca_certs",
    "force_merge",
    "shards",
    "replicas",
    "ef_search",
    "max_retries",
    "retry_on_conflict",
    "http_compress",
)


def is_opensearch_uri(uri: object) -> bool:
    """Whether ``uri`` names an OpenSearch store (``opensearch://``, ``opensearchs://`` or
    ``opensearch+conn://``)."""
    if not isinstance(uri, str) or "://" not in uri:
        return False
    return uri.split("://", 1)[0].lower() in ("opensearch", "opensearchs", CONN_SCHEME)


def from_uri(uri: str, spec: dict | None = None) -> OpenSearchStore:
    """The store a URI names: ``opensearch://host:port`` (HTTP), ``opensearchs://host:port``
    (HTTPS) or ``opensearch+conn://<airflow_conn_id>`` (looked up on first use through the
    OpenSearch provider; credentials belong there). ``spec`` holds :data:`SPEC_OPTIONS`
    (``type`` and ``uri`` are ignored)."""
    options = {k: v for k, v in dict(spec or {}).items() if k not in ("type", "uri")}
    unknown = sorted(set(options) - set(SPEC_OPTIONS))
    if unknown:
        raise ConfigError(
            f"store spec has unknown keys {unknown} for OpenSearch; valid keys: type, uri, "
            f"{list(SPEC_OPTIONS)}"
        )
    if not isinstance(uri, str) or "://" not in uri:
        raise ConfigError(
            f"store uri {uri!r} is not an OpenSearch uri; use opensearch://host:port, "
            "opensearchs://host:port or opensearch+conn://<airflow connection id>"
        )
    scheme, rest = uri.strip().split("://", 1)
    scheme = scheme.lower()
    if scheme == CONN_SCHEME:
        conn_id = rest.strip("/")
        if not _CONN_ID_RE.match(conn_id):
            raise ConfigError(
                f"store uri {uri!r}: {conn_id!r} is not an Airflow connection id; "
                "write opensearch+conn://opensearch_default"
            )
        tls = sorted({"verify_certs", "ca_certs", "http_compress"} & set(options))
        if tls:
            raise ConfigError(
                f"store spec keys {tls} do not apply to {uri!r}: set them in the extras of "
                f"Airflow connection {conn_id!r}"
            )
        timeout = options.get("timeout", 60)
        return OpenSearchStore(
            client_factory=lambda: client_for_conn_id(conn_id, timeout=timeout),
            where=f"Airflow connection {conn_id!r}",
            **options,
        )
    if scheme not in URI_SCHEMES:
        raise ConfigError(
            f"store uri scheme {scheme!r} is not OpenSearch's; use opensearch://, opensearchs://"
            " or opensearch+conn://"
        )
    parts = urlsplit(f"{URI_SCHEMES[scheme]}://{rest}")
    if parts.username or parts.password:
        raise ConfigError(
            "store uri must not carry credentials (they would end up in logs and the registry);"
            " use opensearch+conn://<airflow connection id> and keep them in the connection"
        )
    if not parts.hostname:
        raise ConfigError(f"store uri {redact(uri)!r} has no host; write opensearch://host:9200")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(
            f"store uri {redact(uri)!r}: a path or query is not supported; set index names "
            "with the spec's index_prefix"
        )
    url = f"{parts.scheme}://{parts.netloc}"
    return OpenSearchStore(url=url, **options)
