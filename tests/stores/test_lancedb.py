"""The LanceDB store against a real LanceDB in a temporary directory, with small synthetic vectors."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from imageindex.errors import ConfigError, EmptyIndexError, ModelMismatchError, StoreError
from imageindex.stores import Filter, open_store, resolve_store_uri
from imageindex.stores.lancedb import LanceDBStore, compile_filter, sql_string
from imageindex.stores.schema import STATE_COLUMNS, STATUS_FAILED, STATUS_OK, document_schema
from imageindex.types import doc_id

DIM = 8
MODEL = "test-model"
DS = "ds"


def make_rows(
    n: int,
    *,
    dim: int = DIM,
    dataset: str = DS,
    version: str = "v1",
    start: int = 0,
    vectors: np.ndarray | None = None,
    tags_ai: list[list[str]] | None = None,
    tags_user: list[list[str] | None] | None = None,
    status: list[str] | None = None,
    fingerprint: str = "f1",
    model: str = MODEL,
    uris: list[str] | None = None,
    seed: int = 0,
) -> pa.Table:
    """``n`` documents following document_schema(dim); random unit vectors unless given."""
    if uris is None:
        uris = [f"file:///data/{version}/img{start + i:06d}.jpg" for i in range(n)]
    if vectors is None:
        rng = np.random.default_rng(seed + start)
        vectors = rng.normal(size=(n, dim)).astype(np.float32)
    status = status or [STATUS_OK] * n
    vectors = np.asarray(vectors, dtype=np.float32).copy()
    for i, s in enumerate(status):
        if s == STATUS_FAILED:
            vectors[i] = 0.0
    now = datetime(2024, 1, 2, tzinfo=UTC)
    cols = {
        "id": [doc_id(dataset, version, u) for u in uris],
        "dataset_id": [dataset] * n,
        "dataset_version": [version] * n,
        "uri": uris,
        "key": [u.rsplit("/", 1)[-1] for u in uris],
        "file_name": [u.rsplit("/", 1)[-1] for u in uris],
        "size": [1000 + i for i in range(n)],
        "mtime": [now] * n,
        "fingerprint": [fingerprint] * n,
        "status": status,
        "error": [None if s == STATUS_OK else "decode: broken" for s in status],
        "width": [64] * n,
        "height": [48] * n,
        "format": ["JPEG"] * n,
        "mode": ["RGB"] * n,
        "tags_ai": tags_ai if tags_ai is not None else [[] for _ in range(n)],
        "tags_user": tags_user if tags_user is not None else [None] * n,
        "tags_detail": ["[]"] * n,
        "tag_definitions_hash": ["h"] * n,
        "thumbnail_uri": [None] * n,
        "model": [model] * n,
        "dim": [dim] * n,
        "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1), pa.float32()), dim
        ),
        "indexed_at": [now] * n,
    }
    return pa.table(cols, schema=document_schema(dim))


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def store(tmp_path) -> LanceDBStore:
    s = LanceDBStore(str(tmp_path / "db"))
    s.ensure_table(DS, model=MODEL, dim=DIM)
    return s


# ------------------------------------------------------------------------------- open_store


def test_open_store_uri_forms(tmp_path):
    assert resolve_store_uri(str(tmp_path)) == str(tmp_path)
    assert resolve_store_uri(f"file://{tmp_path}") == str(tmp_path)
    assert resolve_store_uri(f"lancedb://{tmp_path}") == str(tmp_path)
    assert resolve_store_uri("s3://bucket/prefix/") == "s3://bucket/prefix"
    store = open_store(spec={"type": "lancedb", "uri": str(tmp_path / "a"), "index_min_rows": 9})
    assert isinstance(store, LanceDBStore) and store.index_min_rows == 9
    assert open_store(f"lancedb://{tmp_path}/b").uri == f"{tmp_path}/b"


def test_s3_store_connects_lazily_and_fails_typed():
    options = {
        "endpoint": "http://127.0.0.1:9",  # nothing listens here
        "aws_access_key_id": "x",
        "aws_secret_access_key": "y",
        "region": "us-east-1",
        "allow_http": "true",
        "client_max_retries": "0",
        "client_retry_timeout": "1",
    }
    store = open_store("s3://bucket/prefix", spec={"storage_options": options})
    assert store.uri == "s3://bucket/prefix" and not store.local
    with pytest.raises(StoreError, match="storage_options"):
        store.table_info(DS)
    with pytest.raises(ConfigError, match="file_lock"):
        open_store("s3://bucket/prefix", spec={"file_lock": True})


@pytest.mark.parametrize(
    "uri,spec,match",
    [
        ("gs://bucket/x", None, "unsupported scheme 'gs'"),
        ("lancedb://relative/x", None, "absolute path"),
        ("s3://", None, "no bucket"),
        (None, {"type": "milvus", "uri": "/tmp/x"}, "valid types"),
        (None, {"uri": "/tmp/x", "index_min_row": 5}, "unknown keys"),
        (None, {}, "no store uri"),
    ],
)
def test_open_store_rejects(uri, spec, match):
    with pytest.raises(ConfigError, match=match):
        open_store(uri, spec=spec)


def test_dataset_id_validated(store):
    for bad in ["", "a/b", "../x", "x y", "a" * 65, "é"]:
        with pytest.raises(ConfigError, match="dataset id"):
            store.ensure_table(bad, model=MODEL, dim=DIM)


# ------------------------------------------------------------------------------- tables


def test_ensure_table_and_mismatch_guard(store):
    assert store.table_info(DS) == {"model": MODEL, "dim": DIM, "rows": 0}
    assert store.table_info("other") is None
    store.upsert(DS, make_rows(5))
    store.ensure_table(DS, model=MODEL, dim=DIM)  # same model: fine
    version = store._open(DS).version

    with pytest.raises(ModelMismatchError) as e:
        store.ensure_table(DS, model=MODEL, dim=16)
    assert "'ds'" in str(e.value) and "dim 8" in str(e.value) and "dim 16" in str(e.value)
    with pytest.raises(ModelMismatchError, match="'other-model'"):
        store.ensure_table(DS, model="other-model", dim=DIM)

    # A fresh handle (another process) sees the same metadata, and nothing was written.
    again = LanceDBStore(store.uri)
    assert again.table_info(DS) == {"model": MODEL, "dim": DIM, "rows": 5}
    assert again._open(DS).version == version


def test_upsert_refuses_other_dim_or_model(store):
    store.upsert(DS, make_rows(3))
    with pytest.raises(ModelMismatchError, match="dim 16"):
        store.upsert(DS, make_rows(3, dim=16, start=10))
    with pytest.raises(ModelMismatchError, match="other"):
        store.upsert(DS, make_rows(3, model="other", start=10))
    assert store.count(DS) == 3


def test_upsert_without_table_says_what_to_do(tmp_path):
    s = LanceDBStore(str(tmp_path))
    with pytest.raises(StoreError, match="ensure_table"):
        s.upsert(DS, make_rows(1))


# ------------------------------------------------------------------------------- writes


def test_upsert_update_and_idempotency(store):
    rows = make_rows(20)
    assert store.upsert(DS, rows) == 20
    assert store.upsert(DS, rows) == 20
    assert store.count(DS) == 20
    assert store.count(DS, Filter()) == 20

    changed = make_rows(5, fingerprint="f2")
    store.upsert(DS, changed)
    assert store.count(DS) == 20
    fps = {d["id"]: d["fingerprint"] for d in store.get(DS, rows["id"].to_pylist())}
    assert sorted(fps.values()) == ["f1"] * 15 + ["f2"] * 5
    assert {fps[i] for i in changed["id"].to_pylist()} == {"f2"}

    # Duplicate ids in one input: one row, the last wins.
    dup = pa.concat_tables([make_rows(2, start=100), make_rows(2, start=100, fingerprint="f3")])
    assert store.upsert(DS, dup) == 2
    assert store.count(DS) == 22
    got = store.get(DS, dup["id"].to_pylist()[:2])
    assert [d["fingerprint"] for d in got] == ["f3", "f3"]


def test_upsert_writes_in_batches(tmp_path):
    s = LanceDBStore(str(tmp_path), write_batch_rows=7)
    s.ensure_table(DS, model=MODEL, dim=DIM)
    assert s.upsert(DS, make_rows(30)) == 30
    assert s.stats["batches"] == 5
    assert s.count(DS) == 30


def test_missing_nullable_columns_are_filled(store):
    rows = make_rows(3).drop_columns(["tags_user", "thumbnail_uri", "error"])
    store.upsert(DS, rows)
    doc = store.get(DS, [rows["id"][0].as_py()])[0]
    assert doc["tags_user"] is None and doc["thumbnail_uri"] is None


def test_user_tags_survive_reindex(store):
    rows = make_rows(4)
    ids = rows["id"].to_pylist()
    store.upsert(DS, rows)
    assert store.add_user_tags(DS, ids[:2], ["fav", "it's"]) == 2
    assert store.add_user_tags(DS, ids[:1], ["fav"]) == 0  # already there

    store.upsert(DS, make_rows(4, fingerprint="f2"))  # re-index: incoming tags_user is null
    docs = {d["id"]: d for d in store.get(DS, ids)}
    assert [docs[i]["fingerprint"] for i in ids] == ["f2"] * 4
    assert docs[ids[0]]["tags_user"] == ["fav", "it's"]
    assert docs[ids[1]]["tags_user"] == ["fav", "it's"]
    assert docs[ids[2]]["tags_user"] is None

    # A non-null incoming value is an explicit overwrite.
    store.upsert(DS, make_rows(1, tags_user=[["new"]]))
    assert store.get(DS, ids[:1])[0]["tags_user"] == ["new"]

    assert store.remove_user_tags(DS, ids[:2], ["fav", "new"]) == 2
    docs = {d["id"]: d for d in store.get(DS, ids)}
    assert docs[ids[0]]["tags_user"] == []
    assert docs[ids[1]]["tags_user"] == ["it's"]
    assert store.count(DS) == 4


def test_delete_batched_and_quoted(tmp_path):
    s = LanceDBStore(str(tmp_path), delete_batch_ids=3)
    s.ensure_table(DS, model=MODEL, dim=DIM)
    rows = make_rows(10)
    ids = rows["id"].to_pylist()
    s.upsert(DS, rows)
    assert s.delete(DS, ["x' OR '1'='1", "nope') OR (1=1"]) == 0
    assert s.count(DS) == 10
    assert s.delete(DS, ids[:7] + ["unknown", ids[0]]) == 7
    assert s.count(DS) == 3
    assert sorted(d["id"] for d in s.get(DS, ids)) == sorted(ids[7:])
    assert s.delete(DS, []) == 0
    assert s.delete("missing", ["a"]) == 0


# ------------------------------------------------------------------------------- reads


def test_iter_state_streams_state_columns_of_one_version(store):
    store.upsert(DS, make_rows(25, version="v1"))
    store.upsert(DS, make_rows(7, version="v2"))
    batches = list(store.iter_state(DS, "v1", batch_size=10))
    assert len(batches) >= 3
    for b in batches:
        assert b.schema.names == STATE_COLUMNS
        assert "vector" not in b.schema.names
    uris = [u for b in batches for u in b["uri"].to_pylist()]
    assert len(uris) == 25 and all("/v1/" in u for u in uris)
    assert sum(b.num_rows for b in store.iter_state(DS, "v2")) == 7
    assert list(store.iter_state(DS, "v3")) == []
    assert list(store.iter_state("missing", "v1")) == []
    assert list(store.iter_state(DS, "x' OR '1'='1")) == []


def test_get_returns_docs_without_vector_in_order(store):
    rows = make_rows(5)
    store.upsert(DS, rows)
    ids = rows["id"].to_pylist()
    docs = store.get(DS, [ids[3], "unknown", ids[1]])
    assert [d["id"] for d in docs] == [ids[3], ids[1]]
    assert "vector" not in docs[0] and docs[0]["uri"].endswith("img000003.jpg")


def test_count_with_filters(store):
    store.upsert(DS, make_rows(6, version="v1", tags_ai=[["cat"]] * 3 + [["dog"]] * 3))
    store.upsert(DS, make_rows(4, version="v2", status=[STATUS_FAILED] * 4))
    assert store.count(DS) == 10
    assert store.count(DS, Filter()) == 6  # status ok by default
    assert store.count(DS, Filter(status=None)) == 10
    assert store.count(DS, Filter(versions=["v2"], status=STATUS_FAILED)) == 4
    assert store.count(DS, Filter(versions=[])) == 0
    assert store.count(DS, Filter(tags_any=["cat"])) == 3
    assert store.count("missing") == 0


def test_search_orders_by_cosine(store):
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(50, DIM)).astype(np.float32)
    rows = make_rows(50, vectors=vecs)
    store.upsert(DS, rows)
    q = rng.normal(size=DIM).astype(np.float32)
    hits = store.search(DS, q, Filter(), top_k=5)
    sims = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)) @ unit(q)
    best = np.argsort(-sims)[:5]
    ids = rows["id"].to_pylist()
    assert [h.id for h in hits] == [ids[i] for i in best]
    assert np.allclose([h.score for h in hits], sims[best], atol=1e-5)
    assert hits[0].dataset_id == DS and hits[0].dataset_version == "v1"
    assert hits[0].mtime == datetime(2024, 1, 2, tzinfo=UTC).timestamp()
    assert -1.0 <= hits[-1].score <= 1.0

    # The score does not depend on vector length.
    again = store.search(DS, q * 7.0, Filter(), top_k=5)
    assert np.allclose([h.score for h in again], [h.score for h in hits], atol=1e-5)

    with pytest.raises(ModelMismatchError, match="dim 16"):
        store.search(DS, np.ones(16), Filter())
    with pytest.raises(ConfigError, match="zeros"):
        store.search(DS, np.zeros(DIM), Filter())


def test_prefilter_returns_topk_of_filtered_set(store):
    q = unit(np.arange(1, DIM + 1))
    rng = np.random.default_rng(2)
    # v2 holds the 20 documents closest to q; v1 only weaker ones.
    near = q + 0.01 * rng.normal(size=(20, DIM))
    far = rng.normal(size=(30, DIM))
    store.upsert(DS, make_rows(20, version="v2", vectors=near))
    v1 = make_rows(30, version="v1", vectors=far)
    store.upsert(DS, v1)
    hits = store.search(DS, q, Filter(versions=["v1"]), top_k=5)
    assert len(hits) == 5 and {h.dataset_version for h in hits} == {"v1"}
    sims = (far / np.linalg.norm(far, axis=1, keepdims=True)) @ q
    ids = v1["id"].to_pylist()
    assert [h.id for h in hits] == [ids[i] for i in np.argsort(-sims)[:5]]


def test_score_threshold(store):
    vecs = np.eye(DIM, dtype=np.float32)[:4]
    vecs[1] = unit([1, 1, 0, 0, 0, 0, 0, 0])  # cos 0.707 with e0
    rows = make_rows(4, vectors=vecs)
    store.upsert(DS, rows)
    q = np.eye(DIM, dtype=np.float32)[0]
    hits = store.search(DS, q, Filter(), top_k=10, score_threshold=0.5)
    assert [round(h.score, 3) for h in hits] == [1.0, 0.707]
    assert store.search(DS, q, Filter(), top_k=10, score_threshold=1.01) == []
    assert len(store.search(DS, q, Filter(), top_k=10)) == 4


@pytest.fixture
def tagged(store):
    tags_ai = [["cat"], ["cat", "dog"], ["dog"], [], ["it's"], ["x') OR (1=1"], ["cat"], []]
    tags_user = [None, None, ["cat"], ["bird"], None, None, ["dog"], None]
    rows = make_rows(8, tags_ai=tags_ai, tags_user=tags_user)
    store.upsert(DS, rows)
    return store, rows["id"].to_pylist()


@pytest.mark.parametrize(
    "flt,expected",
    [
        (Filter(tags_any=["cat"]), {0, 1, 2, 6}),
        (Filter(tags_any=["bird", "dog"]), {1, 2, 3, 6}),
        (Filter(tags_all=["cat", "dog"]), {1, 2, 6}),  # across tags_ai and tags_user
        (Filter(tags_exclude=["cat"]), {3, 4, 5, 7}),
        (Filter(tags_exclude=["cat", "dog"]), {3, 4, 5, 7}),
        (Filter(tags_any=["cat"], tags_exclude=["dog"]), {0}),
        (Filter(tags_any=["it's"]), {4}),
        (Filter(tags_any=["x') OR (1=1"]), {5}),
        (Filter(tags_all=["x') OR (1=1"]), {5}),
        (Filter(tags_exclude=["x') OR (1=1", "it's"]), {0, 1, 2, 3, 6, 7}),
        (Filter(tags_any=["') OR true OR ('"]), set()),
        (Filter(tags_any=["nope"]), set()),
    ],
)
def test_tag_filters(tagged, flt, expected):
    store, ids = tagged
    want = {ids[i] for i in expected}
    assert store.count(DS, flt) == len(want)
    assert {h.id for h in store.search(DS, None, flt, top_k=100)} == want
    vec = {h.id for h in store.search(DS, np.ones(DIM), flt, top_k=100)}
    assert vec == want


def test_quoting_compiles_safely():
    assert sql_string("it's") == "'it''s'"
    assert sql_string("x') OR (1=1") == "'x'') OR (1=1'"
    assert compile_filter(Filter(status=None)) is None
    sql = compile_filter(Filter(versions=["v'1"], tags_any=["a'b"]))
    assert "'v''1'" in sql and "['a''b']" in sql
    for bad in ["a\nb", "a\x00", "tab\there"]:
        with pytest.raises(ConfigError, match="control character"):
            compile_filter(Filter(tags_any=[bad]))
    with pytest.raises(ConfigError, match="must be a string"):
        compile_filter(Filter(versions=[1]))


def test_uri_filter_with_quotes_and_backslash(store):
    uris = ["file:///d/it's.jpg", "file:///d/back\\slash.jpg", "file:///d/plain.jpg"]
    store.upsert(DS, make_rows(3, uris=uris))
    assert store.count(DS, Filter(uris=[uris[0]])) == 1
    assert store.count(DS, Filter(uris=[uris[1]])) == 1
    assert store.count(DS, Filter(uris=uris[:2] + ["x' OR '1'='1"])) == 2
    assert store.count(DS, Filter(uris=[])) == 0


def test_failed_docs_never_returned_by_vector_search(store):
    status = [STATUS_OK, STATUS_FAILED, STATUS_OK, STATUS_FAILED]
    rows = make_rows(4, status=status)
    store.upsert(DS, rows)
    ids = rows["id"].to_pylist()
    for flt in (Filter(), Filter(status=None), Filter(status=STATUS_FAILED)):
        hits = store.search(DS, np.ones(DIM), flt, top_k=10)
        assert {h.id for h in hits} <= {ids[0], ids[2]}
        assert all(np.isfinite(h.score) for h in hits)
    failed = store.search(DS, None, Filter(status=STATUS_FAILED), top_k=10)
    assert {h.id for h in failed} == {ids[1], ids[3]}


def test_filter_only_search_orders_by_uri(store):
    uris = [f"file:///d/{c}.jpg" for c in "dbeac"]
    store.upsert(DS, make_rows(5, uris=uris))
    hits = store.search(DS, None, Filter(), top_k=3)
    assert [h.file_name for h in hits] == ["a.jpg", "b.jpg", "c.jpg"]
    assert {h.score for h in hits} == {1.0}
    assert hits[0].width == 64 and hits[0].tags_ai == []


def test_search_missing_table(tmp_path):
    s = LanceDBStore(str(tmp_path))
    with pytest.raises(EmptyIndexError, match="'nothing'"):
        s.search("nothing", np.ones(DIM), Filter())


# ------------------------------------------------------------------------------- optimize


def test_optimize_creates_scalar_indexes_only_below_min_rows(store):
    store.upsert(DS, make_rows(30))
    store.upsert(DS, make_rows(30, start=30))
    out = store.optimize(DS)
    assert out["rows"] == 60 and out["vector_index"] is False
    assert out["fragments_after"] <= out["fragments_before"]
    columns = {ix.split(":")[0] for ix in out["indexes"]}
    assert columns == {"id", "uri", "dataset_version", "status", "tags_ai", "tags_user"}
    assert "vector" not in columns
    # Idempotent: nothing new the second time, and filters still work through the indexes.
    assert store.optimize(DS)["indexes_created"] == []
    assert store.count(DS, Filter(versions=["v1"], tags_exclude=["x"])) == 60


def test_vector_index_and_selective_filter_fallback(tmp_path):
    s = LanceDBStore(str(tmp_path), index_min_rows=256, index_partitions=2)
    s.ensure_table(DS, model=MODEL, dim=16)
    n = 600
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(n, 16)).astype(np.float32)
    status = [STATUS_FAILED if i % 50 == 0 else STATUS_OK for i in range(n)]
    tags = [["rare"] if i == 123 else ["common"] for i in range(n)]
    rows = make_rows(n, dim=16, vectors=vecs, status=status, tags_ai=tags)
    s.upsert(DS, rows)
    out = s.optimize(DS)
    assert "vector:IVF_HNSW_SQ" in out["indexes_created"] and out["vector_index"] is True
    assert any(ix.startswith("vector:") for ix in out["indexes"])

    # The rare document is far from the query: an ANN probe would not reach it.
    q = -vecs[123]
    hits = s.search(DS, q, Filter(tags_any=["rare"]), top_k=10)
    assert [h.id for h in hits] == [rows["id"][123].as_py()]
    assert s.stats["exact_searches"] == 1

    # A broad filter goes through the index and still ranks sensibly.
    s.exact_search_min_rows = 1
    hits = s.search(DS, vecs[7], Filter(), top_k=5)
    assert s.stats["index_searches"] == 1
    assert hits[0].id == rows["id"][7].as_py() and hits[0].score == pytest.approx(1.0, abs=0.02)
    assert all(h.id not in {rows["id"][i].as_py() for i in range(0, n, 50)} for h in hits)

    # Rows added after the index are found too (optimize folds them in; search covers the rest).
    extra = make_rows(1, dim=16, start=n, vectors=-vecs[7:8], tags_ai=[["late"]])
    s.upsert(DS, extra)
    hits = s.search(DS, -vecs[7], Filter(tags_any=["late"]), top_k=3)
    assert [h.id for h in hits] == [extra["id"][0].as_py()]
    assert s.optimize(DS)["rows"] == n + 1


def test_optimize_adds_index_segments_then_rebuilds(tmp_path, monkeypatch):
    """New rows are indexed as added segments (the trained partitions stay: Table.optimize's
    merge collapsed them to one and cut recall); too many segments trigger one full rebuild."""
    from imageindex.stores.lancedb import indexes

    monkeypatch.setattr(indexes, "MAX_INDEX_SEGMENTS", 3)
    s = LanceDBStore(str(tmp_path), index_min_rows=256, index_partitions=4)
    s.ensure_table(DS, model=MODEL, dim=16)
    rng = np.random.default_rng(5)
    vecs = rng.normal(size=(1200, 16)).astype(np.float32)
    s.upsert(DS, make_rows(600, dim=16, vectors=vecs[:600]))
    s.optimize(DS)
    tbl = s._open(DS)
    assert tbl.index_stats("vector_idx").num_indices == 1
    for k in range(2):
        lo = 600 + 100 * k
        s.upsert(DS, make_rows(100, dim=16, start=lo, vectors=vecs[lo : lo + 100]))
        out = s.optimize(DS)
        stats = s._open(DS).index_stats("vector_idx")
        assert stats.num_unindexed_rows == 0 and stats.num_indexed_rows == 700 + 100 * k
        assert stats.num_indices == 2 + k and out["indexes_created"] == []
        # every new row is found through the index, by itself
        s.exact_search_min_rows = 1
        got = s.search(DS, vecs[lo + 50], Filter(), top_k=1)
        assert got[0].id == make_rows(1, dim=16, start=lo + 50)["id"][0].as_py()
    s.upsert(DS, make_rows(100, dim=16, start=800, vectors=vecs[800:900]))
    out = s.optimize(DS)
    assert any(c.startswith("vector:IVF_HNSW_SQ (rebuilt from 4") for c in out["indexes_created"])
    assert s._open(DS).index_stats("vector_idx").num_indices == 1


# ------------------------------------------------------------------------------- retries


class _FlakyTable:
    """Wraps a table so merge_insert fails ``failures`` times with ``error`` before working."""

    def __init__(self, table, failures: int, error: Exception):
        self._table, self.failures, self.error, self.calls = table, failures, error, 0

    def __getattr__(self, name):
        return getattr(self._table, name)

    def merge_insert(self, on):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self._table.merge_insert(on)


CONFLICT = RuntimeError(
    "lance error: Too many concurrent writers. Attempted 2 times, but failed on retry_timeout"
)


def test_upsert_retries_commit_conflicts(tmp_path):
    s = LanceDBStore(str(tmp_path), retry_base_delay=0.0, max_retries=3)
    s.ensure_table(DS, model=MODEL, dim=DIM)
    flaky = _FlakyTable(s._open(DS), failures=2, error=CONFLICT)
    s._tables["images_ds"] = flaky
    assert s.upsert(DS, make_rows(5)) == 5
    assert s.stats["conflict_retries"] == 2 and flaky.calls == 3
    assert s.count(DS) == 5


def test_upsert_gives_up_typed(tmp_path):
    s = LanceDBStore(str(tmp_path), retry_base_delay=0.0, max_retries=2)
    s.ensure_table(DS, model=MODEL, dim=DIM)
    s._tables["images_ds"] = _FlakyTable(s._open(DS), failures=5, error=CONFLICT)
    with pytest.raises(StoreError, match="concurrent writers after 2 attempts"):
        s.upsert(DS, make_rows(5))
    # Anything else is not retried.
    flaky = _FlakyTable(s._open(DS)._table, failures=5, error=OSError("disk full"))
    s._tables["images_ds"] = flaky
    with pytest.raises(StoreError, match="disk full"):
        s.upsert(DS, make_rows(5))
    assert flaky.calls == 1
