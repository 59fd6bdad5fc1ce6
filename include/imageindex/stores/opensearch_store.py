"""OpenSearch implementation of :class:`~imageindex.stores.base.VectorStore`.

One index per dataset, ``<index_prefix>-images-<dataset id, lowercased>``, created with the
mapping :func:`index_body` returns; ``_meta`` records the embedder's model and dim (and the exact
dataset id), so a mismatching embedder is refused before anything is written.

Design decisions:

- **Engine**: HNSW on the ``lucene`` engine with ``cosinesimil``. It runs the filter inside the
  k-NN search (efficient filtering, OpenSearch 2.4+) and switches to exact search by itself when
  the filter leaves few documents, so "top k of the filtered set" holds for selective filters.
  Faiss filters efficiently too (2.9+) but changed its cosine score formula in 2.19, and lucene's
  has never changed.
- **Scores**: lucene scores cosinesimil as ``(1 + cos) / 2``; hits carry ``2 * score - 1``, the
  cosine in [-1, 1], so scores and thresholds mean the same as on LanceDB.
- **Failed documents** are stored without a vector: cosinesimil rejects zero vectors, and vector
  search must never return them anyway (every k-NN query also filters on ``status = ok``).
- **User tags**: every row is an ``update`` with ``doc_as_upsert``: the row's columns, nulls
  included, are merged into the stored document, and a null ``tags_user`` is left out so the
  stored one stays. The merge runs on the shard under the document's version check (no
  read-then-write window in which a user's tag could be lost), an unchanged document is a cheap
  ``noop``, and no script runs: 30 % less node CPU than the Painless upsert it replaced
  (0.74 against 1.06 s per 1,000 new 384-d documents on OpenSearch 2.19).
- **Rejected documents**: :meth:`OpenSearchStore.upsert` writes every chunk, sends again the
  items OpenSearch was too busy for (429) or whose update kept losing a race (409, after the
  node's own ``retry_on_conflict``), counted in ``stats``, then raises :class:`BulkWriteError`
  (a StoreError) naming the rejected ids and reasons; the rest have landed. ``last_errors``
  keeps the list.
- **Refresh**: writes wait for the next refresh by default (``refresh="wait_for"``), so reads
  see them; bulk loaders can pass ``refresh=False`` and rely on :meth:`~OpenSearchStore.optimize`
  (which the indexing DAG's finalize step runs) to refresh once at the end.
- **Dates** are mapped as ``date`` (millisecond precision in queries and sorting); ``_source``
  keeps the microseconds, so documents and hits read back exactly what was written.
- The managed-service schema's ``file_meta_id`` and ``index_set_id`` are field aliases of ``id``
  and ``dataset_id``. ``file_vector`` is not aliased: k-NN queries against an alias silently
  return nothing on current releases (opensearch-project/k-NN#3484).

The client is an ``opensearchpy.OpenSearch`` given to the constructor, built from a URL, or
built on first use from an Airflow connection (:func:`from_uri` with ``opensearch+conn://``).
Nothing here imports Airflow at module level, and nothing touches the network before the first
store call.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from imageindex.connections import get_credentials
from imageindex.errors import ConfigError, EmptyIndexError, StoreError
from imageindex.query import from_filter
from imageindex.stores.base import (
    HIT_COLUMNS,
    Filter,
    VectorStore,
    check_model_dim,
    check_positive_ints,
    check_same_model,
    chunks,
    conform_rows,
    hit_from_row,
    parse_date,
    query_vector,
    select_columns,
    table_name,
)
from imageindex.stores.opensearch.compile import compile_opensearch
from imageindex.stores.schema import STATE_COLUMNS, STATUS_OK, document_schema
from imageindex.types import Hit

try:  # opensearch-py is an optional dependency: only this store needs it
    import opensearchpy
except ImportError:  # pragma: no cover - exercised only without the package
    opensearchpy = None

log = logging.getLogger(__name__)

ENGINE = "lucene"
SPACE_TYPE = "cosinesimil"
VECTOR_FIELD = "vector"
#: OpenSearch's default index.max_result_window and the k-NN plugin's largest k.
MAX_PAGE = 10_000
#: Neighbours a k-NN query asks the graph for when no ef_search is set. The lucene engine
#: searches with ef = k, and k = 11 found 0.925 of the exact top 10 over 4,000 random 16-d
#: vectors on OpenSearch 2.19 (1.0 with 100; tests/stores/test_opensearch_live.py).
KNN_CANDIDATES = 100
DATE_FORMAT = "strict_date_optional_time||epoch_millis"
#: Text columns are sorted and matched exactly through this keyword subfield.
TEXT_KEYWORD = {"file_name": "file_name.keyword", "error": "error.keyword"}
#: What ``_meta.created_by`` says in indexes this module created.
CREATED_BY = "imageindex"

DOC_COLUMNS = [f.name for f in document_schema(1) if f.name != VECTOR_FIELD]
_DATE_COLUMNS = frozenset({"mtime", "indexed_at"})
_STATE_SCHEMA = pa.schema([document_schema(1).field(c) for c in STATE_COLUMNS])

# ctx.op = 'none' makes an unchanged document a "noop", which is how changes are counted.
ADD_USER_TAGS = (
    "List cur = ctx._source.tags_user == null ? new ArrayList() "
    ": new ArrayList(ctx._source.tags_user); "
    "boolean changed = false; "
    "for (def t : params.tags) { if (!cur.contains(t)) { cur.add(t); changed = true; } } "
    "if (changed) { ctx._source.tags_user = cur; } else { ctx.op = 'none'; }"
)
REMOVE_USER_TAGS = (
    "if (ctx._source.tags_user == null) { ctx.op = 'none'; } else { "
    "List out = new ArrayList(); "
    "for (def t : ctx._source.tags_user) { if (!params.tags.contains(t)) { out.add(t); } } "
    "if (out.size() != ctx._source.tags_user.size()) { ctx._source.tags_user = out; } "
    "else { ctx.op = 'none'; } }"
)

_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
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


class BulkWriteError(StoreError):
    """Some documents of an upsert were rejected; the others were written.

    ``errors``: ``[{"id", "status", "type", "reason"}]`` per rejected document; ``written``: how
    many documents landed.
    """

    def __init__(self, message: str, *, errors: list[dict], written: int):
        super().__init__(message)
        self.errors = errors
        self.written = written


# --------------------------------------------------------------------------------------------
# Index layout


def _knn_field(dim: int) -> dict:
    return {
        "type": "knn_vector",
        "dimension": dim,
        "method": {
            "name": "hnsw",
            # Inside "method" rather than at the top level: the top-level form is 2.17+ only.
            "space_type": SPACE_TYPE,
            "engine": ENGINE,
            "parameters": {"m": 16, "ef_construction": 128},
        },
    }


def index_properties(dim: int) -> dict:
    """The field mappings of a dataset index (what :mod:`imageindex.stores.opensearch.compile`
    expects)."""
    keyword = {"type": "keyword"}
    # No ignore_above: a longer value would be silently unmatchable.
    text = {"type": "text", "fields": {"keyword": {"type": "keyword"}}}
    date = {"type": "date", "format": DATE_FORMAT}
    return {
        "id": keyword,
        "dataset_id": keyword,
        "dataset_version": keyword,
        "uri": keyword,
        "key": keyword,
        "file_name": text,
        "size": {"type": "long"},
        "mtime": date,
        "fingerprint": keyword,
        "status": keyword,
        "error": text,
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "format": keyword,
        "mode": keyword,
        "tags_ai": keyword,
        "tags_user": keyword,
        # Only read back, never queried: kept in _source, neither indexed nor in doc values.
        "tags_detail": {"type": "keyword", "index": False, "doc_values": False},
        "tag_definitions_hash": keyword,
        "thumbnail_uri": keyword,
        "model": keyword,
        "dim": {"type": "integer"},
        VECTOR_FIELD: _knn_field(dim),
        "indexed_at": date,
        # The managed multimodal service's names for the same fields.
        "file_meta_id": {"type": "alias", "path": "id"},
        "index_set_id": {"type": "alias", "path": "dataset_id"},
    }


def index_body(
    dataset_id: str,
    model: str,
    dim: int,
    *,
    shards: int | None = None,
    replicas: int | None = None,
) -> dict:
    """The body of the create-index request for ``dataset_id``."""
    settings: dict[str, Any] = {"knn": True}
    if shards is not None:
        settings["number_of_shards"] = shards
    if replicas is not None:
        settings["number_of_replicas"] = replicas
    return {
        "settings": {"index": settings},
        "mappings": {
            # Strict: a misspelt column is a rejected document, not a new field in the mapping.
            "dynamic": "strict",
            "_meta": {
                "created_by": CREATED_BY,
                "model": model,
                "dim": dim,
                "dataset_id": dataset_id,
            },
            "properties": index_properties(dim),
        },
    }


# --------------------------------------------------------------------------------------------
# Conversions


def _iso(value: datetime) -> str:
    # Always six fraction digits: OpenSearch keeps milliseconds, _source keeps the rest.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _row(src: dict, columns: Sequence[str]) -> dict:
    row = {c: src.get(c) for c in columns}
    for c in _DATE_COLUMNS.intersection(columns):
        row[c] = parse_date(row[c])
    return row


def to_cosine(score: float) -> float:
    """Cosine similarity from lucene's cosinesimil score ``(1 + cos) / 2``."""
    return max(-1.0, min(1.0, 2.0 * float(score) - 1.0))


def to_os_score(cosine: float) -> float:
    """lucene's cosinesimil score of a cosine similarity."""
    return (1.0 + float(cosine)) / 2.0


def _unique_ids(ids: Sequence[str]) -> list[str]:
    out = list(dict.fromkeys(ids))
    for i in out:
        if not isinstance(i, str):
            raise ConfigError(f"document id {i!r} must be a string, not {type(i).__name__}")
    return out


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false (got {value!r})")


def _redact(url: str) -> str:
    """``scheme://host:port``: never the credentials a URL may carry."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _reason(info: Any) -> str:
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


#: Stands for a document's vector until its bulk line is text. The vector is the document's last
#: key, so the last occurrence of the token in the line is the vector's (nothing after it holds
#: stored values).
_VEC_TOKEN = "\x00vector\x00"
_VEC_JSON = json.dumps(_VEC_TOKEN)


def _ndjson(lines: list[dict]) -> str:
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)


def _vector_texts(column: pa.ChunkedArray) -> list[str | None]:
    """Each vector as a JSON array, None where null. ``%.9g`` gives every float32 back exactly
    and is 3x faster than json.dumps of the widened doubles, 40 % shorter (5,000 x 384: 0.6 s
    against 1.9 s, 26 MB against 42 MB)."""
    arr = column.combine_chunks()
    n, dim = len(arr), arr.type.list_size
    values = arr.values.to_numpy(zero_copy_only=False)
    values = values[arr.offset * dim : (arr.offset + n) * dim].reshape(n, dim)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    fmt = "[" + ",".join(["%.9g"] * dim) + "]"
    return [fmt % tuple(v) if ok else None for v, ok in zip(values.tolist(), valid, strict=True)]


# --------------------------------------------------------------------------------------------
# Clients


def _require_opensearchpy() -> None:
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
    _require_opensearchpy()
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
    _require_opensearchpy()
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
        scheme = "https" if _as_bool("use_ssl", extra.get("use_ssl", False)) else "http"
    if scheme not in ("http", "https"):
        raise ConfigError(
            f"Airflow connection {conn.conn_id!r}: scheme {scheme!r} must be http or https"
        )
    port = conn.port or (443 if scheme == "https" else 9200)
    kwargs: dict[str, Any] = {
        "hosts": [{"host": host, "port": int(port)}],
        "use_ssl": scheme == "https",
        "verify_certs": _as_bool("verify_certs", extra.get("verify_certs", True)),
        "timeout": float(extra.get("timeout") or timeout or 60),
        "http_compress": _as_bool("http_compress", extra.get("http_compress", False)),
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


# --------------------------------------------------------------------------------------------
# The store


class OpenSearchStore(VectorStore):
    """A store in an OpenSearch cluster (2.9 or later, with the k-NN plugin).

    Give ``client`` (an ``opensearchpy.OpenSearch``), ``url`` (``http(s)://host:port``; with
    ``http_auth=(user, password)``, ``verify_certs``, ``ca_certs``) or ``client_factory`` (called
    once, on first use). ``refresh``: ``"wait_for"`` (writes are visible when the call returns),
    ``True`` (force a refresh: tests only) or ``False`` (visible after the next refresh or
    :meth:`optimize`). ``bulk_chunk``: documents per bulk request. ``timeout``: seconds per
    request. ``force_merge``: :meth:`optimize` also merges each shard down to one segment (slow;
    for indexes that no longer change). ``ef_search``: HNSW search breadth, sent with every
    k-NN query (OpenSearch 2.16+); None asks the graph for at least :data:`KNN_CANDIDATES`
    neighbours instead (any 2.x), ``size`` still limits the hits. ``retry_on_conflict``: how
    often the node re-runs a scripted update that lost a race before the store sends it again.
    """

    def __init__(
        self,
        client=None,
        *,
        url: str | None = None,
        index_prefix: str = "imageindex",
        refresh: str | bool = "wait_for",
        bulk_chunk: int = 500,
        timeout: float = 60,
        http_auth: tuple[str, str] | None = None,
        verify_certs: bool = True,
        ca_certs: str | None = None,
        client_factory: Callable[[], Any] | None = None,
        force_merge: bool = False,
        shards: int | None = None,
        replicas: int | None = None,
        ef_search: int | None = None,
        max_retries: int = 3,
        retry_base_delay: float = 0.5,
        retry_on_conflict: int = 3,
        http_compress: bool = False,
        where: str | None = None,
    ):
        given = [x for x in (client, url, client_factory) if x is not None]
        if len(given) != 1:
            raise ConfigError(
                "OpenSearchStore needs exactly one of client, url or client_factory "
                f"(got {len(given)})"
            )
        if not isinstance(index_prefix, str) or not _PREFIX_RE.match(index_prefix):
            raise ConfigError(
                f"index_prefix {index_prefix!r} is invalid: use 1-100 characters from a-z, 0-9,"
                " '_' and '-', starting with a letter or digit"
            )
        if isinstance(refresh, str) and refresh.lower() in ("true", "false"):
            refresh = refresh.lower() == "true"
        if refresh not in ("wait_for", True, False):
            raise ConfigError(f"refresh must be 'wait_for', true or false (got {refresh!r})")
        check_positive_ints(bulk_chunk=bulk_chunk, max_retries=max_retries)
        for name, value in (
            ("shards", shards),
            ("replicas", replicas),
            ("ef_search", ef_search),
            ("retry_on_conflict", retry_on_conflict),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ConfigError(f"store setting {name} must be a whole number (got {value!r})")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(f"store setting timeout must be positive seconds (got {timeout!r})")
        if url is not None:
            _require_opensearchpy()
            scheme = urlsplit(url).scheme if isinstance(url, str) else None
            if scheme not in ("http", "https") or not urlsplit(url).hostname:
                raise ConfigError(
                    f"OpenSearch url {_redact(str(url))!r} must look like https://host:9200"
                )
            self.where = _redact(url)
        else:
            self.where = where or ("Airflow connection" if client_factory else "OpenSearch client")
        self.index_prefix = index_prefix
        self.refresh = refresh
        self.bulk_chunk = bulk_chunk
        self.timeout = timeout
        self.force_merge = _as_bool("force_merge", force_merge)
        self.shards = shards
        self.replicas = replicas
        self.ef_search = ef_search
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.retry_on_conflict = retry_on_conflict
        #: items sent again: ``busy_retries`` (HTTP 429) and ``conflict_retries`` (HTTP 409)
        self.stats: dict[str, int] = {"busy_retries": 0, "conflict_retries": 0}
        self._client = client
        self._factory = client_factory
        if url is not None:
            self._factory = lambda: build_client(
                url,
                http_auth=http_auth,
                verify_certs=_as_bool("verify_certs", verify_certs),
                ca_certs=ca_certs,
                timeout=timeout,
                http_compress=_as_bool("http_compress", http_compress),
            )
        #: index name -> (model, dim) of indexes this store has checked
        self._known: dict[str, tuple[str | None, int]] = {}
        #: index name -> why vector search on it is refused (None: it is fine)
        self._problems: dict[str, str | None] = {}
        #: per-document errors of the last upsert
        self.last_errors: list[dict] = []

    def __repr__(self) -> str:
        return f"OpenSearchStore({self.where!r}, index_prefix={self.index_prefix!r})"

    @property
    def client(self):
        if self._client is None:
            self._client = self._factory()
        return self._client

    def index_name(self, dataset_id: str) -> str:
        """The index of ``dataset_id`` (validated like every table name)."""
        table_name(dataset_id)
        return f"{self.index_prefix}-images-{dataset_id.lower()}"

    # ---------------------------------------------------------------------------- plumbing

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, its OpenSearch errors turned into StoreErrors that say what to check."""
        _require_opensearchpy()
        try:
            return fn()
        except opensearchpy.ConnectionError as exc:
            raise StoreError(
                f"{what}: cannot reach OpenSearch at {self.where} ({type(exc).__name__}); check "
                "the store uri or connection and that the cluster is up"
            ) from exc
        except opensearchpy.AuthenticationException as exc:
            raise StoreError(
                f"{what}: OpenSearch at {self.where} refused the credentials (HTTP 401); check "
                "the connection's login and password"
            ) from exc
        except opensearchpy.AuthorizationException as exc:
            raise StoreError(
                f"{what}: the OpenSearch user lacks a permission (HTTP 403): "
                f"{_reason(exc.info)}; grant it on {self.index_prefix}-images-*"
            ) from exc
        except opensearchpy.TransportError as exc:
            raise StoreError(
                f"{what} failed (HTTP {exc.status_code}): {_reason(exc.info) or exc.error}"
            ) from exc

    def _get_index(self, name: str) -> dict | None:
        """The settings and mappings of index ``name``, None when it does not exist."""

        def get():
            try:
                return self.client.indices.get(index=name, request_timeout=self.timeout)
            except opensearchpy.NotFoundError:
                return None

        found = self._call(f"reading index {name}", get)
        if found is None:
            return None
        if len(found) != 1:
            raise StoreError(
                f"{name} names {len(found)} indexes ({sorted(found)}); point the store at one "
                "index (change index_prefix)"
            )
        return next(iter(found.values()))

    def _describe(self, dataset_id: str, name: str, raw: dict) -> tuple[str | None, int]:
        """(model, dim) of an existing index; refuses one this store cannot search correctly."""
        mappings = raw.get("mappings") or {}
        meta = mappings.get("_meta") or {}
        props = mappings.get("properties") or {}
        vec = props.get(VECTOR_FIELD) or {}
        if vec.get("type") != "knn_vector":
            raise StoreError(
                f"index {name} has no knn_vector field {VECTOR_FIELD!r}, so it was not made for "
                "imageindex; use another index_prefix or delete the index"
            )
        if meta.get("dataset_id") not in (None, dataset_id):
            raise ConfigError(
                f"index {name} holds dataset {meta['dataset_id']!r}, not {dataset_id!r}: dataset"
                " ids that differ only in case share an index name; rename one of them"
            )
        dim = int(vec.get("dimension") or 0)
        model = meta.get("model")
        if model is None:
            # A hand-made index: its documents still say which model wrote them.
            model = self._stored_model(name)
        return model, dim

    @staticmethod
    def _search_problems(name: str, raw: dict) -> str | None:
        """Why vector search on this index would not give cosine scores; None when it would."""
        vec = (raw.get("mappings") or {}).get("properties", {}).get(VECTOR_FIELD) or {}
        method = vec.get("method") or {}
        space = vec.get("space_type") or method.get("space_type")
        engine = method.get("engine")
        knn = str(((raw.get("settings") or {}).get("index") or {}).get("knn", "false")).lower()
        problems = []
        if knn != "true":
            problems.append("index.knn is not enabled")
        if space != SPACE_TYPE:
            problems.append(f"space_type is {space or 'the default (l2)'}, not {SPACE_TYPE}")
        if engine != ENGINE:
            problems.append(f"engine is {engine or 'the default'}, not {ENGINE}")
        if not problems:
            return None
        return (
            f"index {name} cannot give cosine scores comparable with other stores: "
            + "; ".join(problems)
            + ". Re-create it (delete it and run ensure_table) or use another index_prefix"
        )

    def _stored_model(self, name: str) -> str | None:
        body = {"size": 1, "query": {"exists": {"field": "model"}}, "_source": ["model"]}
        resp = self._call(
            f"reading index {name}",
            lambda: self.client.search(index=name, body=body, request_timeout=self.timeout),
        )
        hits = resp.get("hits", {}).get("hits", [])
        return hits[0].get("_source", {}).get("model") if hits else None

    def _info(self, dataset_id: str, *, fresh: bool = False) -> tuple[str | None, int] | None:
        name = self.index_name(dataset_id)
        if not fresh and name in self._known:
            return self._known[name]
        raw = self._get_index(name)
        if raw is None:
            self._known.pop(name, None)
            return None
        info = self._describe(dataset_id, name, raw)
        self._known[name] = info
        self._problems[name] = self._search_problems(name, raw)
        return info

    def _require(self, dataset_id: str) -> tuple[str | None, int]:
        info = self._info(dataset_id)
        if info is None:
            raise StoreError(
                f"dataset {dataset_id!r} has no index {self.index_name(dataset_id)} in "
                f"OpenSearch at {self.where}; call ensure_table() first (the indexing DAG does)"
            )
        return info

    def _require_for_search(self, dataset_id: str) -> tuple[str | None, int]:
        info = self._info(dataset_id)
        if info is None:
            raise EmptyIndexError(
                f"dataset {dataset_id!r} has not been indexed yet (no index "
                f"{self.index_name(dataset_id)} in OpenSearch at {self.where}); run its "
                "indexing DAG first"
            )
        problem = self._problems.get(self.index_name(dataset_id))
        if problem:
            raise StoreError(problem)
        return info

    @property
    def _refresh_param(self) -> str:
        return {True: "true", False: "false"}.get(self.refresh, "wait_for")

    def _bulk(self, name: str, body: str | list[dict], what: str) -> list[dict]:
        """One bulk request (NDJSON text or action lines); returns its items (the
        request-level errors become StoreErrors)."""
        resp = self._call(
            what,
            lambda: self.client.bulk(
                index=name,
                body=body,
                refresh=self._refresh_param,
                request_timeout=self.timeout,
            ),
        )
        return [next(iter(item.values())) for item in resp.get("items") or []]

    def _bulk_with_retries(
        self, name: str, ops: list[tuple[str, str]], what: str
    ) -> list[tuple[str, dict]]:
        """Send ``ops`` (id, its action and source lines as NDJSON text); items rejected as too busy (429) or as a version
        conflict (409) are sent again with backoff, up to ``max_retries`` attempts in all.
        Returns (id, item) for every op, the last attempt's item."""
        results: dict[int, dict] = {}
        pending = list(range(len(ops)))
        delay = self.retry_base_delay
        for attempt in range(1, self.max_retries + 1):
            items = self._bulk(name, "".join(ops[i][1] for i in pending), what)
            if len(items) != len(pending):
                raise StoreError(
                    f"{what}: OpenSearch answered {len(items)} items for {len(pending)} documents"
                )
            again = []
            for i, item in zip(pending, items, strict=True):
                results[i] = item
                status = item.get("status")
                # 429: the node was too busy. 409: a scripted update lost a race more often
                # than retry_on_conflict allows; sent again, the script runs on the new version.
                if status in (429, 409):
                    again.append(i)
                    self.stats["busy_retries" if status == 429 else "conflict_retries"] += 1
            if not again or attempt == self.max_retries:
                break
            log.info(
                "%s: %d document(s) rejected as busy or conflicting, retrying", what, len(again)
            )
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 10.0)
            pending = again
        return [(ops[i][0], results[i]) for i in range(len(ops))]

    # ---------------------------------------------------------------------------- tables

    def ensure_table(self, dataset_id: str, *, model: str, dim: int) -> None:
        name = self.index_name(dataset_id)
        check_model_dim(dataset_id, model, dim)
        raw = self._get_index(name)
        if raw is None:
            body = index_body(dataset_id, model, dim, shards=self.shards, replicas=self.replicas)

            def create():
                try:
                    self.client.indices.create(index=name, body=body, request_timeout=self.timeout)
                except opensearchpy.RequestError as exc:
                    # Another worker created it first: fine, it is checked below like any other.
                    if "resource_already_exists" not in str(exc.error):
                        raise

            self._call(f"creating index {name}", create)
            raw = self._get_index(name)
            if raw is None:
                raise StoreError(f"index {name} vanished right after it was created; retry")
        have = self._describe(dataset_id, name, raw)
        index = f"the index {name} in OpenSearch"
        check_same_model(dataset_id, index, have, model, dim, "delete the index")
        problem = self._search_problems(name, raw)
        if problem:
            raise StoreError(problem)
        self._add_missing_fields(name, raw, dim)
        self._known[name] = (model, dim)
        self._problems[name] = None

    def _add_missing_fields(self, name: str, raw: dict, dim: int) -> None:
        mappings = raw.get("mappings") or {}
        if (mappings.get("_meta") or {}).get("created_by") != CREATED_BY:
            return  # someone else's layout: leave it alone
        have = mappings.get("properties") or {}
        missing = {k: v for k, v in index_properties(dim).items() if k not in have}
        if missing:
            # Columns added to the schema since the index was made; adding fields is allowed.
            self._call(
                f"adding fields {sorted(missing)} to index {name}",
                lambda: self.client.indices.put_mapping(
                    index=name, body={"properties": missing}, request_timeout=self.timeout
                ),
            )

    def table_info(self, dataset_id: str) -> dict | None:
        info = self._info(dataset_id, fresh=True)
        if info is None:
            return None
        model, dim = info
        return {"model": model, "dim": dim, "rows": self._count(self.index_name(dataset_id), None)}

    # ---------------------------------------------------------------------------- writes

    def _conform(self, dataset_id: str, model: str | None, dim: int, table: pa.Table) -> pa.Table:
        return conform_rows(dataset_id, table, document_schema(dim), model=model, dim=dim)

    @staticmethod
    def _documents(rows: pa.Table) -> list[tuple[dict, str | None]]:
        """(JSON document, vector as JSON text or None) of each row: every column, nulls
        included (they clear stored values when merged), except a null ``tags_user`` (the stored
        one stays); dates as ISO strings; no vector unless the document is ok."""
        vectors = _vector_texts(rows[VECTOR_FIELD])
        docs = []
        for row, vec in zip(rows.drop_columns([VECTOR_FIELD]).to_pylist(), vectors, strict=True):
            doc = {
                key: _iso(value) if isinstance(value, datetime) else value
                for key, value in row.items()
                if value is not None or key != "tags_user"
            }
            docs.append((doc, vec if row.get("status") == STATUS_OK else None))
        return docs

    def _upsert_op(self, doc: dict, vector: str | None) -> str:
        """The bulk lines (NDJSON) that merge ``doc`` with ``vector`` (JSON text) into the stored
        document, or index it when there is none."""
        # The vector goes last: its token is then the last one in the text.
        doc = {**doc, VECTOR_FIELD: None if vector is None else _VEC_TOKEN}
        text = _ndjson(
            [
                {"update": {"_id": doc["id"], "retry_on_conflict": self.retry_on_conflict}},
                {"doc": doc, "doc_as_upsert": True},
            ]
        )
        if vector is None:
            return text
        head, _, tail = text.rpartition(_VEC_JSON)
        return head + vector + tail

    def upsert(self, dataset_id: str, table: pa.Table) -> int:
        """Write ``table``'s rows (see :meth:`VectorStore.upsert`). Documents OpenSearch rejects
        are collected in ``last_errors`` and raised as one :class:`BulkWriteError` once every
        other document has been written."""
        name = self.index_name(dataset_id)
        model, dim = self._require(dataset_id)
        rows = self._conform(dataset_id, model, dim, table)
        written = 0
        errors: list[dict] = []
        for chunk in chunks(rows, self.bulk_chunk):
            ops = [(d["id"], self._upsert_op(d, v)) for d, v in self._documents(chunk)]
            for doc_id, item in self._bulk_with_retries(name, ops, f"upsert into {name}"):
                if "error" in item:
                    errors.append(
                        {
                            "id": doc_id,
                            "status": item.get("status"),
                            "type": (item["error"] or {}).get("type")
                            if isinstance(item["error"], dict)
                            else None,
                            "reason": _reason({"error": item["error"]}),
                        }
                    )
                else:
                    written += 1
        self.last_errors = errors
        if errors:
            shown = "; ".join(f"{e['id']}: {e['reason']}" for e in errors[:3])
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            raise BulkWriteError(
                f"dataset {dataset_id!r}: OpenSearch rejected {len(errors)} of {rows.num_rows} "
                f"document(s) in index {name}; the other {written} were written. {shown}{more}. "
                "Fix those files or the index mapping and run the upsert again",
                errors=errors,
                written=written,
            )
        return written

    def delete(self, dataset_id: str, ids: Sequence[str]) -> int:
        name = self.index_name(dataset_id)
        ids = _unique_ids(list(ids))
        if not ids or self._info(dataset_id) is None:
            return 0
        deleted = 0
        for chunk in chunks(ids, self.bulk_chunk):
            lines = [{"delete": {"_id": i}} for i in chunk]
            items = self._bulk(name, lines, f"deleting documents of {name}")
            failed = [it for it in items if "error" in it and it.get("status") != 404]
            if failed:
                raise StoreError(
                    f"deleting documents of {name}: {len(failed)} failed, e.g. "
                    f"{failed[0].get('_id')}: {_reason({'error': failed[0]['error']})}; retry"
                )
            deleted += sum(1 for it in items if it.get("result") == "deleted")
        return deleted

    def _change_user_tags(
        self, dataset_id: str, ids: Sequence[str], tags: Sequence[str], script: str
    ) -> int:
        name = self.index_name(dataset_id)
        self._require(dataset_id)
        ids = _unique_ids(list(ids))
        tags = list(dict.fromkeys(str(t) for t in tags))
        changed = 0
        for chunk in chunks(ids, self.bulk_chunk):
            ops = [
                (
                    i,
                    _ndjson(
                        [
                            {"update": {"_id": i, "retry_on_conflict": self.retry_on_conflict}},
                            {
                                "script": {
                                    "source": script,
                                    "lang": "painless",
                                    "params": {"tags": tags},
                                }
                            },
                        ]
                    ),
                )
                for i in chunk
            ]
            for doc_id, item in self._bulk_with_retries(name, ops, f"tag update in {name}"):
                if "error" in item:
                    if item.get("status") == 404:
                        continue  # unknown id: skipped, as on every store
                    raise StoreError(
                        f"tag update in {name}: document {doc_id}: "
                        f"{_reason({'error': item['error']})}; retry"
                    )
                if item.get("result") == "updated":
                    changed += 1
        return changed

    def add_user_tags(self, dataset_id: str, ids: Sequence[str], tags: Sequence[str]) -> int:
        return self._change_user_tags(dataset_id, ids, tags, ADD_USER_TAGS)

    def remove_user_tags(self, dataset_id: str, ids: Sequence[str], tags: Sequence[str]) -> int:
        return self._change_user_tags(dataset_id, ids, tags, REMOVE_USER_TAGS)

    # ---------------------------------------------------------------------------- reads

    def _search(self, name: str, body: dict, what: str) -> list[dict]:
        resp = self._call(
            what, lambda: self.client.search(index=name, body=body, request_timeout=self.timeout)
        )
        return resp.get("hits", {}).get("hits", [])

    def iter_state(
        self, dataset_id: str, version: str, batch_size: int = 50_000
    ) -> Iterator[pa.RecordBatch]:
        if not isinstance(version, str):
            raise ConfigError(f"version {version!r} must be a string")
        name = self.index_name(dataset_id)
        if self._info(dataset_id) is None:
            return iter(())
        size = max(1, min(int(batch_size), MAX_PAGE))
        return self._state_pages(name, version, size)

    def _state_pages(self, name: str, version: str, size: int) -> Iterator[pa.RecordBatch]:
        # Keyset paging on id: no scroll context to expire or clean up, no max_result_window.
        body: dict[str, Any] = {
            "size": size,
            "query": {"term": {"dataset_version": version}},
            "sort": [{"id": {"order": "asc"}}],
            "_source": {"includes": list(STATE_COLUMNS)},
            "track_total_hits": False,
        }
        while True:
            hits = self._search(name, body, f"reading the state of {name}")
            if not hits:
                return
            rows = [_row(h.get("_source") or {}, STATE_COLUMNS) for h in hits]
            yield pa.RecordBatch.from_pylist(rows, schema=_STATE_SCHEMA)
            if len(hits) < size:
                return
            body["search_after"] = hits[-1]["sort"]

    def iter_documents(
        self,
        dataset_id: str,
        *,
        version: str | None = None,
        ids: Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        batch_size: int = 10_000,
    ) -> Iterator[pa.RecordBatch]:
        info = self._info(dataset_id)
        if info is None:
            return
        schema = document_schema(int(info[1]))
        cols = select_columns(schema.names, columns)
        out_schema = pa.schema([schema.field(c) for c in cols])
        name = self.index_name(dataset_id)
        size = max(1, min(int(batch_size), MAX_PAGE))
        base = [{"term": {"dataset_version": version}}] if version is not None else []
        groups = [None] if ids is None else list(chunks(_unique_ids(list(ids)), size))
        for group in groups:
            flt = base + ([{"ids": {"values": list(group)}}] if group is not None else [])
            body: dict[str, Any] = {
                "size": size,
                "query": {"bool": {"filter": flt}} if flt else {"match_all": {}},
                "sort": [{"id": {"order": "asc"}}],
                "_source": {"includes": cols},
                "track_total_hits": False,
            }
            while True:  # keyset paging on id, as in iter_state
                hits = self._search(name, body, f"reading documents of {name}")
                if not hits:
                    break
                rows = [_row(h.get("_source") or {}, cols) for h in hits]
                yield pa.RecordBatch.from_pylist(rows, schema=out_schema)
                if len(hits) < size:
                    break
                body["search_after"] = hits[-1]["sort"]

    def _count(self, name: str, query: dict | None) -> int:
        body = {"query": query or {"match_all": {}}}
        resp = self._call(
            f"counting documents of {name}",
            lambda: self.client.count(
                index=name, body=body, ignore_unavailable=True, request_timeout=self.timeout
            ),
        )
        return int(resp.get("count", 0))

    def count(self, dataset_id: str, flt: Filter | None = None) -> int:
        name = self.index_name(dataset_id)
        # The query language has no "IN ()": an empty list means no document at all.
        if flt is not None and (flt.versions == [] or flt.uris == []):
            return 0
        return self._count(name, self._compile_filter(flt))

    def get(self, dataset_id: str, ids: Sequence[str]) -> list[dict]:
        name = self.index_name(dataset_id)
        wanted = list(ids)
        unique = _unique_ids(wanted)
        if not unique or self._info(dataset_id) is None:
            return []
        found: dict[str, dict] = {}
        for chunk in chunks(unique, 1_000):
            resp = self._call(
                f"reading documents of {name}",
                lambda chunk=chunk: self.client.mget(
                    index=name,
                    body={"ids": list(chunk)},
                    _source_excludes=VECTOR_FIELD,
                    request_timeout=self.timeout,
                ),
            )
            for doc in resp.get("docs", []):
                if doc.get("found"):
                    found[doc["_id"]] = _row(doc.get("_source") or {}, DOC_COLUMNS)
        return [found[i] for i in wanted if i in found]

    def _searchable(self, dataset_id: str) -> tuple[str, str, int]:
        """(dataset id, index name, dim) of a dataset vector search may run on."""
        name = self.index_name(dataset_id)
        _, dim = self._require_for_search(dataset_id)
        return dataset_id, name, dim

    def _compile_where(self, where) -> dict:
        return compile_opensearch(where)

    def _compile_filter(self, flt: Filter | None) -> dict | None:
        node = from_filter(flt) if flt is not None else None
        return compile_opensearch(node) if node is not None else None

    def _nearest(
        self, target, vector, where: dict | None, limit: int, score_threshold: float | None
    ) -> list[tuple[float, dict]]:
        dataset_id, name, dim = target
        qvec = query_vector(dataset_id, vector, dim).tolist()
        body = self.knn_body(qvec, where, min(limit, MAX_PAGE), score_threshold)
        ranked = []
        for h in self._search(name, body, f"vector search in {name}"):
            raw = h.get("_score")
            if raw is None:
                raw = (h.get("sort") or [0.0])[0]
            ranked.append((to_cosine(raw), h.get("_source") or {}))
        return ranked

    def _sorted_page(
        self, target, where: dict | None, field: str, desc: bool, after: tuple | None, limit: int
    ) -> list[tuple[Hit, tuple]]:
        _, name, _ = target
        body = self.filter_body(where, field, desc, limit, after)
        hits = self._search(name, body, f"search in {name}")
        return [(hit_from_row(h.get("_source") or {}, 1.0), tuple(h["sort"][:2])) for h in hits]

    def knn_body(
        self,
        query_vector: list[float],
        where_clause: dict | None,
        limit: int,
        score_threshold: float | None = None,
    ) -> dict:
        """The search body of a k-NN query: the filter inside the knn clause (filtered during
        the graph search, not after it), failed documents excluded, ties broken by id."""
        flt: list[dict] = [] if where_clause is None else [where_clause]
        flt.append({"term": {"status": STATUS_OK}})
        knn: dict[str, Any] = {
            "vector": query_vector,
            "k": limit if self.ef_search else min(max(limit, KNN_CANDIDATES), MAX_PAGE),
            "filter": {"bool": {"filter": flt}},
        }
        if self.ef_search:
            knn["method_parameters"] = {"ef_search": max(self.ef_search, limit)}
        body: dict[str, Any] = {
            "size": limit,
            "query": {"knn": {VECTOR_FIELD: knn}},
            "sort": [{"_score": {"order": "desc"}}, {"id": {"order": "asc"}}],
            "track_scores": True,
            "track_total_hits": False,
            "_source": {"includes": HIT_COLUMNS},
        }
        if score_threshold is not None:
            # A hair below the threshold: the exact comparison happens on the cosine, here.
            body["min_score"] = max(0.0, to_os_score(score_threshold) - 1e-6)
        return body

    @staticmethod
    def filter_body(
        clause: dict | None, field: str, desc: bool, size: int, after: tuple | None
    ) -> dict:
        """The search body of a filter-only page of ``size`` hits (at most :data:`MAX_PAGE`):
        sorted by ``field`` then id, continued after the previous page's last sort values
        ``after`` (keyset paging: stable and cheap at any depth)."""
        body: dict[str, Any] = {
            "size": min(size, MAX_PAGE),
            "query": {"bool": {"filter": [clause]}} if clause is not None else {"match_all": {}},
            "sort": [
                {TEXT_KEYWORD.get(field, field): {"order": "desc" if desc else "asc"}},
                {"id": {"order": "asc"}},
            ],
            "track_total_hits": False,
            "_source": {"includes": HIT_COLUMNS},
        }
        if after:
            body["search_after"] = list(after)
        return body

    # ---------------------------------------------------------------------------- maintenance

    def optimize(self, dataset_id: str) -> dict:
        name = self.index_name(dataset_id)
        self._require(dataset_id)
        # Makes everything written with refresh=False searchable (and counted) from now on.
        self._call(
            f"refreshing index {name}",
            lambda: self.client.indices.refresh(index=name, request_timeout=self.timeout),
        )
        merged = False
        if self.force_merge:
            self._call(
                f"force-merging index {name}",
                lambda: self.client.indices.forcemerge(
                    index=name, max_num_segments=1, request_timeout=max(self.timeout, 3600)
                ),
            )
            merged = True
        return {
            "dataset_id": dataset_id,
            "table": name,
            "rows": self._count(name, None),
            "refreshed": True,
            "force_merged": merged,
            "indexes_created": [],
            "vector_index": True,
        }


# --------------------------------------------------------------------------------------------
# open_store


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
        raise ConfigError(f"store uri {_redact(uri)!r} has no host; write opensearch://host:9200")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(
            f"store uri {_redact(uri)!r}: a path or query is not supported; set index names "
            "with the spec's index_prefix"
        )
    url = f"{parts.scheme}://{parts.netloc}"
    return OpenSearchStore(url=url, **options)


__all__ = [
    "BulkWriteError",
    "OpenSearchStore",
    "build_client",
    "client_for_conn_id",
    "client_from_connection",
    "from_uri",
    "index_body",
    "index_properties",
    "is_opensearch_uri",
    "to_cosine",
    "to_os_score",
]
