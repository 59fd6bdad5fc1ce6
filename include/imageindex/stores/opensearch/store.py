"""OpenSearch implementation of :class:`~imageindex.stores.base.VectorStore`: indexes, reads
and the native search calls (its writes are :class:`~imageindex.stores.opensearch.bulk.
BulkWrites`). The design decisions are in :mod:`imageindex.stores.opensearch`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

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
    hit_from_row,
    query_vector,
    select_columns,
    table_name,
)
from imageindex.stores.opensearch.bulk import BulkWrites
from imageindex.stores.opensearch.client import (
    as_bool,
    build_client,
    error_reason,
    opensearchpy,
    redact,
    require_opensearchpy,
)
from imageindex.stores.opensearch.compile import compile_opensearch
from imageindex.stores.opensearch.mapping import (
    CREATED_BY,
    DOC_COLUMNS,
    KNN_CANDIDATES,
    MAX_PAGE,
    STATE_SCHEMA,
    TEXT_KEYWORD,
    VECTOR_FIELD,
    index_body,
    index_properties,
    search_problems,
    source_row,
    to_cosine,
    to_os_score,
    unique_ids,
)
from imageindex.stores.schema import STATE_COLUMNS, STATUS_OK, document_schema
from imageindex.types import Hit

_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")


def _check_settings(
    index_prefix: object, refresh: object, timeout: object, *, positive: dict, whole: dict
) -> str | bool:
    """The store's settings checked, each error naming the setting; returns ``refresh`` as
    ``"wait_for"``, True or False."""
    if not isinstance(index_prefix, str) or not _PREFIX_RE.match(index_prefix):
        raise ConfigError(
            f"index_prefix {index_prefix!r} is invalid: use 1-100 characters from a-z, 0-9,"
            " '_' and '-', starting with a letter or digit"
        )
    if isinstance(refresh, str) and refresh.lower() in ("true", "false"):
        refresh = refresh.lower() == "true"
    if refresh not in ("wait_for", True, False):
        raise ConfigError(f"refresh must be 'wait_for', true or false (got {refresh!r})")
    check_positive_ints(**positive)
    for name, value in whole.items():
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise ConfigError(f"store setting {name} must be a whole number (got {value!r})")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(f"store setting timeout must be positive seconds (got {timeout!r})")
    return refresh


class OpenSearchStore(BulkWrites, VectorStore):
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
        refresh = _check_settings(
            index_prefix,
            refresh,
            timeout,
            positive={"bulk_chunk": bulk_chunk, "max_retries": max_retries},
            whole={
                "shards": shards,
                "replicas": replicas,
                "ef_search": ef_search,
                "retry_on_conflict": retry_on_conflict,
            },
        )
        if url is not None:
            require_opensearchpy()
            scheme = urlsplit(url).scheme if isinstance(url, str) else None
            if scheme not in ("http", "https") or not urlsplit(url).hostname:
                raise ConfigError(
                    f"OpenSearch url {redact(str(url))!r} must look like https://host:9200"
                )
            self.where = redact(url)
        else:
            self.where = where or ("Airflow connection" if client_factory else "OpenSearch client")
        self.index_prefix = index_prefix
        self.refresh = refresh
        self.bulk_chunk = bulk_chunk
        self.timeout = timeout
        self.force_merge = as_bool("force_merge", force_merge)
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
                verify_certs=as_bool("verify_certs", verify_certs),
                ca_certs=ca_certs,
                timeout=timeout,
                http_compress=as_bool("http_compress", http_compress),
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
        require_opensearchpy()
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
                f"{error_reason(exc.info)}; grant it on {self.index_prefix}-images-*"
            ) from exc
        except opensearchpy.TransportError as exc:
            raise StoreError(
                f"{what} failed (HTTP {exc.status_code}): {error_reason(exc.info) or exc.error}"
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
        self._problems[name] = search_problems(name, raw)
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
        problem = search_problems(name, raw)
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
            rows = [source_row(h.get("_source") or {}, STATE_COLUMNS) for h in hits]
            yield pa.RecordBatch.from_pylist(rows, schema=STATE_SCHEMA)
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
        groups = [None] if ids is None else list(chunks(unique_ids(list(ids)), size))
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
                rows = [source_row(h.get("_source") or {}, cols) for h in hits]
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
        unique = unique_ids(wanted)
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
                    found[doc["_id"]] = source_row(doc.get("_source") or {}, DOC_COLUMNS)
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
