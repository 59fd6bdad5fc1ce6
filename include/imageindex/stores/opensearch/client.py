"""OpenSearch clients: from a URL, from an Airflow ``Connection``, or from a connection id
(Airflow's, else ``AIRFLOW_CONN_<ID>``; :mod:`imageindex.connections`), and what their errors
say. Nothing touches the network before the first request."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from imageindex.connections import get_credentials
from imageindex.errors import ConfigError

try:  # opensearch-py is an optional dependency: only this store needs it
    import opensearchpy
except ImportError:  # pragma: no cover - exercised only without the package
    opensearchpy = None


def as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false (got {value!r})")


def redact(url: str) -> str:
    """``scheme://host:port``: never the credentials a URL may carry."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def error_reason(info: Any) -> str:
    """The most specific reason an OpenSearch error body gives."""
    if not isinstance(info, dict):
        return str(info)[:500] if info else ""
    err = info.get("error", info)
    if isinstance(err, dict):
        root = err.get("root_cause") or []
        if root and isinstance(root[0], dict) and root[0].get("reason"):
            err = root[0]
        typ, reason = err.get("type", ""), err.get("reason", "")
        caused = err.get("caused_by")
        if isinstance(caused, dict) and caused.get("reason"):
            reason = f"{reason} ({caused['reason']})"
        return f"{typ}: {reason}" if typ else str(reason)
    return str(err)[:500]


def require_opensearchpy() -> None:
    if opensearchpy is None:
        raise ConfigError(
            "the OpenSearch store needs the opensearch-py package: pip install opensearch-py"
        )


def build_client(
    url: str,
    *,
    http_auth: tuple[str, str] | None = None,
    verify_certs: bool = True,
    ca_certs: str | None = None,
    timeout: float = 60,
    http_compress: bool = False,
):
    """An ``opensearchpy.OpenSearch`` for ``url`` (``http(s)://host:port``); connects lazily.

    ``http_compress`` gzips request bodies. Off by default: opensearch-py compresses at level 9,
    which shrank vector bulks only 2.4-fold at 7.6 MB/s of one core (5,000 x 384 documents:
    5.8 s of gzip against 1.5 s of JSON) - slower than any LAN; turn it on for a slow link."""
    require_opensearchpy()
    kwargs: dict[str, Any] = {
        "hosts": [url],
        "verify_certs": verify_certs,
        "timeout": timeout,
        "http_compress": http_compress,
    }
    if http_auth is not None:
        kwargs["http_auth"] = tuple(http_auth)
    if ca_certs:
        kwargs["ca_certs"] = ca_certs
    if not verify_certs:
        kwargs["ssl_show_warn"] = False
    return opensearchpy.OpenSearch(**kwargs)


def client_from_connection(conn, *, timeout: float | None = None):
    """An OpenSearch client for an Airflow ``Connection`` (host, port, login, password, extras
    ``use_ssl``, ``verify_certs``, ``ca_certs``, ``timeout``, ``url_prefix``, ``http_compress``).

    Unlike the provider's hook, certificates are verified unless the extras say
    ``"verify_certs": false``.
    """
    require_opensearchpy()
    extra = dict(getattr(conn, "extra_dejson", None) or {})
    host = (conn.host or "").strip()
    if not host:
        raise ConfigError(
            f"Airflow connection {conn.conn_id!r} has no host; set it to the OpenSearch endpoint"
        )
    scheme = extra.get("scheme")
    if "://" in host:
        parts = urlsplit(host)
        scheme = scheme or parts.scheme
        host = parts.hostname or host
    if scheme is None:
        scheme = "https" if as_bool("use_ssl", extra.get("use_ssl", False)) else "http"
    if scheme not in ("http", "https"):
        raise ConfigError(
            f"Airflow connection {conn.conn_id!r}: scheme {scheme!r} must be http or https"
        )
    port = conn.port or (443 if scheme == "https" else 9200)
    kwargs: dict[str, Any] = {
        "hosts": [{"host": host, "port": int(port)}],
        "use_ssl": scheme == "https",
        "verify_certs": as_bool("verify_certs", extra.get("verify_certs", True)),
        "timeout": float(extra.get("timeout") or timeout or 60),
        "http_compress": as_bool("http_compress", extra.get("http_compress", False)),
    }
    if not kwargs["verify_certs"]:
        kwargs["ssl_show_warn"] = False
    if extra.get("ca_certs"):
        kwargs["ca_certs"] = extra["ca_certs"]
    if extra.get("url_prefix"):
        kwargs["url_prefix"] = extra["url_prefix"]
    if conn.login:
        kwargs["http_auth"] = (conn.login, conn.password or "")
    return opensearchpy.OpenSearch(**kwargs)


def client_for_conn_id(conn_id: str, *, timeout: float | None = None):
    """The client of connection ``conn_id`` (Airflow, else ``AIRFLOW_CONN_<ID>``; see
    :mod:`imageindex.connections`)."""
    conn = get_credentials(
        conn_id, service="OpenSearch", fields="host = the endpoint, login/password if any"
    )
    return client_from_connection(conn, timeout=timeout)
