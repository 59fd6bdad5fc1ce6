"""Connection ids resolved to credentials: the one module that reads Airflow connections.

S3 (:mod:`imageindex.s3util`, where the Amazon provider's ``S3Hook`` is not installed), the
hosted model services (:mod:`imageindex.hosted`) and OpenSearch
(:mod:`imageindex.stores.opensearch`) name a connection id; :func:`get_credentials` (or
:func:`find_connection`, which answers None for a connection defined nowhere) turns it into
:class:`Credentials`.

Where Airflow is installed the connection comes from ``airflow.sdk.BaseHook.get_connection``
(any secrets backend, the environment included); without Airflow, or where its lookup fails
outside a task, it is read from the environment variable ``AIRFLOW_CONN_<CONN_ID>`` in Airflow's
JSON or URI form, e.g.::

    AIRFLOW_CONN_DASHSCOPE_DEFAULT='{"conn_type": "generic",
        "host": "https://dashscope-intl.aliyuncs.com/api/v1", "password": "sk-..."}'
    AIRFLOW_CONN_MY_S3='aws://KEY:SECRET@/?endpoint_url=http%3A%2F%2F127.0.0.1%3A8333'

Airflow is imported at the first lookup, never at import time: the library works without it.
Unlike Airflow's own URI parser, a URI's path stays part of ``host`` (``https://h/api/v1``).

Every secret read here (the password, and ``api_key``, ``token`` or ``aws_session_token`` in
``extra``) is registered with Airflow's secrets masker and with :func:`redact`, so text that
passes through :func:`redact` or the :class:`SecretsFilter` never shows it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from imageindex.errors import ConfigError

log = logging.getLogger(__name__)

MASK = "***"
# Shorter strings would turn ordinary words into "***" in every message.
_MIN_SECRET_LENGTH = 4
#: Keys of ``extra`` that hold secrets (masked like the password).
SECRET_EXTRAS = ("api_key", "token", "aws_session_token")

_secrets_lock = threading.Lock()
_secrets: set[str] = set()


class Credentials:
    """A resolved connection; reads like Airflow's ``Connection`` (``host``, ``login``,
    ``password``, ``port``, ``schema``, ``extra_dejson``), but ``repr`` and ``str`` never show a
    secret and it cannot be pickled."""

    __slots__ = ("conn_id", "conn_type", "host", "login", "port", "schema", "extra", "_password")

    def __init__(
        self,
        conn_id: str,
        *,
        host: str | None = None,
        password: str | None = None,
        login: str | None = None,
        port: int | None = None,
        schema: str | None = None,
        extra: dict[str, Any] | None = None,
        conn_type: str | None = None,
    ):
        self.conn_id = conn_id
        self.conn_type = conn_type or None
        self.host = host or None
        self.login = login or None
        self.port = port
        self.schema = schema or None
        self.extra = dict(extra or {})
        self._password = password or None

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def extra_dejson(self) -> dict[str, Any]:
        """``extra`` under the name Airflow's ``Connection`` gives it."""
        return self.extra

    @property
    def api_key(self) -> str | None:
        """The password, else ``extra.api_key``, else ``extra.token`` (hosted services)."""
        return self._password or self.extra.get("api_key") or self.extra.get("token")

    def require_key(self, service: str) -> str:
        key = self.api_key
        if not key:
            raise ConfigError(
                f"Airflow connection {self.conn_id!r} has no API key for {service}: put the key "
                "in the connection's password field"
            )
        return key

    def __repr__(self) -> str:
        key = MASK if self.api_key else None
        return f"Credentials(conn_id={self.conn_id!r}, host={self.host!r}, key={key!r})"

    __str__ = __repr__

    def __reduce__(self):
        # Pickling would write the key into whatever stores the pickle (XCom, a cache file).
        raise TypeError("Credentials are not picklable; pass the connection id instead")


def get_credentials(
    conn_id: str,
    *,
    service: str = "the model service",
    fields: str = "host = the service URL, password = the API key",
) -> Credentials:
    """Resolve ``conn_id`` now (call it lazily: at the first request, not at DAG parse time).

    A connection defined nowhere is a :class:`ConfigError` that says how to define it; ``fields``
    tells which fields ``service`` reads.
    """
    check_conn_id(conn_id, service)
    creds = find_connection(conn_id)
    if creds is None:
        var = env_var(conn_id)
        raise ConfigError(
            f"Airflow connection {conn_id!r} for {service} is not defined: create it ({fields}), "
            f"or outside Airflow set {var} to Airflow's JSON or URI form, e.g. "
            '\'{"conn_type": "generic", "host": "...", "password": "..."}\''
        )
    return creds


def find_connection(conn_id: str) -> Credentials | None:
    """``conn_id`` from Airflow, else from ``AIRFLOW_CONN_<CONN_ID>``; None when neither has it.

    A variable that is set but malformed is a :class:`ConfigError` naming it (never its value).
    """
    check_conn_id(conn_id)
    creds = _from_airflow(conn_id)
    if creds is None:
        creds = _from_env(conn_id)
    if creds is not None:
        for value in (creds.password, *(creds.extra.get(k) for k in SECRET_EXTRAS)):
            if isinstance(value, str):
                register_secret(value, conn_id)
    return creds


def check_conn_id(conn_id: object, service: str = "a connection") -> None:
    if not isinstance(conn_id, str) or not conn_id.strip():
        raise ConfigError(f"{service}: conn_id must be a non-empty string, got {conn_id!r}")


def env_var(conn_id: str) -> str:
    """The environment variable Airflow reads connection ``conn_id`` from."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def _from_airflow(conn_id: str) -> Credentials | None:
    try:
        from airflow.sdk import BaseHook
    except ImportError:
        return None
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:  # noqa: BLE001 - not found, or no secrets backend outside a worker
        # The message may quote a connection URI; keep only the type.
        log.debug("Airflow lookup of connection %r failed (%s)", conn_id, type(exc).__name__)
        return None
    extra: dict[str, Any] = {}
    raw_extra = getattr(conn, "extra", None)
    if raw_extra:
        try:
            extra = json.loads(raw_extra) if isinstance(raw_extra, str) else dict(raw_extra)
        except ValueError:
            raise ConfigError(
                f"Airflow connection {conn_id!r}: 'extra' is not valid JSON; fix it in "
                "Admin -> Connections"
            ) from None
    return Credentials(
        conn_id,
        conn_type=getattr(conn, "conn_type", None),
        host=conn.host,
        password=conn.password,
        login=conn.login,
        port=conn.port,
        schema=conn.schema,
        extra=extra,
    )


def _from_env(conn_id: str) -> Credentials | None:
    var = env_var(conn_id)
    raw = os.environ.get(var, "").strip()
    if not raw:
        return None
    conn = parse_connection(raw, var)
    return Credentials(
        conn_id,
        conn_type=conn.get("conn_type"),
        host=conn.get("host"),
        password=conn.get("password"),
        login=conn.get("login"),
        port=conn.get("port"),
        schema=conn.get("schema"),
        extra=conn["extra"],
    )


def parse_connection(raw: str, var: str) -> dict[str, Any]:
    """An ``AIRFLOW_CONN_*`` value (JSON object or URI) as a dict with ``extra`` a dict and
    ``port`` an int or None. Errors name ``var`` and never quote the value (it holds secrets)."""
    raw = raw.strip()
    if raw.startswith("{"):
        try:
            conn = json.loads(raw)
        except ValueError as exc:
            # The value holds the secret: name the variable and the position, never the text.
            raise ConfigError(f"{var} is not valid JSON (at position {exc.pos})") from None
    else:
        conn = _parse_uri(raw, var)
    extra = conn.get("extra") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except ValueError:
            raise ConfigError(f"{var}: 'extra' is a string but not valid JSON") from None
    if not isinstance(extra, dict):
        raise ConfigError(f"{var}: 'extra' must be a JSON object")
    port = conn.get("port")
    try:
        port = int(port) if port not in (None, "") else None
    except (TypeError, ValueError):
        raise ConfigError(f"{var}: 'port' must be an integer") from None
    return {**conn, "extra": extra, "port": port}


def _parse_uri(raw: str, var: str) -> dict[str, Any]:
    parts = urlsplit(raw)
    if not parts.scheme or "://" not in raw:
        raise ConfigError(
            f"{var} is neither a JSON connection nor a URI like scheme://login:password@host"
        )
    extra: dict[str, Any] = dict(parse_qsl(parts.query))
    if "__extra__" in extra:
        try:
            extra = json.loads(extra["__extra__"])
        except ValueError:
            raise ConfigError(f"{var}: '__extra__' is not valid JSON") from None
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{var}: the URI's port is not a number") from None
    host = unquote(parts.hostname) + parts.path.rstrip("/") if parts.hostname else None
    return {
        "conn_type": parts.scheme,
        "login": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "host": host,
        "port": port,
        "extra": extra,
    }


def base_url(creds: Credentials, *, default: str | None = None) -> str:
    """The service URL of a connection: ``extra.base_url``, else ``host`` (+ ``port``).

    ``host`` should be a full URL. One without a scheme gets the connection's ``schema`` when that
    is ``http`` or ``https`` (the Airflow HTTP connection convention), else ``https://``
    (``http://`` for 127.0.0.1 and localhost).
    """
    url = creds.extra.get("base_url") or creds.host
    if not url:
        if default is None:
            raise ConfigError(
                f"Airflow connection {creds.conn_id!r} has no host: set it to the service URL"
            )
        return default
    url = str(url).strip()
    if "://" not in url:
        hostname = url.split("/", 1)[0].split(":", 1)[0]
        if creds.schema in ("http", "https"):
            scheme = creds.schema
        else:
            scheme = "http" if hostname in ("127.0.0.1", "localhost") else "https"
        url = f"{scheme}://{url}"
    parts = urlsplit(url)
    if creds.port and parts.port is None:
        url = url.replace(parts.netloc, f"{parts.netloc}:{creds.port}", 1)
    return url


# ------------------------------------------------------------------------------------------------
# masking


def register_secret(secret: str, conn_id: str | None = None) -> None:
    """Hide ``secret`` from :func:`redact`, the :class:`SecretsFilter` and Airflow's task logs."""
    if not secret or len(secret) < _MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        if secret in _secrets:
            return
        _secrets.add(secret)
    install_log_filter()
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:
        return
    try:
        mask_secret(secret, conn_id)
    except Exception as exc:  # noqa: BLE001 - masking is best effort outside a task
        log.debug("Airflow mask_secret unavailable (%s)", type(exc).__name__)


def redact(text: object) -> str:
    """``str(text)`` with every registered secret replaced by ``***``."""
    out = str(text)
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, MASK)
    return out


def has_secret(text: str) -> bool:
    with _secrets_lock:
        return any(secret in text for secret in _secrets)


class SecretsFilter(logging.Filter):
    """Rewrites log records that contain a registered secret (message, arguments, traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is the handler's problem
            return True
        if has_secret(message):
            record.msg = redact(message)
            record.args = None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if has_secret(text):
                record.exc_text = redact(text)
        elif record.exc_text and has_secret(record.exc_text):
            record.exc_text = redact(record.exc_text)
        return True


_filter = SecretsFilter()
# Logger-level filters see only records created on that very logger, so each logger that may
# handle a key's neighbourhood gets one, and so do the root handlers (propagated records).
_FILTERED_LOGGERS = (
    "imageindex",
    "imageindex.hosted.http",
    "imageindex.connections",
    "imageindex.embedders.dashscope",
    "imageindex.embedders.gme",
    "imageindex.taggers.qwen_vl",
    "dashscope",
    "urllib3.connectionpool",
    "requests",
)


def install_log_filter() -> None:
    """Attach the :class:`SecretsFilter` to our loggers and the root handlers (idempotent)."""
    for name in _FILTERED_LOGGERS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)
    for handler in logging.getLogger().handlers:
        if _filter not in handler.filters:
            handler.addFilter(_filter)
