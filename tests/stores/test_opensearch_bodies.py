"""Golden tests of the requests OpenSearchStore sends, without a server.

A recording connection (opensearch-py's transport layer: everything above it is the real client)
captures each request's method, path, query parameters and body, and answers with canned
responses. This pins the request bodies - mapping, bulk lines, k-NN and keyset queries, refresh
control - and how answers and errors are read back. It is not a model of OpenSearch: behaviour
against a real cluster is the contract suite's job (test_contract.py with OPENSEARCH_URL).
"""

from __future__ import annotations

import base64
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from opensearchpy import OpenSearch
from opensearchpy.connection import Connection

from imageindex.errors import ConfigError, ModelMismatchError, StoreError
from imageindex.query import parse
from imageindex.stores import Filter
from imageindex.stores.opensearch_store import (
    ADD_USER_TAGS,
    REMOVE_USER_TAGS,
    UPSERT_KEEP_USER_TAGS,
    BulkWriteError,
    OpenSearchStore,
    from_uri,
    index_body,
    is_opensearch_uri,
    to_cosine,
    to_os_score,
)
from imageindex.stores.schema import STATE_COLUMNS, STATUS_FAILED, document_schema

DIM = 4
MODEL = "m"
INDEX = "imageindex-images-ds"
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


# ------------------------------------------------------------------------------- the stub


class Request:
    def __init__(self, method: str, path: str, params: dict, body: Any):
        self.method, self.path, self.params, self.body = method, path, params, body

    def __repr__(self) -> str:
        return f"{self.method} {self.path} {self.params}"


class Cluster:
    """Canned answers; ``requests`` is what the client sent."""

    def __init__(self):
        self.requests: list[Request] = []
        self.indices: dict[str, dict] = {}
        self.search_responses: list[list[dict]] = []
        self.count = 0
        #: per bulk attempt: {doc id: (status, error)} for the items to reject
        self.item_errors: list[dict[str, tuple[int, dict]]] = []
        #: item result of update actions, by doc id ("updated" when absent)
        self.update_results: dict[str, str] = {}
        self.missing_ids: set[str] = set()

    def created(self, dim: int = DIM, model: str | None = MODEL, **meta) -> None:
        body = index_body("ds", model or "x", dim)
        if model is None:
            del body["mappings"]["_meta"]["model"]
        body["mappings"]["_meta"].update(meta)
        self.indices[INDEX] = {
            "mappings": body["mappings"],
            "settings": {"index": {"knn": "true", "number_of_shards": "1"}},
        }

    def of(self, method: str, suffix: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    def answer(self, req: Request) -> tuple[int, Any]:
        parts = req.path.strip("/").split("/")
        name = parts[0]
        action = parts[1] if len(parts) > 1 else None
        if action is None and req.method == "GET":
            if name not in self.indices:
                return 404, _not_found(name)
            return 200, {name: self.indices[name]}
        if action is None and req.method == "PUT":
            self.indices[name] = {
                "mappings": req.body["mappings"],
                "settings": {"index": {k: str(v).lower() for k, v in req.body["settings"]["index"].items()}},
            }  # fmt: skip
            return 200, {"acknowledged": True, "index": name}
        if action == "_mapping":
            return 200, {"acknowledged": True}
        if action == "_bulk":
            return 200, self.bulk(req.body)
        if action == "_count":
            return 200, {"count": self.count}
        if action == "_search":
            hits = self.search_responses.pop(0) if self.search_responses else []
            return 200, {"hits": {"hits": hits}}
        if action == "_mget":
            docs = [
                {"_id": i, "found": i not in self.missing_ids, "_source": _source(i)}
                for i in req.body["ids"]
            ]
            return 200, {"docs": docs}
        if action in ("_refresh", "_forcemerge"):
            return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
        raise AssertionError(f"unexpected request {req}")

    def bulk(self, lines: list[dict]) -> dict:
        errors = self.item_errors.pop(0) if self.item_errors else {}
        items, i = [], 0
        while i < len(lines):
            (op, meta), = lines[i].items()  # fmt: skip
            i += 1 if op == "delete" else 2
            doc = meta["_id"]
            if doc in errors:
                status, error = errors[doc]
                items.append({op: {"_id": doc, "status": status, "error": error}})
            elif op == "delete":
                gone = doc in self.missing_ids
                result = "not_found" if gone else "deleted"
                items.append({op: {"_id": doc, "status": 404 if gone else 200, "result": result}})
            elif op == "update" and doc in self.missing_ids:
                err = {"type": "document_missing_exception", "reason": f"[{doc}]: missing"}
                items.append({op: {"_id": doc, "status": 404, "error": err}})
            else:
                result = self.update_results.get(doc, "updated") if op == "update" else "created"
                items.append({op: {"_id": doc, "status": 200, "result": result}})
        return {"errors": any("error" in next(iter(x.values())) for x in items), "items": items}


def _not_found(name: str) -> dict:
    err = {"type": "index_not_found_exception", "reason": f"no such index [{name}]"}
    return {"error": {**err, "root_cause": [err]}, "status": 404}


def _source(doc_id: str) -> dict:
    return {
        "id": doc_id,
        "uri": f"s3://b/{doc_id}.jpg",
        "dataset_id": "ds",
        "dataset_version": "v1",
        "mtime": "2026-01-02T03:04:05.678901Z",
        "size": 10,
        "tags_ai": ["cat"],
    }


class RecordingConnection(Connection):
    def __init__(self, *, cluster: Cluster, **kwargs):
        super().__init__(**kwargs)
        self.cluster = cluster

    def perform_request(
        self, method, url, params=None, body=None, timeout=None, ignore=(), headers=None
    ):
        if isinstance(body, bytes):
            body = body.decode()
        if body is None:
            parsed = None
        elif url.endswith("/_bulk"):
            assert body.endswith("\n"), "a bulk body ends with a newline"
            parsed = [json.loads(line) for line in body.splitlines()]
        else:
            parsed = json.loads(body)
        # The client sends query parameters as bytes; compare them as text.
        params = {k: v.decode() if isinstance(v, bytes) else v for k, v in (params or {}).items()}
        req = Request(method, url, params, parsed)
        self.cluster.requests.append(req)
        status, data = self.cluster.answer(req)
        raw = json.dumps(data)
        if not 200 <= status < 300 and status not in ignore:
            self._raise_error(status, raw, "application/json")
        return status, {"content-type": "application/json"}, raw


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


def make_store(cluster: Cluster, **kw) -> OpenSearchStore:
    client = OpenSearch(
        hosts=[{"host": "stub", "port": 9200}],
        connection_class=RecordingConnection,
        cluster=cluster,
    )
    return OpenSearchStore(client, **kw)


@pytest.fixture
def store(cluster) -> OpenSearchStore:
    cluster.created()
    return make_store(cluster)


def rows(n: int, *, tags_user=None, status=None, start: int = 0) -> pa.Table:
    status = status or ["ok"] * n
    vecs = [[1.0, 0.5, 0.0, 0.0] if s == "ok" else [0.0] * DIM for s in status]
    cols = {
        "id": [f"id{start + i}" for i in range(n)],
        "dataset_id": ["ds"] * n,
        "dataset_version": ["v1"] * n,
        "uri": [f"s3://b/{start + i}.jpg" for i in range(n)],
        "file_name": [f"{start + i}.jpg" for i in range(n)],
        "size": [100 + i for i in range(n)],
        "mtime": [T0] * n,
        "status": status,
        "error": [None if s == "ok" else "decode: truncated" for s in status],
        "width": [64 if s == "ok" else None for s in status],
        "tags_ai": [["cat"]] * n,
        "tags_user": tags_user if tags_user is not None else [None] * n,
        "model": [MODEL] * n,
        "dim": [DIM] * n,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(sum(vecs, []), pa.float32()), DIM),
    }
    schema = document_schema(DIM)
    return pa.table(cols, schema=pa.schema([schema.field(c) for c in cols]))


# ------------------------------------------------------------------------------- index creation


def test_index_creation_body(cluster):
    store = make_store(cluster, shards=2, replicas=1)
    store.ensure_table("ds", model=MODEL, dim=DIM)
    get1, put, get2 = cluster.requests
    assert (get1.method, get1.path) == ("GET", f"/{INDEX}")
    assert (put.method, put.path) == ("PUT", f"/{INDEX}")
    assert get2.method == "GET"
    body = put.body
    assert body["settings"] == {
        "index": {"knn": True, "number_of_shards": 2, "number_of_replicas": 1}
    }
    mappings = body["mappings"]
    assert mappings["dynamic"] == "strict"
    assert mappings["_meta"] == {"created_by": "imageindex", "model": MODEL, "dim": DIM,
                                 "dataset_id": "ds"}  # fmt: skip
    props = mappings["properties"]
    assert props["vector"] == {
        "type": "knn_vector",
        "dimension": DIM,
        "method": {
            "name": "hnsw",
            "space_type": "cosinesimil",
            "engine": "lucene",
            "parameters": {"m": 16, "ef_construction": 128},
        },
    }
    # Every document column is mapped, as imageindex.query.opensearch expects.
    assert set(document_schema(DIM).names) <= set(props)
    keyword = {"id", "dataset_id", "dataset_version", "uri", "key", "fingerprint", "status",
               "format", "mode", "tags_ai", "tags_user", "model", "tag_definitions_hash",
               "thumbnail_uri"}  # fmt: skip
    assert {k for k, v in props.items() if v == {"type": "keyword"}} == keyword
    for text in ("file_name", "error"):
        assert props[text] == {"type": "text", "fields": {"keyword": {"type": "keyword"}}}
    assert props["width"] == props["height"] == props["dim"] == {"type": "integer"}
    assert props["size"] == {"type": "long"}
    for date in ("mtime", "indexed_at"):
        assert props[date] == {"type": "date", "format": "strict_date_optional_time||epoch_millis"}
    assert props["tags_detail"] == {"type": "keyword", "index": False, "doc_values": False}
    # The managed service's field names, as aliases; no alias for the vector (k-NN#3484).
    assert props["file_meta_id"] == {"type": "alias", "path": "id"}
    assert props["index_set_id"] == {"type": "alias", "path": "dataset_id"}
    assert "file_vector" not in props
    assert store.table_info("ds") == {"model": MODEL, "dim": DIM, "rows": 0}


def test_existing_index_is_checked_before_any_write(cluster):
    cluster.created(dim=16)
    store = make_store(cluster)
    with pytest.raises(ModelMismatchError, match="dim 16") as e:
        store.ensure_table("ds", model=MODEL, dim=DIM)
    assert "'ds'" in str(e.value) and f"dim {DIM}" in str(e.value)
    with pytest.raises(ModelMismatchError, match="'m'"):
        make_store(cluster).ensure_table("ds", model="other", dim=16)
    assert {r.method for r in cluster.requests} == {"GET"}


def test_hand_made_index_model_comes_from_its_documents(cluster):
    cluster.created(model=None)
    cluster.search_responses = [[{"_id": "a", "_source": {"model": "theirs"}}]]
    store = make_store(cluster)
    with pytest.raises(ModelMismatchError, match="'theirs'"):
        store.ensure_table("ds", model=MODEL, dim=DIM)
    search = cluster.of("POST", "/_search")[0]
    assert search.body == {"size": 1, "query": {"exists": {"field": "model"}},
                           "_source": ["model"]}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m, s: m["properties"]["vector"]["method"].update(space_type="l2"), "space_type"),
        (lambda m, s: m["properties"]["vector"]["method"].update(engine="faiss"), "engine"),
        (lambda m, s: s["index"].update(knn="false"), "index.knn"),
    ],
)
def test_index_that_cannot_give_cosine_scores_is_refused(cluster, change, match):
    cluster.created()
    change(cluster.indices[INDEX]["mappings"], cluster.indices[INDEX]["settings"])
    with pytest.raises(StoreError, match=match):
        make_store(cluster).ensure_table("ds", model=MODEL, dim=DIM)
    with pytest.raises(StoreError, match=match):
        make_store(cluster).query("ds", vector=np.ones(DIM))


def test_dataset_ids_differing_in_case_are_refused(cluster):
    cluster.created(dataset_id="DS")
    with pytest.raises(ConfigError, match="differ only in case"):
        make_store(cluster).ensure_table("ds", model=MODEL, dim=DIM)


def test_missing_fields_are_added_to_an_older_index(cluster):
    cluster.created()
    del cluster.indices[INDEX]["mappings"]["properties"]["tags_detail"]
    make_store(cluster).ensure_table("ds", model=MODEL, dim=DIM)
    (put,) = cluster.of("PUT", "/_mapping")
    assert put.body == {
        "properties": {"tags_detail": {"type": "keyword", "index": False, "doc_values": False}}
    }


# ------------------------------------------------------------------------------- writes


def test_upsert_bulk_lines(store, cluster):
    table = rows(3, tags_user=[None, ["fav"], None], status=["ok", "ok", STATUS_FAILED])
    assert store.upsert("ds", table) == 3
    (bulk,) = cluster.of("POST", "/_bulk")
    assert bulk.path == f"/{INDEX}/_bulk"
    assert bulk.params["refresh"] == "wait_for"
    lines = bulk.body
    assert len(lines) == 6
    doc0 = {
        "id": "id0",
        "dataset_id": "ds",
        "dataset_version": "v1",
        "uri": "s3://b/0.jpg",
        "file_name": "0.jpg",
        "size": 100,
        "mtime": "2026-01-02T03:04:05.678901Z",
        "status": "ok",
        "width": 64,
        "tags_ai": ["cat"],
        "model": MODEL,
        "dim": DIM,
        "vector": [1.0, 0.5, 0.0, 0.0],
    }
    # Null tags_user: replace the document, keep the stored user tags (scripted upsert).
    assert lines[0] == {"update": {"_id": "id0", "retry_on_conflict": 3}}
    assert lines[1] == {
        "script": {"source": UPSERT_KEEP_USER_TAGS, "lang": "painless", "params": {"doc": doc0}},
        "scripted_upsert": True,
        "upsert": {},
    }
    # Given tags_user: a plain index action (an explicit overwrite).
    assert lines[2] == {"index": {"_id": "id1"}}
    assert lines[3]["tags_user"] == ["fav"] and lines[3]["vector"] == [1.0, 0.5, 0.0, 0.0]
    # A failed document: no vector (cosinesimil refuses zero vectors), no null fields.
    failed = lines[5]["script"]["params"]["doc"]
    assert failed["status"] == STATUS_FAILED and failed["error"] == "decode: truncated"
    assert "vector" not in failed and "width" not in failed
    assert store.last_errors == []


def test_upsert_chunks_and_refresh_false(cluster):
    cluster.created()
    store = make_store(cluster, refresh=False, bulk_chunk=2)
    assert store.upsert("ds", rows(5)) == 5
    bulks = cluster.of("POST", "/_bulk")
    assert [len(b.body) // 2 for b in bulks] == [2, 2, 1]
    assert {b.params["refresh"] for b in bulks} == {"false"}
    assert not cluster.of("POST", "/_refresh")
    out = store.optimize("ds")
    (refresh,) = cluster.of("POST", "/_refresh")
    assert refresh.path == f"/{INDEX}/_refresh"
    assert out["refreshed"] is True and out["force_merged"] is False
    assert not cluster.of("POST", "/_forcemerge")


def test_optimize_force_merge(cluster):
    cluster.created()
    store = make_store(cluster, force_merge=True)
    assert store.optimize("ds")["force_merged"] is True
    (merge,) = cluster.of("POST", "/_forcemerge")
    assert merge.params["max_num_segments"] == "1"


def test_upsert_refuses_wrong_dim_and_model_before_sending(store, cluster):
    wrong = rows(2).set_column(
        14, pa.field("vector", pa.list_(pa.float32(), 3)),
        pa.FixedSizeListArray.from_arrays(pa.array([1.0] * 6, pa.float32()), 3),
    )  # fmt: skip
    with pytest.raises(ModelMismatchError, match="dim 3"):
        store.upsert("ds", wrong)
    other = rows(2).set_column(12, "model", pa.array(["other"] * 2))
    with pytest.raises(ModelMismatchError, match="other"):
        store.upsert("ds", other)
    assert not cluster.of("POST", "/_bulk")


def test_rejected_documents_are_reported_after_the_rest_land(store, cluster):
    mapper = {"type": "mapper_parsing_exception", "reason": "failed to parse field [uri]",
              "caused_by": {"type": "illegal_argument_exception", "reason": "immense term"}}  # fmt: skip
    busy = {"type": "es_rejected_execution_exception", "reason": "queue full"}
    cluster.item_errors = [{"id1": (400, mapper), "id3": (429, busy)}, {}]
    store.retry_base_delay = 0.0
    with pytest.raises(BulkWriteError) as e:
        store.upsert("ds", rows(5))
    err = e.value
    assert isinstance(err, StoreError)
    assert err.written == 4
    assert err.errors == [
        {
            "id": "id1",
            "status": 400,
            "type": "mapper_parsing_exception",
            "reason": "mapper_parsing_exception: failed to parse field [uri] (immense term)",
        }
    ]
    assert "rejected 1 of 5" in str(err) and "id1" in str(err) and "other 4" in str(err)
    assert store.last_errors == err.errors
    # Only the document that was "too busy" is sent again.
    first, second = cluster.of("POST", "/_bulk")
    assert len(first.body) == 10
    assert [line for line in second.body if "update" in line] == [
        {"update": {"_id": "id3", "retry_on_conflict": 3}}
    ]


def test_delete_bodies(store, cluster):
    cluster.missing_ids = {"gone"}
    assert store.delete("ds", ["a", "gone", "b", "a"]) == 2
    (bulk,) = cluster.of("POST", "/_bulk")
    assert bulk.body == [{"delete": {"_id": "a"}}, {"delete": {"_id": "gone"}},
                         {"delete": {"_id": "b"}}]  # fmt: skip
    assert bulk.params["refresh"] == "wait_for"
    assert store.delete("ds", []) == 0


def test_user_tag_bodies(store, cluster):
    cluster.update_results = {"b": "noop"}
    cluster.missing_ids = {"gone"}
    assert store.add_user_tags("ds", ["a", "b", "gone"], ["fav", "fav", "x"]) == 1
    (bulk,) = cluster.of("POST", "/_bulk")
    assert bulk.body[:2] == [
        {"update": {"_id": "a", "retry_on_conflict": 3}},
        {"script": {"source": ADD_USER_TAGS, "lang": "painless", "params": {"tags": ["fav", "x"]}}},
    ]
    assert store.remove_user_tags("ds", ["a"], ["fav"]) == 1
    assert cluster.of("POST", "/_bulk")[1].body[1]["script"]["source"] == REMOVE_USER_TAGS


# ------------------------------------------------------------------------------- reads


def test_knn_query_body_and_scores(store, cluster):
    hit = {"_id": "id0", "_score": 0.75, "_source": _source("id0"), "sort": [0.75, "id0"]}
    tie = {"_id": "id9", "_score": 0.75, "_source": _source("id9"), "sort": [0.75, "id9"]}
    cluster.search_responses = [[tie, hit]]
    page = store.query("ds", vector=np.array([2, 0, 0, 0]), where=parse("tags:cat"), top_k=1)
    (search,) = cluster.of("POST", "/_search")
    assert search.path == f"/{INDEX}/_search"
    tags_cat = {"bool": {"should": [{"term": {"tags_ai": "cat"}}, {"term": {"tags_user": "cat"}}],
                         "minimum_should_match": 1}}  # fmt: skip
    assert search.body == {
        "size": 2,
        "query": {
            "knn": {
                "vector": {
                    "vector": [2.0, 0.0, 0.0, 0.0],
                    "k": 2,
                    # Inside the knn clause: filtered during the graph search, not after it.
                    "filter": {"bool": {"filter": [tags_cat, {"term": {"status": "ok"}}]}},
                }
            }
        },
        "sort": [{"_score": {"order": "desc"}}, {"id": {"order": "asc"}}],
        "track_scores": True,
        "track_total_hits": False,
        "_source": {"includes": [
            "id", "uri", "file_name", "dataset_id", "dataset_version", "width", "height",
            "format", "size", "mtime", "tags_ai", "tags_user", "thumbnail_uri", "indexed_at",
        ]},
    }  # fmt: skip
    # lucene's (1 + cos) / 2 = 0.75 is a cosine of 0.5; equal scores are ordered by id.
    assert [(h.id, h.score) for h in page.hits] == [("id0", 0.5)]
    assert page.hits[0].mtime == T0.timestamp() and page.hits[0].file_name == "id0.jpg"
    assert page.next_cursor

    # The next page asks for offset + top_k + 1 neighbours.
    cluster.search_responses = [[hit, tie]]
    nxt = store.query("ds", vector=np.array([2, 0, 0, 0]), where=parse("tags:cat"), top_k=1,
                      cursor=page.next_cursor)  # fmt: skip
    second = cluster.of("POST", "/_search")[1].body
    assert second["size"] == second["query"]["knn"]["vector"]["k"] == 3
    assert [h.id for h in nxt.hits] == ["id9"] and nxt.next_cursor is None


def test_knn_threshold_and_ef_search(cluster):
    cluster.created()
    store = make_store(cluster, ef_search=100)
    cluster.search_responses = [[
        {"_id": "a", "_score": to_os_score(0.9), "_source": _source("a")},
        {"_id": "b", "_score": to_os_score(0.5), "_source": _source("b")},
    ]]  # fmt: skip
    page = store.query("ds", vector=np.ones(DIM), top_k=5, score_threshold=0.6)
    body = cluster.of("POST", "/_search")[0].body
    knn = body["query"]["knn"]["vector"]
    assert knn["filter"] == {"bool": {"filter": [{"term": {"status": "ok"}}]}}
    assert knn["method_parameters"] == {"ef_search": 100}
    assert body["min_score"] == pytest.approx(0.8 - 1e-6)
    assert [h.id for h in page.hits] == ["a"] and page.hits[0].score == pytest.approx(0.9)


def test_score_mapping():
    for cos in (-1.0, -0.3, 0.0, 0.5, 1.0):
        assert to_cosine(to_os_score(cos)) == pytest.approx(cos)
    assert to_cosine(1.0000001) == 1.0


def test_filter_only_body_sort_and_search_after(store, cluster):
    def hit(i, ms):
        return {"_id": i, "_score": None, "_source": _source(i), "sort": [ms, i]}

    cluster.search_responses = [[hit("a", 3000), hit("b", 2000), hit("c", 1000)]]
    page = store.query("ds", where=parse("width >= 640"), top_k=2, sort="-mtime")
    body = cluster.of("POST", "/_search")[0].body
    assert body == {
        "size": 3,
        "query": {"bool": {"filter": [{"range": {"width": {"gte": 640}}}]}},
        "sort": [{"mtime": {"order": "desc"}}, {"id": {"order": "asc"}}],
        "track_total_hits": False,
        "_source": body["_source"],
    }
    assert [h.id for h in page.hits] == ["a", "b"] and {h.score for h in page.hits} == {1.0}

    cluster.search_responses = [[hit("c", 1000)]]
    last = store.query("ds", where=parse("width >= 640"), top_k=2, sort="-mtime",
                       cursor=page.next_cursor)  # fmt: skip
    assert cluster.of("POST", "/_search")[1].body["search_after"] == [2000, "b"]
    assert [h.id for h in last.hits] == ["c"] and last.next_cursor is None

    # Text fields sort on their keyword subfield; no filter is match_all.
    cluster.search_responses = [[]]
    store.query("ds", sort="file_name")
    body = cluster.of("POST", "/_search")[2].body
    assert body["query"] == {"match_all": {}}
    assert body["sort"][0] == {"file_name.keyword": {"order": "asc"}}
    with pytest.raises(ConfigError, match="another query"):
        store.query("ds", where=parse("width >= 641"), top_k=2, sort="-mtime",
                    cursor=page.next_cursor)  # fmt: skip


def test_count_get_and_iter_state_bodies(store, cluster):
    cluster.count = 7
    assert store.count("ds", Filter(versions=["v1"])) == 7
    count = cluster.of("POST", "/_count")[0]
    assert count.params["ignore_unavailable"] == "true"
    assert count.body == {"query": {"bool": {"filter": [
        {"term": {"dataset_version": "v1"}}, {"term": {"status": "ok"}}]}}}  # fmt: skip
    assert store.count("ds", Filter(versions=[])) == 0
    assert len(cluster.of("POST", "/_count")) == 1
    assert store.count("ds") == 7
    assert cluster.of("POST", "/_count")[1].body == {"query": {"match_all": {}}}

    cluster.missing_ids = {"zz"}
    docs = store.get("ds", ["b", "zz", "a", "b"])
    (mget,) = cluster.of("POST", "/_mget")
    assert mget.body == {"ids": ["b", "zz", "a"]} and mget.params["_source_excludes"] == "vector"
    assert [d["id"] for d in docs] == ["b", "a", "b"]
    assert docs[0]["mtime"] == T0 and docs[0]["width"] is None and "vector" not in docs[0]

    state = {k: v for k, v in _source("x").items() if k in STATE_COLUMNS}
    cluster.search_responses = [
        [{"_id": "a", "_source": {**state, "id": "a"}, "sort": ["a"]},
         {"_id": "b", "_source": {**state, "id": "b"}, "sort": ["b"]}],
        [{"_id": "c", "_source": {**state, "id": "c"}, "sort": ["c"]}],
    ]  # fmt: skip
    batches = list(store.iter_state("ds", "v1", batch_size=2))
    assert [b.num_rows for b in batches] == [2, 1]
    assert batches[0].schema.names == STATE_COLUMNS
    assert batches[0].to_pylist()[0]["mtime"] == T0
    first, second = (r.body for r in cluster.of("POST", "/_search"))
    assert first == {
        "size": 2,
        "query": {"term": {"dataset_version": "v1"}},
        "sort": [{"id": {"order": "asc"}}],
        "_source": {"includes": STATE_COLUMNS},
        "track_total_hits": False,
    }
    assert second["search_after"] == ["b"]


def test_iter_documents_bodies(store, cluster):
    src = {**_source("a"), "vector": [0.5, 0.5, 0.5, 0.5]}
    cluster.search_responses = [
        [{"_id": "a", "_source": src, "sort": ["a"]}, {"_id": "b", "_source": {**src, "id": "b"}, "sort": ["b"]}],
        [],
    ]  # fmt: skip
    batches = list(store.iter_documents("ds", version="v1", batch_size=2))
    assert [b.num_rows for b in batches] == [2]
    assert batches[0].schema == document_schema(DIM)
    row = batches[0].to_pylist()[0]
    assert row["vector"] == [0.5] * 4 and row["mtime"] == T0 and row["tags_ai"] == ["cat"]
    first, second = (r.body for r in cluster.of("POST", "/_search"))
    assert first == {
        "size": 2,
        "query": {"bool": {"filter": [{"term": {"dataset_version": "v1"}}]}},
        "sort": [{"id": {"order": "asc"}}],
        "_source": {"includes": document_schema(DIM).names},
        "track_total_hits": False,
    }
    assert second["search_after"] == ["b"]

    cluster.requests.clear()
    cluster.search_responses = [[{"_id": "a", "_source": {"id": "a", "uri": "u"}, "sort": ["a"]}]]
    got = list(store.iter_documents("ds", ids=["a", "zz", "a"], columns=["id", "uri"]))
    assert got[0].to_pylist() == [{"id": "a", "uri": "u"}]
    (req,) = cluster.of("POST", "/_search")
    assert req.body["query"] == {"bool": {"filter": [{"ids": {"values": ["a", "zz"]}}]}}
    assert req.body["_source"] == {"includes": ["id", "uri"]}
    with pytest.raises(ConfigError, match="unknown document column"):
        list(store.iter_documents("ds", columns=["nope"]))


def test_missing_index_reads(cluster):
    store = make_store(cluster)
    assert store.table_info("ds") is None
    assert store.get("ds", ["a"]) == [] and store.delete("ds", ["a"]) == 0
    assert list(store.iter_state("ds", "v1")) == []
    with pytest.raises(StoreError, match="ensure_table"):
        store.upsert("ds", rows(1))
    assert {r.method for r in cluster.requests} == {"GET"}


# ------------------------------------------------------------------------------- configuration


def test_index_names_and_settings_are_validated(cluster):
    store = make_store(cluster, index_prefix="team-a")
    assert store.index_name("My_Set") == "team-a-images-my_set"
    with pytest.raises(ConfigError, match="dataset id"):
        store.index_name("a/b")
    for bad in [{"index_prefix": "Bad"}, {"index_prefix": "_x"}, {"refresh": "sometimes"},
                {"bulk_chunk": 0}, {"timeout": 0}]:  # fmt: skip
        with pytest.raises(ConfigError):
            make_store(cluster, **bad)
    with pytest.raises(ConfigError, match="exactly one"):
        OpenSearchStore()


def test_from_uri_forms():
    assert is_opensearch_uri("opensearch://h:9200") and is_opensearch_uri("opensearch+conn://x")
    assert not is_opensearch_uri("s3://b/x") and not is_opensearch_uri("/tmp/x")
    store = from_uri("opensearchs://search.example.com:9200", {"type": "opensearch",
                     "index_prefix": "team", "refresh": "false", "bulk_chunk": 50})  # fmt: skip
    assert store.where == "https://search.example.com:9200" and store.refresh is False
    assert store.index_prefix == "team" and store.bulk_chunk == 50
    assert from_uri("opensearch://localhost:9200").where == "http://localhost:9200"
    conn = from_uri("opensearch+conn://opensearch_default")
    assert conn.where == "Airflow connection 'opensearch_default'" and conn._client is None
    with pytest.raises(ConfigError, match="credentials"):
        from_uri("opensearchs://admin:secret@h:9200")
    with pytest.raises(ConfigError, match="unknown keys"):
        from_uri("opensearch://h:9200", {"index_min_rows": 5})
    with pytest.raises(ConfigError, match="extras"):
        from_uri("opensearch+conn://c", {"verify_certs": False})
    with pytest.raises(ConfigError, match="path"):
        from_uri("opensearch://h:9200/prefix")
    with pytest.raises(ConfigError, match="not OpenSearch"):
        from_uri("lancedb:///tmp/x")


def test_connection_errors_are_typed_and_hide_credentials():
    store = OpenSearchStore(url="http://admin:s3cret@127.0.0.1:9", timeout=2)
    assert "s3cret" not in repr(store)
    with pytest.raises(StoreError) as e:
        store.table_info("ds")
    assert "cannot reach OpenSearch at http://127.0.0.1:9" in str(e.value)
    assert "s3cret" not in str(e.value) and "admin" not in str(e.value)


def test_airflow_hook_builds_a_verified_client_lazily(monkeypatch):
    pytest.importorskip("airflow.providers.opensearch")
    plugins = str(Path(__file__).resolve().parents[2] / "plugins")
    monkeypatch.syspath_prepend(plugins)
    sys.modules.pop("imageindex_airflow.hooks", None)
    from imageindex_airflow.hooks import ImageIndexOpenSearchHook

    # Nothing is looked up until the client is needed.
    hook = ImageIndexOpenSearchHook()
    assert hook.opensearch_conn_id == "opensearch_default"
    conn = json.dumps({"conn_type": "opensearch", "host": "search.example.com", "port": 9200,
                       "login": "u", "password": "secret-pw", "extra": {"use_ssl": True}})  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_OPENSEARCH_DEFAULT", conn)
    client = hook.client
    (connection,) = client.transport.connection_pool.connections
    assert connection.host == "https://search.example.com:9200"
    assert connection.pool.cert_reqs == "CERT_REQUIRED"  # the provider's hook would not verify
    assert (
        connection.headers["authorization"] == "Basic " + base64.b64encode(b"u:secret-pw").decode()
    )
    assert hook.client is client
    store = hook.get_store(index_prefix="team")
    assert store.client is client and store.index_prefix == "team"
    behaviour = ImageIndexOpenSearchHook.get_ui_field_behaviour()
    assert "schema" in behaviour["hidden_fields"]
    assert "verify_certs" in behaviour["placeholders"]["extra"]
