"""Search a dataset version by text, by example image and by tags.

The query is embedded with the same model the index was built with (taken from the registry and
checked against the model recorded in the store), so text and image queries land in the vectors'
space. Scores are cosine similarities in [-1, 1], higher is closer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imageindex.errors import ConfigError, EmptyIndexError, ModelMismatchError
from imageindex.registry import DatasetSpec, load_registry
from imageindex.types import Hit

MAX_TOP_K = 1000


@dataclass
class SearchRequest:
    dataset_id: str
    version: str | None = None
    text: str | None = None
    image_path: str | None = None
    image_bytes: bytes | None = None
    tags_any: list[str] = field(default_factory=list)
    tags_all: list[str] = field(default_factory=list)
    tags_exclude: list[str] = field(default_factory=list)
    top_k: int = 10
    score_threshold: float | None = None

    def validate(self) -> None:
        queries = sum(x is not None for x in (self.text, self.image_path, self.image_bytes))
        if queries > 1:
            raise ConfigError("give one query: --text or --image, not both")
        if self.text is not None and not self.text.strip():
            raise ConfigError("--text is empty")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ConfigError(f"--top-k must be between 1 and {MAX_TOP_K} (got {self.top_k})")
        if self.score_threshold is not None and not -1.0 <= self.score_threshold <= 1.0:
            raise ConfigError(
                f"--score-threshold must be between -1 and 1 (got {self.score_threshold})"
            )


def query_vector(ds: DatasetSpec, req: SearchRequest) -> np.ndarray | None:
    from imageindex.pipeline import embedder_for

    if req.text is None and req.image_path is None and req.image_bytes is None:
        return None
    embedder = embedder_for(ds)
    if req.text is not None:
        return embedder.embed_texts([req.text.strip()])[0]
    from imageindex.preprocess import load_model_input, preprocess_image

    if req.image_bytes is not None:
        data, name = req.image_bytes, "uploaded image"
    else:
        path = Path(req.image_path)
        if not path.is_file():
            raise ConfigError(f"--image {req.image_path}: no such file")
        data, name = path.read_bytes(), str(path)
    pre = preprocess_image(data, name=name)
    if not pre.ok:
        raise ConfigError(f"{name}: cannot be used as a query image ({pre.error_reason})")
    image = load_model_input(pre.thumbnail, getattr(embedder, "input_size", 224))
    return embedder.embed_images([image]).vectors[0]


def search(req: SearchRequest, *, registry_path: str | None = None) -> list[Hit]:
    from imageindex.stores import open_store
    from imageindex.stores.base import Filter

    req.validate()
    ds = load_registry(registry_path).get(req.dataset_id)
    version = ds.version(req.version).name
    store = open_store(ds.store_uri, spec=ds.store)
    info = store.table_info(ds.id)
    flt = Filter(
        versions=[version],
        tags_any=list(req.tags_any),
        tags_all=list(req.tags_all),
        tags_exclude=list(req.tags_exclude),
    )
    if info is None or store.count(ds.id, Filter(versions=[version])) == 0:
        raise EmptyIndexError(
            f"dataset '{ds.id}' version '{version}' has no indexed images yet; trigger the "
            f"imageindex_{ds.id} DAG or run `imageindex index --dataset {ds.id}`"
        )
    vector = query_vector(ds, req)
    if vector is not None:
        from imageindex.pipeline import embedder_for

        embedder = embedder_for(ds)
        if info.get("model") not in (None, embedder.name) or info.get("dim") != embedder.dim:
            raise ModelMismatchError(
                f"dataset '{ds.id}' is indexed with {info.get('model')} ({info.get('dim')} dims) "
                f"but the registry names {embedder.name} ({embedder.dim} dims); re-index in full"
            )
    return store.search(ds.id, vector, flt, top_k=req.top_k, score_threshold=req.score_threshold)
