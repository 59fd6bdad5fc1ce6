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

``imageindex.search`` is the module :mod:`imageindex.search` called: its
:func:`~imageindex.search.keyword_search`, the CLI's search path with keyword arguments instead
of flags (re-exported here as ``search``, with :class:`~imageindex.search.Results`). The
registry is found as the CLI finds it (:mod:`imageindex.config`). pandas is imported only by
the calls that return a DataFrame.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imageindex.errors import ConfigError
from imageindex.search import HIT_COLUMNS, Results, split_tags
from imageindex.search import keyword_search as search

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["HIT_COLUMNS", "Results", "load_features", "search", "split_tags"]


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
