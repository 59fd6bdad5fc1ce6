"""Shared by the compiler tests: the LanceDB compiler tests' rows indexed on a live OpenSearch
node (conftest.py ``opensearch_url``), so compiled bodies run on the real thing."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest

from .test_lancedb_compiler import DIM, make_table


@pytest.fixture(scope="module")
def live_index(opensearch_url):
    from imageindex.stores.opensearch import OpenSearchStore, index_body

    store = OpenSearchStore(url=opensearch_url)
    client = store.client
    name = f"compiler-{uuid.uuid4().hex[:12]}"
    body = index_body("ds", "m", DIM)
    body["mappings"]["properties"]["quality"] = {"type": "float"}  # the test's extra field
    client.indices.create(index=name, body=body)
    lines = []
    for row in make_table().to_pylist():
        doc = {
            k: (v.isoformat(timespec="microseconds") if isinstance(v, datetime) else v)
            for k, v in row.items()
            if v is not None
        }
        lines += [{"index": {"_id": row["id"]}}, doc]
    resp = client.bulk(index=name, body=lines, refresh=True)
    assert not resp["errors"], [i for i in resp["items"] if "error" in i["index"]]
    try:
        yield client, name
    finally:
        client.indices.delete(index=name)
