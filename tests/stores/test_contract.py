"""The contract every store keeps, run against each real store: LanceDB (a temporary directory)
and OpenSearch: a local node the session starts (Java 17+ and Maven), or the cluster
``OPENSEARCH_URL`` names (``OPENSEARCH_VERIFY_CERTS=false`` for a self-signed demo cluster).
OpenSearch-only behaviour against the live node is in test_opensearch_live.py.

Vectors are hand-made in 8 dimensions, mostly in the plane of e0 and e1 at known angles, so the
cosine to the query e0 - and with it every expected ordering - is exact.
"""

from __future__ import annotations

import math
import os
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from imageindex.errors import ConfigError, EmptyIndexError, ModelMismatchError, StoreError
from imageindex.query import parse
from imageindex.stores import Filter
from imageindex.stores.base import table_name
from imageindex.stores.schema import STATE_COLUMNS, STATUS_FAILED, STATUS_OK, document_schema
from imageindex.types import doc_id

DIM = 8
MODEL = "contract-model"
DS = "ds"
E0 = np.eye(DIM, dtype=np.float32)[0]
T0 = datetime(2026, 1, 2, tzinfo=UTC)


# ------------------------------------------------------------------------------- backends


class LanceBackend:
    name = "lancedb"

    def __init__(self, tmp_path):
        self.path = str(tmp_path / "lancedb")

    def make_store(self):
        from imageindex.stores.lancedb import LanceDBStore

        return LanceDBStore(self.path)

    def make_foreign_table(self, dataset_id: str, dim: int) -> None:
        """A table made by hand (no imageindex metadata) with vectors of ``dim``."""
        import lancedb

        lancedb.connect(self.path).create_table(table_name(dataset_id), schema=document_schema(dim))

    def cleanup(self) -> None:
        pass


class OpenSearchBackend:
    name = "opensearch"

    def __init__(self, url: str):
        from imageindex.stores.opensearch import OpenSearchStore

        verify = os.environ.get("OPENSEARCH_VERIFY_CERTS", "true").lower() not in ("0", "false")
        # A fresh prefix per test: tests never see each other's indexes.
        self.prefix = f"contract-{uuid.uuid4().hex[:12]}"
        self.options = {"url": url, "index_prefix": self.prefix, "verify_certs": verify}
        self.store = OpenSearchStore(**self.options)

    def make_store(self):
        from imageindex.stores.opensearch import OpenSearchStore

        return OpenSearchStore(**self.options)

    def make_foreign_table(self, dataset_id: str, dim: int) -> None:
        body = {
            "settings": {"index": {"knn": True}},
            "mappings": {
                "properties": {
                    "id": {"type": "keyword"},
                    "vector": {
                        "type": "knn_vector",
                        "dimension": dim,
                        "method": {"name": "hnsw", "space_type": "cosinesimil", "engine": "lucene"},
                    },
                }
            },
        }
        self.store.client.indices.create(index=self.store.index_name(dataset_id), body=body)

    def cleanup(self) -> None:
        client = self.store.client
        names = client.indices.get(index=f"{self.prefix}-*", ignore_unavailable=True)
        for name in names:
            client.indices.delete(index=name)


@pytest.fixture(params=["lancedb", "opensearch"])
def backend(request, tmp_path):
    if request.param == "lancedb":
        b = LanceBackend(tmp_path)
    else:
        # A node this session starts, or the cluster OPENSEARCH_URL names (conftest.py).
        b = OpenSearchBackend(request.getfixturevalue("opensearch_url"))
    try:
        yield b
    finally:
        b.cleanup()


@pytest.fixture
def store(backend):
    s = backend.make_store()
    s.ensure_table(DS, model=MODEL, dim=DIM)
    return s


# ------------------------------------------------------------------------------- documents


def arc(degrees: float, dim: int = DIM) -> np.ndarray:
    """A unit vector at ``degrees`` from e0 (cosine to E0 = cos(degrees))."""
    v = np.zeros(dim, dtype=np.float32)
    v[0], v[1] = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return v


def table(docs: list[dict], *, dim: int = DIM, version: str = "v1", model: str = MODEL):
    """Documents following document_schema(dim); each dict may set ``name`` (file name),
    ``folder``, ``vec``, ``tags_ai``, ``tags_user``, ``width``, ``mtime``, ``status``, ``format``,
    ``size``, ``fingerprint``, ``uri``; everything else gets a plain default."""
    n = len(docs)
    uris, vectors = [], []
    for i, d in enumerate(docs):
        name = d.get("name", f"img{i:04d}.jpg")
        uris.append(d.get("uri", f"s3://bucket/{d.get('folder', 'pets')}/{name}"))
        failed = d.get("status", STATUS_OK) == STATUS_FAILED
        vec = np.zeros(dim, np.float32) if failed else d.get("vec", arc(10 * i, dim))
        vectors.append(np.asarray(vec, np.float32))
    status = [d.get("status", STATUS_OK) for d in docs]
    ok = [s == STATUS_OK for s in status]
    cols = {
        "id": [doc_id(DS, version, u) for u in uris],
        "dataset_id": [DS] * n,
        "dataset_version": [version] * n,
        "uri": uris,
        "key": [u.split("/", 3)[-1] for u in uris],
        "file_name": [u.rsplit("/", 1)[-1] for u in uris],
        "size": [d.get("size", 1000 + i) for i, d in enumerate(docs)],
        "mtime": [d.get("mtime", T0) for d in docs],
        "fingerprint": [d.get("fingerprint", "f1") for d in docs],
        "status": status,
        "error": [
            None if k else d.get("error", "decode: truncated")
            for k, d in zip(ok, docs, strict=True)
        ],
        "width": [d.get("width", 64) if k else None for k, d in zip(ok, docs, strict=True)],
        "height": [48 if k else None for k in ok],
        "format": [d.get("format", "JPEG") if k else None for k, d in zip(ok, docs, strict=True)],
        "mode": ["RGB" if k else None for k in ok],
        "tags_ai": [list(d.get("tags_ai", [])) for d in docs],
        "tags_user": [d.get("tags_user") for d in docs],
        "tags_detail": ["[]"] * n,
        "tag_definitions_hash": ["h"] * n,
        "thumbnail_uri": [None] * n,
        "model": [model] * n,
        "dim": [dim] * n,
        "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(np.concatenate(vectors) if n else [], pa.float32()), dim
        ),
        "indexed_at": [T0] * n,
    }
    return pa.table(cols, schema=document_schema(dim))


def plain(n: int, **kw) -> pa.Table:
    return table([{"name": f"img{i:04d}.jpg"} for i in range(n)], **kw)


def ids_of(tbl: pa.Table) -> list[str]:
    return tbl["id"].to_pylist()


def all_pages(store, *, top_k: int, **kw) -> list:
    """Every hit of a query, page by page; asserts that paging terminates."""
    hits, cursor = [], None
    for _ in range(1000):
        page = store.query(DS, top_k=top_k, cursor=cursor, **kw)
        assert len(page.hits) <= top_k
        hits.extend(page.hits)
        cursor = page.next_cursor
        if cursor is None:
            return hits
    raise AssertionError("paging did not end")


# ------------------------------------------------------------------------------- tables


def test_ensure_table_and_model_guard(backend, store):
    assert store.table_info(DS) == {"model": MODEL, "dim": DIM, "rows": 0}
    assert store.table_info("other") is None
    store.upsert(DS, plain(5))
    store.ensure_table(DS, model=MODEL, dim=DIM)  # same model: fine

    with pytest.raises(ModelMismatchError) as e:
        store.ensure_table(DS, model=MODEL, dim=16)
    assert "'ds'" in str(e.value) and "dim 8" in str(e.value) and "dim 16" in str(e.value)
    with pytest.raises(ModelMismatchError, match="'other-model'"):
        store.ensure_table(DS, model="other-model", dim=DIM)

    # A fresh handle (another process) sees the same metadata, and nothing was written.
    again = backend.make_store()
    assert again.table_info(DS) == {"model": MODEL, "dim": DIM, "rows": 5}
    assert again.count(DS) == 5


def test_hand_made_table_with_other_dim_is_refused(backend):
    s = backend.make_store()
    backend.make_foreign_table("hand", 16)
    with pytest.raises(ModelMismatchError, match="dim 16"):
        s.ensure_table("hand", model=MODEL, dim=DIM)
    assert s.count("hand") == 0


def test_upsert_refuses_other_dim_or_model(store):
    store.upsert(DS, plain(3))
    with pytest.raises(ModelMismatchError, match="dim 16"):
        store.upsert(DS, plain(3, dim=16))
    with pytest.raises(ModelMismatchError, match="other"):
        store.upsert(DS, plain(3, model="other"))
    assert store.count(DS) == 3


def test_missing_table(backend):
    s = backend.make_store()
    assert s.table_info("nothing") is None
    assert s.count("nothing") == 0
    assert s.get("nothing", ["a"]) == []
    assert list(s.iter_state("nothing", "v1")) == []
    assert s.delete("nothing", ["a"]) == 0
    with pytest.raises(EmptyIndexError, match="'nothing'"):
        s.query("nothing", vector=E0)
    with pytest.raises(EmptyIndexError, match="'nothing'"):
        s.search("nothing", None, Filter())
    with pytest.raises(StoreError, match="ensure_table"):
        s.upsert("nothing", plain(1))
    for bad in ["", "a/b", "../x", "x y", "a" * 65]:
        with pytest.raises(ConfigError, match="dataset id"):
            s.ensure_table(bad, model=MODEL, dim=DIM)


# ------------------------------------------------------------------------------- writes


def test_upsert_update_and_idempotency(store):
    rows = plain(20)
    assert store.upsert(DS, rows) == 20
    assert store.upsert(DS, rows) == 20
    assert store.count(DS) == 20
    assert store.table_info(DS)["rows"] == 20

    changed = table([{"name": f"img{i:04d}.jpg", "fingerprint": "f2"} for i in range(5)])
    store.upsert(DS, changed)
    assert store.count(DS) == 20
    fps = {d["id"]: d["fingerprint"] for d in store.get(DS, ids_of(rows))}
    assert sorted(fps.values()) == ["f1"] * 15 + ["f2"] * 5
    assert {fps[i] for i in ids_of(changed)} == {"f2"}

    # Duplicate ids in one input: one document, the last wins.
    dup = table([{"name": "dup.jpg"}, {"name": "dup.jpg", "fingerprint": "f3"}])
    assert store.upsert(DS, dup) == 1
    assert store.count(DS) == 21
    assert [d["fingerprint"] for d in store.get(DS, ids_of(dup)[:1])] == ["f3"]


def test_missing_nullable_columns_are_filled(store):
    rows = plain(3).drop_columns(["tags_user", "thumbnail_uri", "error"])
    store.upsert(DS, rows)
    doc = store.get(DS, ids_of(rows)[:1])[0]
    assert doc["tags_user"] is None and doc["thumbnail_uri"] is None and doc["error"] is None


def test_user_tags_survive_upsert(store):
    rows = plain(4)
    ids = ids_of(rows)
    store.upsert(DS, rows)
    assert store.add_user_tags(DS, ids[:2], ["fav", "it's"]) == 2
    assert store.add_user_tags(DS, ids[:1], ["fav"]) == 0  # already there
    assert store.add_user_tags(DS, ["unknown"], ["fav"]) == 0

    # Re-indexing sends tags_user = null: the stored user tags stay.
    store.upsert(DS, table([{"name": f"img{i:04d}.jpg", "fingerprint": "f2"} for i in range(4)]))
    docs = {d["id"]: d for d in store.get(DS, ids)}
    assert [docs[i]["fingerprint"] for i in ids] == ["f2"] * 4
    assert docs[ids[0]]["tags_user"] == ["fav", "it's"]
    assert docs[ids[1]]["tags_user"] == ["fav", "it's"]
    assert docs[ids[2]]["tags_user"] is None

    # A non-null incoming value is an explicit overwrite.
    store.upsert(DS, table([{"name": "img0000.jpg", "tags_user": ["new"]}]))
    assert store.get(DS, ids[:1])[0]["tags_user"] == ["new"]

    assert store.remove_user_tags(DS, ids[:3], ["fav", "new"]) == 2
    docs = {d["id"]: d for d in store.get(DS, ids)}
    assert docs[ids[0]]["tags_user"] == []
    assert docs[ids[1]]["tags_user"] == ["it's"]
    assert docs[ids[2]]["tags_user"] is None
    assert store.count(DS) == 4
    hits = store.query(DS, where=parse('tags.user:"it\'s"')).hits
    assert [h.id for h in hits] == [ids[1]] and hits[0].tags_user == ["it's"]


def test_delete(store):
    rows = plain(10)
    ids = ids_of(rows)
    store.upsert(DS, rows)
    assert store.delete(DS, ["x' OR '1'='1", "nope') OR (1=1"]) == 0
    assert store.count(DS) == 10
    assert store.delete(DS, ids[:7] + ["unknown", ids[0]]) == 7
    assert store.count(DS) == 3
    assert sorted(d["id"] for d in store.get(DS, ids)) == sorted(ids[7:])
    assert store.delete(DS, []) == 0
    assert store.delete(DS, ids[:7]) == 0


# ------------------------------------------------------------------------------- reads


def test_iter_state_streams_state_columns_of_one_version(store):
    store.upsert(DS, plain(25, version="v1"))
    store.upsert(DS, plain(7, version="v2"))
    batches = list(store.iter_state(DS, "v1", batch_size=10))
    assert len(batches) >= 3
    for b in batches:
        assert b.schema.names == STATE_COLUMNS
        assert b.schema == pa.schema([document_schema(DIM).field(c) for c in STATE_COLUMNS])
    rows = [r for b in batches for r in b.to_pylist()]
    assert len(rows) == 25 and len({r["id"] for r in rows}) == 25
    assert all(r["mtime"] == T0 and r["fingerprint"] == "f1" for r in rows)
    assert sum(b.num_rows for b in store.iter_state(DS, "v2")) == 7
    assert list(store.iter_state(DS, "v3")) == []
    assert list(store.iter_state(DS, "x' OR '1'='1")) == []


def test_iter_documents_streams_whole_documents(store):
    v1 = plain(25, version="v1")
    store.upsert(DS, v1)
    store.upsert(DS, plain(7, version="v2"))
    batches = list(store.iter_documents(DS, version="v1", batch_size=10))
    assert len(batches) >= 3
    got = pa.Table.from_batches(batches)
    assert got.schema.names == document_schema(DIM).names
    assert got.schema.field("vector").type == document_schema(DIM).field("vector").type
    assert sorted(got["id"].to_pylist()) == sorted(ids_of(v1))
    by_id = {r["id"]: r for r in got.to_pylist()}
    for i, doc_id_ in enumerate(ids_of(v1)):  # vectors come back exactly
        np.testing.assert_allclose(by_id[doc_id_]["vector"], arc(10 * i), atol=1e-6)
        assert by_id[doc_id_]["mtime"] == T0 and by_id[doc_id_]["size"] == 1000 + i
    # every version; a selection of ids (unknown ones skipped); a selection of columns
    assert sum(b.num_rows for b in store.iter_documents(DS)) == 32
    pick = [ids_of(v1)[3], "unknown", ids_of(v1)[5]]
    sel = pa.Table.from_batches(list(store.iter_documents(DS, ids=pick, columns=["id", "uri"])))
    assert sel.schema.names == ["id", "uri"]
    assert sorted(sel["id"].to_pylist()) == sorted(pick[::2])
    assert list(store.iter_documents(DS, ids=[])) == []
    assert list(store.iter_documents(DS, version="x' OR '1'='1")) == []
    assert list(store.iter_documents("nothing")) == []
    with pytest.raises(ConfigError, match="nope"):
        list(store.iter_documents(DS, columns=["id", "nope"]))


def test_get_returns_documents_in_order(store):
    mtime = datetime(2026, 1, 5, 10, 0, 0, 123456, tzinfo=UTC)
    rows = table([{"name": f"img{i}.jpg", "mtime": mtime} for i in range(5)])
    store.upsert(DS, rows)
    ids = ids_of(rows)
    docs = store.get(DS, [ids[3], "unknown", ids[1]])
    assert [d["id"] for d in docs] == [ids[3], ids[1]]
    doc = docs[0]
    assert "vector" not in doc and doc["uri"] == "s3://bucket/pets/img3.jpg"
    assert doc["mtime"] == mtime and doc["indexed_at"] == T0  # microseconds survive
    assert doc["size"] == 1003 and doc["width"] == 64 and doc["tags_ai"] == []
    assert doc["model"] == MODEL and doc["dim"] == DIM and doc["status"] == STATUS_OK
    assert store.get(DS, []) == []


def test_count_with_filters(store):
    pets = [{"name": f"a{i}.jpg", "tags_ai": ["cat" if i < 3 else "dog"]} for i in range(6)]
    store.upsert(DS, table(pets))
    broken = [{"name": f"b{i}.jpg", "status": STATUS_FAILED} for i in range(4)]
    store.upsert(DS, table(broken, version="v2"))
    assert store.count(DS) == 10
    assert store.count(DS, Filter()) == 6  # status ok by default
    assert store.count(DS, Filter(status=None)) == 10
    assert store.count(DS, Filter(versions=["v2"], status=STATUS_FAILED)) == 4
    assert store.count(DS, Filter(versions=[])) == 0
    assert store.count(DS, Filter(uris=[])) == 0
    assert store.count(DS, Filter(tags_any=["cat"])) == 3
    assert store.count(DS, Filter(tags_exclude=["cat"], status=None)) == 7


# ------------------------------------------------------------------------------- the query language

#: (name, folder, tags_ai, tags_user, width, mtime, status, format); vector at 10 * i degrees.
ZOO = [
    ("cat01.jpg", "pets", ["cat"], None, 640, "2026-01-05T10:00:00", "ok", "JPEG"),
    ("My_Cat.PNG", "pets", ["cat", "dog"], ["fav"], 1024, "2026-01-31T23:59:59", "ok", "PNG"),
    ("dog.gif", "pets", ["dog"], [], 320, "2026-02-01T00:00:00", "ok", "GIF"),
    ("bobcat.jpg", "pets", [], ["cat"], 2048, "2025-12-31T12:00:00", "ok", "JPEG"),
    ("bird.webp", "misc", ["bird"], ["fav", "wild"], 800, "2026-01-15T00:00:00", "ok", "WEBP"),
    ("broken.jpg", "misc", [], None, None, "2026-01-20T08:00:00", "failed", None),
    ("ärger.jpg", "misc", ["cat"], None, 1920, "2026-03-01T00:00:00", "ok", "JPEG"),
    ("holiday 2026.jpg", "misc", ["beach", "it's"], ["fav"], 640, "2026-01-10T00:00:00", "ok",
     "JPEG"),
]  # fmt: skip
FAILED = {5}


@pytest.fixture
def zoo(store):
    docs = [
        {
            "name": name,
            "folder": folder,
            "tags_ai": ai,
            "tags_user": user,
            "width": width,
            "mtime": datetime.fromisoformat(mtime).replace(tzinfo=UTC),
            "status": status,
            "format": fmt,
        }
        for name, folder, ai, user, width, mtime, status, fmt in ZOO
    ]
    rows = table(docs)
    store.upsert(DS, rows)
    return store, ids_of(rows)


QUERIES = [
    ("tags:cat", {0, 1, 3, 6}),
    ("tag:[bird, dog]", {1, 2, 4}),
    ("tags.user:fav", {1, 4, 7}),
    ("tags.ai:cat", {0, 1, 6}),
    ("tags:cat AND tags:dog", {1}),
    ("HAS tags.user", {1, 3, 4, 7}),
    ("NOT HAS tags.user", {0, 2, 5, 6}),
    ("NOT tags:[cat, dog]", {4, 5, 7}),
    ('tags:"it\'s"', {7}),
    ('tags:"\') OR 1=1 --"', set()),
    ("file_name:cat", {0, 1, 3}),
    ("file_name=dog.gif", {2}),
    ("file_name:ÄRGER", {6}),
    ('file_name:"holiday 2026"', {7}),
    ("uri=s3://bucket/pets/*", {0, 1, 2, 3}),
    ("uri:S3://BUCKET/MISC/*", {4, 5, 6, 7}),
    ("width >= 1024", {1, 3, 6}),
    ("width < 640", {2}),
    ("width != 640", {1, 2, 3, 4, 5, 6}),
    ("NOT HAS width", {5}),
    ("mtime >= 2026-01-01 AND mtime < 2026-02-01", {0, 1, 4, 5, 7}),
    ("mtime <= 2026-01-31", {0, 1, 3, 4, 5, 7}),
    ("mtime:2026-01-31", {1}),
    ("mtime > 2026-01-31", {2, 6}),
    ("mtime < 2026-01-05T12:00:00Z", {0, 3}),
    ("tags:cat OR tags.user:fav", {0, 1, 3, 4, 6, 7}),
    ("(tags:cat OR tags:dog) AND NOT tags.user:fav", {0, 2, 3, 6}),
    ("NOT (tags:cat OR HAS tags.user) AND width > 300", {2}),
    ("format:jp", {0, 3, 6, 7}),
    ("status=failed AND error:TRUNCATED", {5}),
    ("status != ok", {5}),
    ("size:[1000, 1002]", {0, 2}),
    ("version=v1 AND dataset=ds", set(range(8))),
]


@pytest.mark.parametrize(("text", "expected"), QUERIES, ids=[q for q, _ in QUERIES])
def test_query_language(zoo, text, expected):
    store, ids = zoo
    where = parse(text)
    # Filter-only: every match, failed documents included, in uri order, across pages.
    hits = all_pages(store, where=where, top_k=3)
    want = sorted((ids[i] for i in expected), key=lambda d: store.get(DS, [d])[0]["uri"])
    assert [h.id for h in hits] == want
    assert {h.score for h in hits} <= {1.0}
    # With a vector: the same matches minus failed ones, nearest (lowest index) first.
    ranked = store.query(DS, vector=E0, where=where, top_k=50).hits
    assert [h.id for h in ranked] == [ids[i] for i in sorted(expected - FAILED)]
    for h in ranked:
        assert h.score == pytest.approx(math.cos(math.radians(10 * ids.index(h.id))), abs=1e-5)


def test_vector_with_filter_is_top_k_of_filtered_set(zoo):
    store, ids = zoo
    # Without the filter the three nearest are 0, 1, 2; within "misc" they are 4, 6, 7.
    hits = store.query(DS, vector=E0, where=parse("uri=s3://bucket/misc/*"), top_k=3).hits
    assert [h.id for h in hits] == [ids[4], ids[6], ids[7]]
    assert [round(h.score, 4) for h in hits] == [
        round(math.cos(math.radians(d)), 4) for d in (40, 60, 70)
    ]
    assert hits[0].dataset_id == DS and hits[0].dataset_version == "v1"
    assert hits[0].file_name == "bird.webp" and hits[0].width == 800
    assert hits[0].mtime == datetime(2026, 1, 15, tzinfo=UTC).timestamp()
    # A selective filter far from the query still finds its documents.
    far = store.query(DS, vector=-E0, where=parse("tags.user:wild"), top_k=10).hits
    assert [h.id for h in far] == [ids[4]]
    # Scores do not depend on the query's length.
    again = store.query(DS, vector=E0 * 7.0, where=parse("uri=s3://bucket/misc/*"), top_k=3)
    assert [h.score for h in again.hits] == pytest.approx([h.score for h in hits], abs=1e-6)


def test_bad_query_vectors(zoo):
    store, _ = zoo
    with pytest.raises(ModelMismatchError, match="dim 16"):
        store.query(DS, vector=np.ones(16))
    with pytest.raises(ConfigError, match="zeros"):
        store.query(DS, vector=np.zeros(DIM))
    with pytest.raises(ConfigError, match="top_k"):
        store.query(DS, vector=E0, top_k=0)


def test_score_threshold(zoo):
    store, ids = zoo
    hits = store.query(DS, vector=E0, top_k=10, score_threshold=0.9).hits
    # cos 0, 10, 20 degrees >= 0.9 > cos 30 degrees
    assert [h.id for h in hits] == ids[:3]
    assert [round(h.score, 3) for h in hits] == [1.0, 0.985, 0.940]
    assert store.query(DS, vector=E0, top_k=10, score_threshold=1.01).hits == []
    assert len(store.query(DS, vector=E0, top_k=10).hits) == 7
    legacy = store.search(DS, E0, Filter(), top_k=10, score_threshold=0.9)
    assert [h.id for h in legacy] == ids[:3]


def test_failed_docs_excluded_from_vector_search_only(zoo):
    store, ids = zoo
    for where in (None, parse("status=failed"), parse("NOT HAS width")):
        hits = store.query(DS, vector=E0, where=where, top_k=50).hits
        assert ids[5] not in {h.id for h in hits}
        assert all(np.isfinite(h.score) for h in hits)
    failed = store.query(DS, where=parse("status=failed")).hits
    assert [h.id for h in failed] == [ids[5]] and failed[0].width is None
    everything = all_pages(store, top_k=100)
    assert len(everything) == 8
    # The simple Filter form keeps the same rule.
    assert ids[5] not in {h.id for h in store.search(DS, E0, Filter(status=None), top_k=50)}
    assert ids[5] in {h.id for h in store.search(DS, None, Filter(status=None), top_k=50)}
    by_uri = store.search(DS, None, Filter(), top_k=3)
    assert [h.uri for h in by_uri] == sorted(
        f"s3://bucket/{folder}/{name}" for name, folder, *_, st, _f in ZOO if st == "ok"
    )[:3]


# ------------------------------------------------------------------------------- paging


@pytest.fixture
def fan(store):
    """30 documents at 3-degree steps from E0 (two identical pairs: ties broken by id), and
    two failed ones."""
    docs = []
    for i in range(30):
        angle = 3 * (i - 1 if i in (11, 21) else i)  # 11 ties with 10, 21 with 20
        docs.append(
            {
                "name": f"f{(i * 7) % 30:02d}.jpg",
                "vec": arc(angle),
                "mtime": T0 + timedelta(seconds=(i % 5)),  # five-way mtime ties
                "size": 5000 - (i % 7),
            }
        )
    docs += [{"name": f"x{i}.jpg", "status": STATUS_FAILED} for i in range(2)]
    rows = table(docs)
    store.upsert(DS, rows)
    return store, rows


def test_vector_pages_concatenate_to_the_unpaged_ranking(fan):
    store, rows = fan
    full = store.query(DS, vector=E0, top_k=30)
    assert full.next_cursor is None and len(full.hits) == 30
    ids = ids_of(rows)
    angles = [3 * (i - 1 if i in (11, 21) else i) for i in range(30)]
    want = sorted(range(30), key=lambda i: (angles[i], ids[i]))
    assert [h.id for h in full.hits] == [ids[i] for i in want]

    paged = all_pages(store, vector=E0, top_k=7)
    assert [h.id for h in paged] == [h.id for h in full.hits]
    assert len({h.id for h in paged}) == 30
    assert [h.score for h in paged] == pytest.approx([h.score for h in full.hits], abs=1e-6)

    # Stable: the same cursor gives the same page.
    first = store.query(DS, vector=E0, top_k=7)
    second = store.query(DS, vector=E0, top_k=7, cursor=first.next_cursor)
    again = store.query(DS, vector=E0, top_k=7, cursor=first.next_cursor)
    assert [h.id for h in second.hits] == [h.id for h in again.hits]
    assert second.next_cursor == again.next_cursor

    # With a threshold the pages stop where the scores do.
    kept = [h.id for h in full.hits if h.score >= 0.6]  # up to 51 degrees: 17 + 1 tie
    assert len(kept) == 18
    assert [h.id for h in all_pages(store, vector=E0, top_k=4, score_threshold=0.6)] == kept
    # And with a filter.
    odd = [h.id for h in full.hits if int(h.file_name[1:3]) % 2]
    where = parse("file_name:[" + ", ".join(f"f{i:02d}" for i in range(1, 30, 2)) + "]")
    assert [h.id for h in all_pages(store, vector=E0, where=where, top_k=4)] == odd


@pytest.mark.parametrize("sort", ["uri", "-mtime", "file_name", "size", "-size", "indexed_at"])
def test_filter_only_pages_walk_every_match_in_order(fan, sort):
    store, rows = fan
    docs = store.get(DS, ids_of(rows))
    key = sort.lstrip("-")
    want = sorted(docs, key=lambda d: d["id"])
    want = sorted(want, key=lambda d: d[key], reverse=sort.startswith("-"))
    hits = all_pages(store, top_k=4, sort=sort)
    assert [h.id for h in hits] == [d["id"] for d in want]
    assert len(hits) == 32  # failed documents included

    where = parse("NOT file_name:x")
    filtered = all_pages(store, where=where, top_k=5, sort=sort)
    assert [h.id for h in filtered] == [d["id"] for d in want if d["status"] == STATUS_OK]


def test_cursors_belong_to_their_query(fan):
    store, _ = fan
    a = store.query(DS, where=parse("size > 4990"), top_k=2)
    assert a.next_cursor
    with pytest.raises(ConfigError, match="another query"):
        store.query(DS, where=parse("size > 4991"), top_k=2, cursor=a.next_cursor)
    with pytest.raises(ConfigError, match="another query"):
        store.query(DS, where=parse("size > 4990"), top_k=2, cursor=a.next_cursor, sort="-uri")
    v = store.query(DS, vector=E0, top_k=2)
    with pytest.raises(ConfigError, match="another query"):
        store.query(DS, top_k=2, cursor=v.next_cursor)
    with pytest.raises(ConfigError, match="another query"):
        store.query(DS, vector=-E0, top_k=2, cursor=v.next_cursor)
    with pytest.raises(ConfigError, match="malformed"):
        store.query(DS, top_k=2, cursor="not-a-cursor!")
    with pytest.raises(ConfigError, match="sort"):
        store.query(DS, sort="width")


# ------------------------------------------------------------------------------- OpenSearch only


def test_rejected_document_is_reported_and_the_rest_land(backend, store):
    if backend.name != "opensearch":
        pytest.skip("per-document rejection is an OpenSearch behaviour (LanceDB takes any size)")
    from imageindex.stores.opensearch import BulkWriteError

    # A keyword longer than Lucene's 32766-byte term limit is refused by the shard.
    docs = [{"name": f"ok{i}.jpg"} for i in range(4)]
    docs.insert(2, {"uri": "s3://bucket/" + "x" * 40_000 + ".jpg"})
    rows = table(docs)
    with pytest.raises(BulkWriteError) as e:
        store.upsert(DS, rows)
    bad = ids_of(rows)[2]
    assert e.value.written == 4 and [x["id"] for x in e.value.errors] == [bad]
    assert "1 of 5" in str(e.value)
    assert store.last_errors == e.value.errors
    assert store.count(DS) == 4
    assert store.get(DS, [bad]) == []
