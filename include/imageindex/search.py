"""Search a dataset version by text, by example image, by tags, by metadata and by the query
language — all through one path: every form becomes one query AST (:mod:`imageindex.query`),
compiled by the store, so the CLI flags, the REST API and the DSL box agree.

The query is embedded with the same model the index was built with (taken from the registry and
checked against the model recorded in the store). Scores are cosine similarities in [-1, 1],
higher is closer, on every store.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imageindex.errors import ConfigError, EmptyIndexError, ModelMismatchError
from imageindex.registry import load_registry
from imageindex.specs import DatasetSpec
from imageindex.types import Hit, doc_id

if TYPE_CHECKING:
    import pandas as pd

MAX_TOP_K = 1000
MAX_UPLOAD_BYTES = 20 * 1024 * 1024


@dataclass
class SearchRequest:
    dataset_id: str
    version: str | None = None
    text: str | None = None
    image_path: str | None = None
    image_bytes: bytes | None = None
    #: uri of an image already in the index: search by its indexed thumbnail
    image_uri: str | None = None
    dsl: str | None = None
    tags_any: list[str] = field(default_factory=list)
    tags_all: list[str] = field(default_factory=list)
    tags_exclude: list[str] = field(default_factory=list)
    file_name: str | None = None
    path_prefix: str | None = None
    mtime_from: str | None = None
    mtime_to: str | None = None
    top_k: int = 10
    score_threshold: float | None = None
    cursor: str | None = None
    sort: str = "uri"

    def validate(self) -> None:
        given = [x for x in (self.text, self.image_path, self.image_bytes, self.image_uri) if x]
        if len(given) > 1:
            raise ConfigError("give one query: --text, --image or --image-uri, not several")
        if self.text is not None and not self.text.strip():
            raise ConfigError("--text is empty")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ConfigError(f"--top-k must be between 1 and {MAX_TOP_K} (got {self.top_k})")
        if self.score_threshold is not None and not -1.0 <= self.score_threshold <= 1.0:
            raise ConfigError(
                f"--score-threshold must be between -1 and 1 (got {self.score_threshold})"
            )
        if self.image_bytes is not None and len(self.image_bytes) > MAX_UPLOAD_BYTES:
            raise ConfigError(f"query image is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")

    @property
    def has_vector_query(self) -> bool:
        return any(x for x in (self.text, self.image_path, self.image_bytes, self.image_uri))


@dataclass
class SearchResult:
    hits: list[Hit]
    next_cursor: str | None
    query: str | None  # the filter as query-language text (what the store compiled)


def build_filter(req: SearchRequest, version: str):
    """The request's filter as one AST: the simple form ANDed with the DSL."""
    from imageindex.query import combine, parse, simple_filter, validate

    simple = simple_filter(
        tags_any=req.tags_any,
        tags_all=req.tags_all,
        tags_exclude=req.tags_exclude,
        file_name=req.file_name,
        path_prefix=req.path_prefix,
        mtime_from=req.mtime_from,
        mtime_to=req.mtime_to,
        versions=[version],
    )
    dsl = parse(req.dsl) if req.dsl and req.dsl.strip() else None
    return validate(combine(simple, dsl))


def _embed_image_bytes(embedder, data: bytes, name: str) -> np.ndarray:
    from imageindex.preprocess import load_model_input, preprocess_image

    pre = preprocess_image(data, name=name)
    if not pre.ok:
        raise ConfigError(f"{name}: cannot be used as a query image ({pre.error_reason})")
    image = load_model_input(pre.thumbnail, getattr(embedder, "input_size", 224))
    return embedder.embed_images([image]).vectors[0]


def query_vector(ds: DatasetSpec, req: SearchRequest, store=None, version=None):
    from imageindex.embedders import get_embedder

    if not req.has_vector_query:
        return None
    embedder = get_embedder(ds.embedder)
    if req.text is not None:
        return embedder.embed_texts([req.text.strip()])[0]
    if req.image_bytes is not None:
        return _embed_image_bytes(embedder, req.image_bytes, "uploaded image")
    if req.image_uri is not None:
        return _indexed_image_vector(ds, embedder, store, version, req.image_uri)
    path = Path(req.image_path)
    if not path.is_file():
        raise ConfigError(f"--image {req.image_path}: no such file")
    return _embed_image_bytes(embedder, path.read_bytes(), str(path))


def _indexed_image_vector(ds, embedder, store, version, uri: str) -> np.ndarray:
    """Search by an indexed image: embed its stored thumbnail, exactly as indexing did."""
    from imageindex.preprocess import load_model_input
    from imageindex.staging import open_staging

    docs = store.get(ds.id, [doc_id(ds.id, version, uri)])
    if not docs or docs[0].get("status") != "ok" or not docs[0].get("thumbnail_uri"):
        raise ConfigError(f"{uri} is not an indexed image of {ds.id}/{version}")
    thumb = docs[0]["thumbnail_uri"]
    root = thumb.rsplit("/", 1)[0]
    data = open_staging(root, s3_conn_id=ds.s3_conn_id).read_bytes(thumb)
    image = load_model_input(data, getattr(embedder, "input_size", 224))
    return embedder.embed_images([image]).vectors[0]


def run_search(req: SearchRequest, *, registry_path: str | None = None) -> SearchResult:
    """One page of hits (``req.top_k`` of them) and the cursor of the next page."""
    from imageindex.query import to_text

    ds, store, vector, where = _prepare(req, registry_path)
    page = store.query(
        ds.id,
        vector=vector,
        where=where,
        top_k=req.top_k,
        score_threshold=req.score_threshold,
        cursor=req.cursor,
        sort=req.sort,
    )
    return SearchResult(page.hits, page.next_cursor, to_text(where) if where else None)


def iter_hits(
    req: SearchRequest,
    *,
    limit: int | None = None,
    page_size: int = 1000,
    registry_path: str | None = None,
) -> Iterator[list[Hit]]:
    """Every hit of a search, page after page (the query is embedded once).

    Without a vector query: every matching document (``limit`` None) in ``req.sort`` order.
    With one: the ``limit`` nearest (default ``req.top_k``), at most the store's vector window.
    """
    from imageindex.stores.base import MAX_VECTOR_WINDOW

    ds, store, vector, where = _prepare(req, registry_path)
    if vector is not None:
        limit = min(limit or req.top_k, MAX_VECTOR_WINDOW)
    cursor, done = req.cursor, 0
    while limit is None or done < limit:
        size = min(page_size, MAX_TOP_K, (limit - done) if limit is not None else page_size)
        page = store.query(
            ds.id,
            vector=vector,
            where=where,
            top_k=size,
            score_threshold=req.score_threshold,
            cursor=cursor,
            sort=req.sort,
        )
        if page.hits:
            done += len(page.hits)
            yield page.hits
        cursor = page.next_cursor
        if cursor is None:
            return


def _prepare(req: SearchRequest, registry_path: str | None):
    """(dataset, store, query vector or None, filter AST or None) of a validated request."""
    from imageindex.embedders import get_embedder
    from imageindex.stores import open_store
    from imageindex.stores.base import Filter

    req.validate()
    ds = load_registry(registry_path).get(req.dataset_id)
    version = ds.version(req.version).name
    where = build_filter(req, version)  # syntax errors surface before any store or model work
    store = open_store(ds.store_uri, spec=ds.store)
    info = store.table_info(ds.id)
    if info is None or store.count(ds.id, Filter(versions=[version], status=None)) == 0:
        raise EmptyIndexError(
            f"dataset '{ds.id}' version '{version}' has no indexed images yet; trigger the "
            f"imageindex_{ds.id} DAG or run `imageindex index --dataset {ds.id}`"
        )
    vector = None
    if req.has_vector_query:
        embedder = get_embedder(ds.embedder)
        if info.get("model") not in (None, embedder.name) or info.get("dim") != embedder.dim:
            raise ModelMismatchError(
                f"dataset '{ds.id}' is indexed with {info.get('model')} ({info.get('dim')} dims) "
                f"but the registry names {embedder.name} ({embedder.dim} dims); re-index in full"
            )
        vector = query_vector(ds, req, store, version)
    return ds, store, vector, where


def search(req: SearchRequest, *, registry_path: str | None = None) -> list[Hit]:
    """The first page of hits (see :func:`run_search` for cursors)."""
    return run_search(req, registry_path=registry_path).hits


# The Python API (imageindex.search(...), see imageindex.notebook): keywords for flags.

#: Columns of :meth:`Results.to_pandas`, in order (the fields of :class:`~imageindex.types.Hit`).
HIT_COLUMNS = [f.name for f in dataclasses.fields(Hit)]


def split_tags(value: str | Sequence[str] | None) -> list[str]:
    """A tag list from a string or a list of strings, each comma-separated (the CLI's
    repeatable ``--tags-any a,b``): ``["cat,dog", " bird "]`` -> ``["cat", "dog", "bird"]``."""
    items = [value] if isinstance(value, str) else list(value or [])
    return [t.strip() for item in items for t in item.split(",") if t.strip()]


def _image_arg(image: Any) -> dict:
    """``image=``: a path, bytes, or a PIL image (encoded as PNG, the query pipeline decodes it)."""
    if image is None:
        return {}
    if isinstance(image, (str, Path)):
        return {"image_path": str(image)}
    if isinstance(image, (bytes, bytearray, memoryview)):
        return {"image_bytes": bytes(image)}
    if hasattr(image, "save"):  # a PIL image, without importing PIL for everyone else
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return {"image_bytes": buf.getvalue()}
    raise ConfigError(
        f"image=: give a file path, the image's bytes or a PIL image (got {type(image).__name__})"
    )


@dataclasses.dataclass
class Results:
    """One page of hits. Iterate it for :class:`~imageindex.types.Hit` values, page on with
    :meth:`next_page` (or :meth:`pages`), and turn it into a DataFrame with :meth:`to_pandas`."""

    hits: list[Hit]
    #: opaque cursor of the next page (None on the last page); the CLI's ``--cursor``
    next_cursor: str | None
    #: the filter the store ran, as query-language text (None without a filter)
    query: str | None
    request: SearchRequest
    registry: str | None = None

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, index: int) -> Hit:
        return self.hits[index]

    def __repr__(self) -> str:
        more = ", more pages" if self.next_cursor else ""
        return f"<Results of {self.request.dataset_id!r}: {len(self.hits)} hits{more}>"

    def next_page(self) -> Results | None:
        """The next page of the same query (same ``top_k``), or None after the last one."""
        if self.next_cursor is None:
            return None
        req = dataclasses.replace(self.request, cursor=self.next_cursor)
        return _run(req, self.registry)

    def pages(self) -> Iterator[Results]:
        """This page and every following one."""
        page: Results | None = self
        while page is not None:
            yield page
            page = page.next_page()

    def to_pandas(self) -> pd.DataFrame:
        """The hits as a DataFrame: one row per hit, columns :data:`HIT_COLUMNS`; ``mtime`` as
        UTC timestamps, ``tags_ai``/``tags_user`` as lists."""
        import pandas as pd

        frame = pd.DataFrame.from_records(
            [dataclasses.asdict(h) for h in self.hits], columns=HIT_COLUMNS
        )
        frame["mtime"] = pd.to_datetime(frame["mtime"], unit="s", utc=True)
        return frame


def _run(req: SearchRequest, registry: str | None) -> Results:
    result = run_search(req, registry_path=registry)
    return Results(result.hits, result.next_cursor, result.query, req, registry)


def keyword_search(
    dataset: str,
    text: str | None = None,
    *,
    image: Any = None,
    image_uri: str | None = None,
    dsl: str | None = None,
    tags_any: str | Sequence[str] | None = None,
    tags_all: str | Sequence[str] | None = None,
    tags_exclude: str | Sequence[str] | None = None,
    file_name: str | None = None,
    path_prefix: str | None = None,
    mtime_from: str | None = None,
    mtime_to: str | None = None,
    top_k: int = 10,
    score_threshold: float | None = None,
    sort: str = "uri",
    version: str | None = None,
    cursor: str | None = None,
    registry: str | Path | None = None,
) -> Results:
    """Search ``dataset`` (its current version unless ``version``) as ``imageindex search`` does.

    At most one of ``text``, ``image`` (path, bytes or PIL image) and ``image_uri`` (an indexed
    image); the filters (``dsl`` in the query language, tags, file name, path prefix,
    modification time) AND together. With a text or image query hits are the nearest first;
    without one, every match in ``sort`` order. Errors are the CLI's, e.g.
    :class:`~imageindex.errors.RegistryError` for an unknown dataset.
    """
    req = SearchRequest(
        dataset_id=dataset,
        version=version,
        text=text,
        image_uri=image_uri,
        dsl=dsl,
        tags_any=split_tags(tags_any),
        tags_all=split_tags(tags_all),
        tags_exclude=split_tags(tags_exclude),
        file_name=file_name,
        path_prefix=path_prefix,
        mtime_from=mtime_from,
        mtime_to=mtime_to,
        top_k=top_k,
        score_threshold=score_threshold,
        cursor=cursor,
        sort=sort,
        **_image_arg(image),
    )
    return _run(req, str(registry) if registry else None)


class _CallableModule(types.ModuleType):
    """``imageindex.search(dataset, text=...)`` is this module called (:func:`keyword_search`):
    a function of that name in the package would be shadowed by the module on its first import."""

    def __call__(self, *args, **kwargs) -> Results:
        return keyword_search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
