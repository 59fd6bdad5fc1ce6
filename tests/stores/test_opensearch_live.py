"""OpenSearchStore against a live OpenSearch 2.19 node with the k-NN plugin (``opensearch_url``:
the node this session starts, or ``OPENSEARCH_URL``): what the node itself does with the store's
mapping, bulk requests, scripts and queries. The behaviour every store shares is in
test_contract.py; the node restart and node-down checks start a private node of their own.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

import numpy as np
import pytest

from imageindex.errors import ConfigError, ModelMismatchError, StoreError
from imageindex.query import parse
from imageindex.stores.opensearch import (
    BulkWriteError,
    OpenSearchStore,
    index_body,
    index_properties,
)
from imageindex.stores.schema import STATUS_FAILED

from .test_contract import DIM, DS, MODEL, arc, ids_of, plain, table


@pytest.fixture
def make_store(opensearch_url):
    """``make_store(**options)``: stores sharing one fresh index prefix, deleted afterwards."""
    prefix = f"live-{uuid.uuid4().hex[:12]}"
    made: list[OpenSearchStore] = []

    def make(**options) -> OpenSearchStore:
        s = OpenSearchStore(url=opensearch_url, index_prefix=prefix, **options)
        made.append(s)
        return s

    yield make
    if made:
        client = made[0].client
        for name in client.indices.get(index=f"{prefix}-*", ignore_unavailable=True):
            client.indices.delete(index=name)


@pytest.fixture
def store(make_store) -> OpenSearchStore:
    s = make_store()
    s.ensure_table(DS, model=MODEL, dim=DIM)
    return s


def mapping(store: OpenSearchStore, dataset_id: str = DS) -> dict:
    name = store.index_name(dataset_id)
    return store.client.indices.get_mapping(index=name)[name]["mappings"]


def create_by_hand(store: OpenSearchStore, body: dict, dataset_id: str = DS) -> str:
    name = store.index_name(dataset_id)
    store.client.indices.create(index=name, body=body)
    return name


# ------------------------------------------------------------------------------- the index


def test_index_is_created_with_the_documented_mapping(make_store):
    store = make_store(shards=2, replicas=0)
    store.ensure_table(DS, model=MODEL, dim=DIM)
    name = store.index_name(DS)
    got = mapping(store)
    want = index_body(DS, MODEL, DIM)["mappings"]
    assert got["dynamic"] == "strict"
    assert got["_meta"] == want["_meta"]
    # The node keeps every documented field as documented; it leaves out a date format that
    # is its default, and the vector's method is checked below.
    for field, spec in index_properties(DIM).items():
        want_field = {k: v for k, v in spec.items() if k != "method"}
        if want_field.get("format") == "strict_date_optional_time||epoch_millis":
            del want_field["format"]
        have = got["properties"][field]
        assert {k: v for k, v in have.items() if k != "method"} == want_field, field
    method = got["properties"]["vector"]["method"]
    assert (method["name"], method["engine"], method["space_type"]) == (
        "hnsw",
        "lucene",
        "cosinesimil",
    )
    assert method["parameters"] == {"m": 16, "ef_construction": 128}
    settings = store.client.indices.get_settings(index=name)[name]["settings"]["index"]
    assert (settings["knn"], settings["number_of_shards"], settings["number_of_replicas"]) == (
        "true",
        "2",
        "0",
    )
    # Strict: a field the mapping lacks is the node's error, not a new field.
    with pytest.raises(Exception, match="strict_dynamic_mapping_exception"):
        store.client.index(index=name, body={"id": "x", "nope": 1})
    # The aliases answer queries as their targets.
    store.upsert(DS, plain(3))
    some = ids_of(plain(3))[1]
    res = store.client.search(index=name, body={"query": {"term": {"file_meta_id": some}}})
    assert [h["_id"] for h in res["hits"]["hits"]] == [some]
    assert (
        store.client.count(index=name, body={"query": {"term": {"index_set_id": DS}}})["count"] == 3
    )


def test_dimension_and_model_mismatch_is_detected_and_named(make_store):
    store = make_store()
    store.ensure_table(DS, model=MODEL, dim=DIM)
    other = make_store()  # another process: nothing cached
    with pytest.raises(ModelMismatchError) as e:
        other.ensure_table(DS, model=MODEL, dim=16)
    assert f"dim {DIM}" in str(e.value) and "dim 16" in str(e.value)
    assert store.index_name(DS) in str(e.value)
    with pytest.raises(ModelMismatchError, match="'contract-model'.*'other-model'"):
        make_store().ensure_table(DS, model="other-model", dim=DIM)
    # An index made by hand without _meta: its documents say which model wrote them.
    body = index_body("hand", "theirs", DIM)
    del body["mappings"]["_meta"]
    name = create_by_hand(store, body, "hand")
    store.client.index(
        index=name,
        id="a",
        body={"id": "a", "model": "theirs", "vector": arc(5).tolist()},
        refresh=True,
    )
    with pytest.raises(ModelMismatchError, match="'theirs'"):
        make_store().ensure_table("hand", model=MODEL, dim=DIM)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda b: b["mappings"]["properties"]["vector"]["method"].update(space_type="l2"),
         "space_type is l2"),
        (lambda b: b["mappings"]["properties"]["vector"]["method"].update(engine="faiss"),
         "engine is faiss"),
        # Without index.knn the node takes no method: a bare vector, for scripts only.
        (lambda b: (b["settings"]["index"].update(knn=False),
                    b["mappings"]["properties"].update(vector={"type": "knn_vector",
                                                               "dimension": DIM})),
         "index.knn is not enabled"),
        (lambda b: b["mappings"]["properties"].update(vector={"type": "float"}),
         "no knn_vector field"),
    ],
    ids=["space-l2", "engine-faiss", "knn-off", "no-vector"],
)  # fmt: skip
def test_index_that_cannot_give_cosine_scores_is_refused(make_store, change, named):
    store = make_store()
    body = index_body(DS, MODEL, DIM)
    change(body)
    create_by_hand(store, body)
    with pytest.raises(StoreError, match=named):
        store.ensure_table(DS, model=MODEL, dim=DIM)


def test_dataset_ids_differing_in_case_share_an_index_and_are_refused(make_store):
    make_store().ensure_table("Pets", model=MODEL, dim=DIM)
    with pytest.raises(ConfigError, match="differ only in case"):
        make_store().ensure_table("pets", model=MODEL, dim=DIM)


def test_fields_added_since_are_put_into_an_older_index(make_store):
    store = make_store()
    body = index_body(DS, MODEL, DIM)
    del body["mappings"]["properties"]["tags_detail"]
    del body["mappings"]["properties"]["file_meta_id"]
    create_by_hand(store, body)
    assert "tags_detail" not in mapping(store)["properties"]
    store.ensure_table(DS, model=MODEL, dim=DIM)
    props = mapping(store)["properties"]
    assert props["tags_detail"] == {"type": "keyword", "index": False, "doc_values": False}
    assert props["file_meta_id"] == {"type": "alias", "path": "id"}
    store.upsert(DS, plain(2))
    assert [d["tags_detail"] for d in store.get(DS, ids_of(plain(2)))] == ["[]", "[]"]


# ------------------------------------------------------------------------------- writes


def test_bulk_with_a_bad_document_writes_the_rest_and_names_it(store):
    """A vector the node cannot index (cosinesimil refuses a zero vector) and a keyword longer
    than Lucene's term limit: each is reported with the node's own reason, the rest land."""
    docs = [{"name": f"ok{i}.jpg"} for i in range(6)]
    docs[1]["vec"] = np.zeros(DIM, np.float32)
    docs[4] = {"uri": "s3://bucket/" + "x" * 40_000 + ".jpg"}
    rows = table(docs)
    ids = ids_of(rows)
    with pytest.raises(BulkWriteError) as e:
        store.upsert(DS, rows)
    err = e.value
    assert err.written == 4 and [x["id"] for x in err.errors] == [ids[1], ids[4]]
    assert {x["status"] for x in err.errors} == {400}
    assert [x["type"] for x in err.errors] == [
        "mapper_parsing_exception",
        "illegal_argument_exception",
    ]
    assert "zero vector is not supported" in err.errors[0]["reason"]
    assert "immense term" in err.errors[1]["reason"]
    assert "2 of 6" in str(err) and ids[1] in str(err)
    assert store.count(DS) == 4
    assert sorted(d["id"] for d in store.get(DS, ids)) == sorted(ids[:1] + ids[2:4] + ids[5:])


def test_bulk_into_a_hand_made_index_reports_wrong_field_types_and_dimensions(make_store):
    """An index made by hand with another dim and a narrower field type than imageindex maps:
    the node's own errors name the field and the dimension; failed documents, which carry no
    vector, still land."""
    store = make_store()
    body = index_body(DS, MODEL, DIM)
    del body["mappings"]["_meta"]  # a team's own index
    body["mappings"]["properties"]["size"] = {"type": "integer"}
    create_by_hand(store, body)
    store.ensure_table(DS, model=MODEL, dim=DIM)
    rows = table([{"name": "big.jpg", "size": 3_000_000_000}] + [{} for _ in range(3)])
    # Rows named like the defaults but distinct: the defaults name them img0001.. img0003.
    with pytest.raises(BulkWriteError) as e:
        store.upsert(DS, rows)
    (bad,) = e.value.errors
    assert bad["id"] == ids_of(rows)[0] and "out of range of int" in bad["reason"]
    assert "[size]" in bad["reason"] and e.value.written == 3

    # The index re-created with another dim behind this handle's back (it cached dim 8).
    store.client.indices.delete(index=store.index_name(DS))
    create_by_hand(store, index_body(DS, MODEL, 16))
    mixed = table([{"name": "v.jpg"}, {"name": "f.jpg", "status": STATUS_FAILED}])
    with pytest.raises(BulkWriteError) as e:
        store.upsert(DS, mixed)
    (bad,) = e.value.errors
    assert bad["id"] == ids_of(mixed)[0]
    assert "Vector dimension mismatch" in bad["reason"] and "16" in bad["reason"]
    assert e.value.written == 1 and store.count(DS) == 1


def test_retried_and_concurrent_upserts_never_duplicate(make_store):
    store = make_store(bulk_chunk=40)
    store.ensure_table(DS, model=MODEL, dim=DIM)
    rows = plain(200)
    ids = ids_of(rows)
    store.upsert(DS, rows.slice(0, 120))  # a run that died after 120 documents ...
    store.upsert(DS, rows)  # ... and its retry
    store.upsert(DS, rows)
    # Two workers upserting the same documents at once, as two attempts of a task can.
    errors: list[BaseException] = []

    def again() -> None:
        try:
            make_store(bulk_chunk=25).upsert(DS, rows)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=again) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert store.count(DS) == 200
    state = [i for b in store.iter_state(DS, "v1", batch_size=64) for i in b["id"].to_pylist()]
    assert sorted(state) == sorted(ids)


def test_an_update_clears_what_the_new_row_leaves_empty(store):
    """Upserts merge into the stored document: a column that is null in the new row is cleared
    (a file that turned unreadable loses its vector and size fields), only tags_user stays."""
    rows = plain(2)
    ids = ids_of(rows)
    store.upsert(DS, rows)
    store.add_user_tags(DS, ids[:1], ["fav"])
    store.upsert(DS, table([{"name": "img0000.jpg", "status": STATUS_FAILED}]))
    doc = store.get(DS, ids[:1])[0]
    assert (doc["status"], doc["error"], doc["width"], doc["format"]) == (
        STATUS_FAILED,
        "decode: truncated",
        None,
        None,
    )
    assert doc["tags_user"] == ["fav"]
    name = store.index_name(DS)
    has_vector = {"query": {"exists": {"field": "vector"}}}
    assert store.client.count(index=name, body=has_vector)["count"] == 1
    assert [h.id for h in store.query(DS, vector=arc(0), top_k=5).hits] == ids[1:]
    # The same row again leaves the document as it was.
    again = table([{"name": "img0000.jpg", "status": STATUS_FAILED}])
    assert store.upsert(DS, again) == 1
    assert store.get(DS, ids[:1])[0] == doc


def test_delete_by_id_removes_exactly_those(store):
    rows = plain(300)
    ids = ids_of(rows)
    store.upsert(DS, rows)
    gone = random.Random(7).sample(ids, 37)
    assert store.delete(DS, gone + ["unknown-id", gone[0]]) == 37
    left = {i for b in store.iter_state(DS, "v1") for i in b["id"].to_pylist()}
    assert left == set(ids) - set(gone)
    assert store.count(DS) == 263 and store.get(DS, gone) == []


# ------------------------------------------------------------------------------- reads


def exact_top(vectors: np.ndarray, keep: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    """Row numbers of the exact top k by cosine among rows ``keep`` (ties by row number)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos = unit @ (query / np.linalg.norm(query))
    rows = np.flatnonzero(keep)
    order = sorted(rows, key=lambda r: (-cos[r], r))
    return order[:k]


def test_filtered_knn_matches_an_exact_scan(make_store, capsys):
    """Filters keeping 100 %, 10 % and 0.1 % of 4,000 documents: the node's filtered k-NN
    returns the exact scan's top 10 (with the store's default breadth; k = 11 gave 0.925)."""
    n, dim, k = 4000, 16, 10
    store = make_store(bulk_chunk=1000, refresh=False)
    store.ensure_table(DS, model=MODEL, dim=dim)
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    # size encodes the row number, so "size < x" keeps exactly the first x rows.
    rows = table([{"name": f"r{i:05d}.jpg", "vec": vectors[i], "size": i} for i in range(n)],
                 dim=dim)  # fmt: skip
    ids = ids_of(rows)
    store.upsert(DS, rows)
    store.optimize(DS)
    assert store.count(DS) == n
    recalls = {}
    for label, keep_n, where in [
        ("100%", n, None),
        ("10%", n // 10, f"size < {n // 10}"),
        ("0.1%", n // 1000, f"size < {n // 1000}"),
    ]:
        keep = np.arange(n) < keep_n
        found = want = 0
        for q in rng.normal(size=(8, dim)).astype(np.float32):
            expected = {ids[r] for r in exact_top(vectors, keep, q, k)}
            page = store.query(DS, vector=q, where=parse(where) if where else None, top_k=k)
            got = [h.id for h in page.hits]
            assert len(got) == min(k, keep_n) and set(got) <= {ids[r] for r in np.flatnonzero(keep)}
            found += len(expected & set(got))
            want += len(expected)
        recalls[label] = found / want
    with capsys.disabled():
        print(f"\nfiltered k-NN recall@10 against an exact scan, n={n}: {recalls}")
    assert recalls == {"100%": 1.0, "10%": 1.0, "0.1%": 1.0}


def test_pages_neither_repeat_nor_skip_while_another_writer_upserts(make_store):
    store = make_store(bulk_chunk=50)
    store.ensure_table(DS, model=MODEL, dim=DIM)
    rows = plain(600)
    ids = ids_of(rows)
    store.upsert(DS, rows)
    stop = threading.Event()
    writes = {"n": 0}
    errors: list[BaseException] = []

    def writer() -> None:
        # Re-indexes existing documents (new fingerprint, same sort key) and adds new ones
        # that sort among them, until the reader is done.
        w = make_store(bulk_chunk=50)
        i = 0
        try:
            while not stop.is_set():
                changed = table(
                    [{"name": f"img{j:04d}.jpg", "fingerprint": f"w{i}"} for j in range(i % 600, i % 600 + 30)]
                    + [{"name": f"img{j:04d}-new{i}.jpg"} for j in range(i % 600, i % 600 + 5)]
                )  # fmt: skip
                w.upsert(DS, changed)
                writes["n"] += 1
                i += 37
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.5)
        seen, cursor = [], None
        for _ in range(1000):
            page = store.query(DS, where=parse("size >= 0"), top_k=25, cursor=cursor)
            seen.extend(h.id for h in page.hits)
            cursor = page.next_cursor
            if cursor is None:
                break
            time.sleep(0.02)
        by_id = [i for b in store.iter_state(DS, "v1", batch_size=40) for i in b["id"].to_pylist()]
    finally:
        stop.set()
        t.join(120)
    assert not errors and writes["n"] >= 2
    assert len(seen) == len(set(seen)), "a document came twice"
    assert set(ids) <= set(seen), "a document that was there all along was skipped"
    assert len(by_id) == len(set(by_id)) and set(ids) <= set(by_id)


def test_a_search_right_after_finalize_sees_the_run(make_store):
    """Bulk loads write with refresh=False; optimize (the finalize step) makes them visible."""
    loader = make_store(refresh=False)
    loader.ensure_table(DS, model=MODEL, dim=DIM)
    name = loader.index_name(DS)
    # No periodic refresh: only optimize can make the documents visible.
    loader.client.indices.put_settings(index=name, body={"index": {"refresh_interval": "-1"}})
    rows = plain(50)
    loader.upsert(DS, rows)
    assert loader.count(DS) == 0
    assert loader.query(DS, vector=arc(0), top_k=5).hits == []
    loader.optimize(DS)
    assert loader.count(DS) == 50
    assert len(loader.query(DS, vector=arc(0), top_k=5).hits) == 5

    # The default (refresh=wait_for): visible when upsert returns, with no refresh call.
    loader.client.indices.put_settings(index=name, body={"index": {"refresh_interval": "1s"}})
    writer = make_store()
    more = plain(60).slice(50)
    writer.upsert(DS, more)
    assert writer.count(DS) == 60
    assert {d["id"] for d in writer.get(DS, ids_of(more))} == set(ids_of(more))


# ------------------------------------------------------------------------------- user tags


@pytest.mark.parametrize("retry_on_conflict", [0, 3], ids=["client-retries", "server-retries"])
def test_concurrent_tag_writers_lose_no_tag(make_store, retry_on_conflict):
    """Two writers add different tags to the same documents at once while a third re-indexes
    them (the merging upsert that keeps user tags): every tag survives. With
    ``retry_on_conflict=0`` the node reports each lost race (409) and the store must send it
    again; the test insists that happened."""
    n, rounds = 60, 6
    setup = make_store()
    setup.ensure_table(DS, model=MODEL, dim=DIM)
    rows = plain(n)
    ids = ids_of(rows)
    setup.upsert(DS, rows)
    options = {"retry_on_conflict": retry_on_conflict, "max_retries": 50, "retry_base_delay": 0.01}
    stores = {w: make_store(**options) for w in ("a", "b", "upsert")}
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def tagger(w: str) -> None:
        try:
            barrier.wait(30)
            for r in range(rounds):
                stores[w].add_user_tags(DS, ids, [f"{w}{r}"])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    def reindexer() -> None:
        try:
            barrier.wait(30)
            for r in range(rounds):
                stores["upsert"].upsert(
                    DS, table([{"name": f"img{i:04d}.jpg", "fingerprint": f"r{r}"} for i in range(n)])
                )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=tagger, args=(w,)) for w in ("a", "b")]
    threads.append(threading.Thread(target=reindexer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    want = {f"{w}{r}" for w in "ab" for r in range(rounds)}
    docs = setup.get(DS, ids)
    assert len(docs) == n
    assert all(set(d["tags_user"]) == want for d in docs), [d["tags_user"] for d in docs[:3]]
    assert all(d["fingerprint"] == f"r{rounds - 1}" for d in docs)
    retries = sum(s.stats["conflict_retries"] for s in stores.values())
    print(f"conflict retries sent again by the store: {retries}")
    if retry_on_conflict == 0:
        assert retries > 0, "no version conflict reached the store: the race never happened"


# ------------------------------------------------------------------------------- the node itself


def test_node_restarted_keeps_every_document(own_node):
    store = OpenSearchStore(url=own_node.url, refresh=False, bulk_chunk=100)
    store.ensure_table(DS, model=MODEL, dim=DIM)
    rows = plain(400)
    store.upsert(DS, rows)
    store.add_user_tags(DS, ids_of(rows)[:10], ["kept"])
    before = sorted(store.get(DS, ids_of(rows)), key=lambda d: d["id"])

    own_node.restart()  # a clean stop: SIGTERM
    print(f"node restart took {own_node.start_seconds:.1f}s")
    after = OpenSearchStore(url=own_node.url)
    assert after.table_info(DS) == {"model": MODEL, "dim": DIM, "rows": 400}
    assert sorted(after.get(DS, ids_of(rows)), key=lambda d: d["id"]) == before

    # A crash (SIGKILL) right after an acknowledged write: the translog replays it.
    more = plain(450).slice(400)
    after.upsert(DS, more)
    own_node.kill()
    own_node.start()
    again = OpenSearchStore(url=own_node.url)
    assert again.count(DS) == 450
    assert len(again.query(DS, vector=arc(0), top_k=450).hits) == 450


def test_node_down_is_a_clear_error_after_bounded_retries(own_node):
    store = OpenSearchStore(url=own_node.url, timeout=5)
    store.ensure_table(DS, model=MODEL, dim=DIM)
    rows = plain(30)
    store.upsert(DS, rows.slice(0, 10))
    own_node.stop()
    for call in (
        lambda: store.upsert(DS, rows),
        lambda: store.count(DS),
        lambda: store.query(DS, vector=arc(0)),
        lambda: store.add_user_tags(DS, ids_of(rows), ["x"]),
    ):
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="cannot reach OpenSearch at http://127.0.0.1") as e:
            call()
        assert time.monotonic() - t0 < 30, "retries are bounded"
        assert "check the store uri" in str(e.value)
    own_node.start()
    back = OpenSearchStore(url=own_node.url)
    # The failed upsert wrote nothing the store did not report: the 10 from before, no more.
    assert back.count(DS) == 10
    assert sorted(d["id"] for d in back.get(DS, ids_of(rows))) == sorted(ids_of(rows)[:10])
    assert all(d.get("tags_user") is None for d in back.get(DS, ids_of(rows)))
