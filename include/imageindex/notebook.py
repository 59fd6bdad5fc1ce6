"""The Python API for notebooks and scripts: search, feature tables and evaluation summaries as
pandas DataFrames.

::

    import imageindex

    res = imageindex.search("samples", text="a cup of coffee", top_k=5)
    for hit in res:                        # Hit values (uri, file_name, score, tags_ai, ...)
        print(hit.score, hit.file_name)
    df = res.to_pandas()                   # one row per hit
    more = res.next_page()                 # the next top_k, or None after the last page
    feats, X = imageindex.load_features("samples", return_embeddings=True)

It is the CLI's search path (:mod:`imageindex.search`, one query AST for every form) with
keyword arguments instead of flags; the registry is found as the CLI finds it
(:mod:`imageindex.config`). pandas is imported only by the calls that return a DataFrame.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imageindex.errors import ConfigError
from imageindex.types import Hit

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from imageindex.search import SearchRequest

__all__ = ["HIT_COLUMNS", "Results", "load_features", "search"]

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
    from imageindex.search import run_search

    result = run_search(req, registry_path=registry)
    return Results(result.hits, result.next_cursor, result.query, req, registry)


def search(
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
    from imageindex.search import SearchRequest

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


def load_features(
    dataset: str,
    version: str | None = None,
    *,
    columns: Sequence[str] | None = None,
    return_embeddings: bool = False,
    registry: str | Path | None = None,
) -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]:
    """The feature table of ``dataset``/``version`` (default: the current version) as a
    DataFrame, one row per indexed image (see :mod:`imageindex.features` for the columns).

    ``return_embeddings=True`` returns ``(frame, embeddings)`` instead: the frame without the
    ``embedding`` column and a float32 array of shape ``(rows, dim)``, row ``i`` the embedding
    of the frame's row ``i`` (what scikit-learn, faiss or numpy want). Reads local or ``s3://``
    tables with the dataset's connection.
    """
    from imageindex.layout import feature_table_uri, open_dataset_staging
    from imageindex.registry import load_registry

    ds = load_registry(str(registry) if registry else None).get(dataset)
    name = ds.version(version).name
    uri = feature_table_uri(ds, name)
    if uri is None:
        raise ConfigError(f"dataset '{ds.id}' has feature tables turned off (feature_table: false)")
    staging = open_dataset_staging(ds, uri.rsplit("/", 1)[0])
    if not staging.exists(uri):
        raise ConfigError(
            f"{uri}: no feature table for {ds.id}/{name} yet; it is written by an index run "
            f"(the imageindex_{ds.id} DAG or `imageindex index --dataset {ds.id} --version {name}`)"
        )
    wanted = None
    if columns is not None:
        wanted = list(columns)
        if return_embeddings and "embedding" not in wanted:
            wanted.append("embedding")
    table = staging.read_parquet(uri, columns=wanted)
    if not return_embeddings:
        return table.to_pandas()
    return _split_embeddings(table, uri)


def _split_embeddings(table, uri: str):
    import numpy as np
    import pyarrow as pa

    column = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(column.type) or column.null_count:
        raise ConfigError(f"{uri}: 'embedding' is not a fixed-size list without nulls")
    dim = column.type.list_size
    # flatten() honours slicing; the result is a view of the Parquet buffers, copied once
    matrix = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    frame = table.drop_columns(["embedding"]).to_pandas()
    return frame, matrix.reshape(len(column), dim)
