"""OpenSearchStore without a cluster: configuration, URIs, the Airflow connection, and the one
answer the live node cannot be made to give on demand (a bulk item rejected as too busy, HTTP 429).
Everything the node does is checked against the node itself in test_opensearch_live.py."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest

from imageindex.errors import ConfigError, StoreError
from imageindex.stores.opensearch import (
    OpenSearchStore,
    from_uri,
    index_body,
    is_opensearch_uri,
    to_cosine,
    to_os_score,
)

from .test_contract import DIM, DS, MODEL, ids_of, plain

#: Nothing listens here: a store built with it must not connect before its first call.
NOWHERE = "http://127.0.0.1:9"


class BusyNode:
    """A client whose bulk answers reject the given ids as too busy once, then accept."""

    def __init__(self, busy: set[str]):
        self.busy = set(busy)
        self.bulks: list[list[str]] = []
        raw = {
            "mappings": index_body(DS, MODEL, DIM)["mappings"],
            "settings": {"index": {"knn": "true"}},
        }
        self.indices = SimpleNamespace(get=lambda index, request_timeout: {index: raw})

    def bulk(self, index, body, refresh, request_timeout):
        lines = [json.loads(line) for line in body.splitlines()]
        ids = [
            next(iter(line.values()))["_id"] for line in lines if {"update", "index"} & set(line)
        ]
        self.bulks.append(ids)
        items = []
        for i in ids:
            if i in self.busy:
                self.busy.discard(i)
                err = {"type": "es_rejected_execution_exception", "reason": "write queue full"}
                items.append({"update": {"_id": i, "status": 429, "error": err}})
            else:
                items.append({"update": {"_id": i, "status": 200, "result": "created"}})
        return {"errors": True, "items": items}


def test_items_rejected_as_too_busy_are_sent_again_alone():
    rows = plain(5)
    ids = ids_of(rows)
    node = BusyNode({ids[1], ids[3]})
    store = OpenSearchStore(node, retry_base_delay=0.0)
    assert store.upsert(DS, rows) == 5
    assert node.bulks == [ids, [ids[1], ids[3]]]
    assert store.stats == {"busy_retries": 2, "conflict_retries": 0}
    assert store.last_errors == []


def test_score_mapping():
    for cos in (-1.0, -0.3, 0.0, 0.5, 1.0):
        assert to_cosine(to_os_score(cos)) == pytest.approx(cos)
    assert to_cosine(1.0000001) == 1.0


def test_index_names_and_settings_are_validated():
    store = OpenSearchStore(url=NOWHERE, index_prefix="team-a")
    assert store.index_name("My_Set") == "team-a-images-my_set"
    with pytest.raises(ConfigError, match="dataset id"):
        store.index_name("a/b")
    for bad in [{"index_prefix": "Bad"}, {"index_prefix": "_x"}, {"refresh": "sometimes"},
                {"bulk_chunk": 0}, {"timeout": 0}]:  # fmt: skip
        with pytest.raises(ConfigError):
            OpenSearchStore(url=NOWHERE, **bad)
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


def test_an_airflow_connection_gives_a_verified_client_on_first_use(monkeypatch):
    """``opensearch+conn://<id>``, the store's route to OpenSearch from Airflow: nothing is
    looked up until the client is needed, and certificates are verified unless the extras say
    ``"verify_certs": false`` (the provider's hook would not verify)."""
    store = from_uri("opensearch+conn://opensearch_default", {"index_prefix": "team"})
    conn = json.dumps({"conn_type": "opensearch", "host": "search.example.com", "port": 9200,
                       "login": "u", "password": "secret-pw", "extra": {"use_ssl": True}})  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_OPENSEARCH_DEFAULT", conn)
    client = store.client
    (connection,) = client.transport.connection_pool.connections
    assert connection.host == "https://search.example.com:9200"
    assert connection.pool.cert_reqs == "CERT_REQUIRED"
    assert (
        connection.headers["authorization"] == "Basic " + base64.b64encode(b"u:secret-pw").decode()
    )
    assert store.client is client and store.index_prefix == "team"
