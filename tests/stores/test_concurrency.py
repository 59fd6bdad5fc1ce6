"""Several processes writing one LanceDB table, as Airflow mapped tasks on parallel workers do."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from imageindex.stores.lancedb import DOC_COLUMNS, LanceDBStore

from .test_lancedb import DIM, DS, MODEL, make_rows

WORKERS = 4
BATCHES = 5
ROWS = 200


def _writer(uri: str, worker: int, file_lock: bool, shared: bool, barrier, results) -> None:
    store = LanceDBStore(uri, file_lock=file_lock)
    # Built before the barrier so the writes, not the set-up, run at the same time.
    batches = [
        make_rows(
            ROWS, start=(b if shared else worker * BATCHES + b) * ROWS, fingerprint=f"w{worker}"
        )
        for b in range(BATCHES)
    ]
    barrier.wait(timeout=120)
    for rows in batches:
        store.upsert(DS, rows)
    results.put((worker, dict(store.stats)))


def _run_writers(uri: str, file_lock: bool, shared: bool = False) -> list[dict]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(uri, w, file_lock, shared, barrier, results))
        for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    stats = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return [s for _, s in sorted(stats, key=lambda x: x[0])]


def _commits(label: str, stats: list[dict]) -> tuple[int, int]:
    """(batches, commit attempts): Lance's own attempts plus the store's conflict retries."""
    attempts = sum(s["lance_attempts"] for s in stats)
    retries = sum(s.get("conflict_retries", 0) for s in stats)
    batches = sum(s["batches"] for s in stats)
    # Visible with -s: what optimistic commits cost (attempts above batches = Lance rebased).
    print(f"{label}: {batches} batches, {attempts} lance commit attempts, {retries} extra retries")
    return batches, attempts + retries


@pytest.mark.slow
@pytest.mark.parametrize("file_lock", [True, False], ids=["file-lock", "retries-only"])
def test_concurrent_upserts_lose_nothing(tmp_path, file_lock):
    uri = str(tmp_path / "db")
    store = LanceDBStore(uri)
    store.ensure_table(DS, model=MODEL, dim=DIM)

    stats = _run_writers(uri, file_lock)

    total = WORKERS * BATCHES * ROWS
    assert store.count(DS) == total
    ids = [i for b in store.iter_state(DS, "v1") for i in b["id"].to_pylist()]
    assert len(ids) == total and len(set(ids)) == total
    expected = {make_rows(1, start=i)["id"][0].as_py() for i in range(0, total, ROWS)}
    assert expected <= set(ids)
    assert all(s["batches"] == BATCHES for s in stats)
    batches, attempts = _commits(f"disjoint rows, file_lock={file_lock}", stats)
    if file_lock:
        # The lock serializes writers: no commit ever meets a concurrent one.
        assert attempts == batches
    else:
        # Without it the writers' commits collide and are retried; the test is about that.
        assert attempts > batches, "no commit conflict happened: the writers never overlapped"


@pytest.mark.slow
def test_concurrent_inserts_of_same_ids_make_no_duplicates(tmp_path):
    """Without the file lock (as on S3) two writers may insert the same new id at once; the
    primary-key metadata on id makes Lance reject the second commit and retry it as an update."""
    uri = str(tmp_path / "db")
    store = LanceDBStore(uri)
    store.ensure_table(DS, model=MODEL, dim=DIM)

    stats = _run_writers(uri, file_lock=False, shared=True)

    ids = [i for b in store.iter_state(DS, "v1") for i in b["id"].to_pylist()]
    assert len(ids) == len(set(ids)) == BATCHES * ROWS
    fingerprints = {d["fingerprint"] for d in store.get(DS, ids)}
    assert fingerprints <= {f"w{w}" for w in range(WORKERS)}
    batches, attempts = _commits("same ids, no file lock", stats)
    assert attempts > batches, "no commit conflict happened: the writers never overlapped"


def _die_after_first_batch(uri: str) -> None:
    store = LanceDBStore(uri, write_batch_rows=250)
    write = store._write_batch

    def write_then_die(*args, **kwargs):
        write(*args, **kwargs)
        os._exit(3)  # a killed worker: no cleanup, no exception handling

    store._write_batch = write_then_die
    store.upsert(DS, make_rows(1000, tags_ai=[["t"]] * 1000))


def test_rerun_after_kill_equals_clean_run(tmp_path):
    rows = make_rows(1000, tags_ai=[["t"]] * 1000)

    clean = LanceDBStore(str(tmp_path / "clean"), write_batch_rows=250)
    clean.ensure_table(DS, model=MODEL, dim=DIM)
    clean.upsert(DS, rows)

    uri = str(tmp_path / "killed")
    killed = LanceDBStore(uri, write_batch_rows=250)
    killed.ensure_table(DS, model=MODEL, dim=DIM)
    proc = mp.get_context("spawn").Process(target=_die_after_first_batch, args=(uri,))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == 3
    assert killed.count(DS) == 250  # the first batch committed, the rest never started

    killed.upsert(DS, rows)

    def snapshot(store: LanceDBStore):
        tbl = store._open(DS).to_lance().to_table(columns=DOC_COLUMNS + ["vector"])
        return tbl.sort_by("id").to_pylist()

    a, b = snapshot(clean), snapshot(killed)
    assert len(a) == len(b) == 1000
    assert [(r["id"], r["fingerprint"]) for r in a] == [(r["id"], r["fingerprint"]) for r in b]
    assert a == b
