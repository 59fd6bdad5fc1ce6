"""What the scenarios share: generated photos, the session registry, the run summary and a
direct look at the index (LanceDB, read with the library)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from airflow_cluster import REPO
from imagezoo import make_photo

OUTPUT = REPO / "test-output" / "integration"
TAGS = REPO / "config" / "tags" / "samples.json"
#: Small photos: the tier checks orchestration, not pixels.
PHOTO_SIZE = (160, 120)


def write_photos(folder: Path, n: int, seed0: int = 0, prefix: str = "p") -> list[Path]:
    return [
        make_photo(folder / f"{prefix}{seed0 + i:03d}.jpg", size=PHOTO_SIZE, seed=seed0 + i)
        for i in range(n)
    ]


class Registry:
    """The session's registry YAML: one dataset per scenario, rewritten atomically when a
    scenario registers a new version (the DAG file reads it at parse time, tasks at run time)."""

    def __init__(self, path: Path, store: Path):
        self.path = path
        self.store = store
        self.datasets: dict[str, dict] = {}

    def add(self, dataset_id: str, **spec) -> None:
        spec.setdefault("tagger", {"type": "offline", "definitions": str(TAGS)})
        self.datasets[dataset_id] = {"id": dataset_id, **spec}
        self.write()

    def add_version(self, dataset_id: str, version: str, source: Path) -> None:
        self.datasets[dataset_id]["versions"][version] = {"source": str(source)}
        self.write()

    def write(self) -> None:
        doc = {
            "defaults": {"store": {"type": "lancedb", "uri": str(self.store)}},
            "datasets": list(self.datasets.values()),
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")  # JSON is YAML
        os.replace(tmp, self.path)


class Summary:
    """What each scenario saw, printed as it happens and written as JSON at session end."""

    def __init__(self, path: Path):
        self.path = path
        self.t0 = time.monotonic()
        self.scenarios: dict[str, dict] = {}

    def record(self, scenario: str, **facts) -> None:
        self.scenarios.setdefault(scenario, {}).update(facts)
        print(f"[{scenario}] " + json.dumps(facts, default=str), flush=True)

    def write(self, **extra) -> None:
        doc = {
            "wall_s": round(time.monotonic() - self.t0, 1),
            **extra,
            "scenarios": self.scenarios,
        }
        self.path.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")


def index_docs(store_uri: str | Path, dataset_id: str, version: str) -> dict[str, dict]:
    """uri -> document (vector included) of one version, read straight from the store; fails
    on a duplicate id or a uri indexed twice."""
    from imageindex.stores import open_store

    store = open_store(spec={"type": "lancedb", "uri": str(store_uri)})
    if store.table_info(dataset_id) is None:
        return {}
    docs = [
        row
        for batch in store.iter_documents(dataset_id, version=version)
        for row in batch.to_pylist()
    ]
    ids = [d["id"] for d in docs]
    assert len(ids) == len(set(ids)), f"{dataset_id}/{version}: duplicate ids in the index"
    by_uri = {d["uri"]: d for d in docs}
    assert len(by_uri) == len(docs), f"{dataset_id}/{version}: a uri indexed twice"
    return by_uri
