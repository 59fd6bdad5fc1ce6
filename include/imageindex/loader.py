"""The SDK loader: iterate ``(PIL image, metadata)`` over a dataset version or a manifest.

    from imageindex import load_version

    for image, meta in load_version("samples", "picked"):
        ...                                   # meta: uri, file_name, tags_ai, width, ...

    ds = load_version("samples", "v1", transform=tf)
    loader = torch.utils.data.DataLoader(ds.as_torch(), batch_size=64, num_workers=4)

:class:`VersionDataset` follows PyTorch's iterable-dataset protocol (``__iter__``, ``__len__``,
worker sharding through ``torch.utils.data.get_worker_info`` when torch is already imported)
without importing torch; ``as_torch()`` wraps it in a ``torch.utils.data.IterableDataset`` for
``DataLoader``. Files stream from local disk or S3 — a few reads ahead, never the
whole version in memory. A file that cannot be read or decoded is skipped with a warning and
counted in ``skipped`` (``errors="raise"`` stops instead).
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

from imageindex import layout
from imageindex.errors import ConfigError, ImageIndexError, SourceError

log = logging.getLogger(__name__)

#: Metadata columns read from the index for each image.
META_COLUMNS = [
    "id",
    "uri",
    "key",
    "file_name",
    "size",
    "mtime",
    "width",
    "height",
    "format",
    "tags_ai",
    "tags_user",
    "dataset_id",
    "dataset_version",
]


def load_version(
    dataset_id: str,
    version: str | None = None,
    *,
    manifest: str | None = None,
    registry_path: str | None = None,
    transform: Callable | None = None,
    mode: str | None = "RGB",
    errors: str = "skip",
    prefetch: int = 8,
) -> VersionDataset:
    """The indexed images of ``dataset_id``/``version`` (failed documents left out), or the
    files a ``manifest`` lists (an export: local path or ``s3://``)."""
    from imageindex.registry import load_registry

    if errors not in ("skip", "raise"):
        raise ConfigError(f"errors={errors!r} must be 'skip' or 'raise'")
    ds = load_registry(registry_path).get(dataset_id)
    conn = layout.s3_conn_id(ds)
    if manifest is not None:
        rows = _ManifestRows(manifest, conn)
    else:
        rows = _IndexRows(ds, ds.version(version).name)
    return VersionDataset(
        rows, s3_conn_id=conn, transform=transform, mode=mode, errors=errors, prefetch=prefetch
    )


class _IndexRows:
    def __init__(self, ds, version: str):
        from imageindex.stores import open_store

        self.ds, self.version = ds, version
        self.store = open_store(ds.store_uri, spec=ds.store)

    def __len__(self) -> int:
        from imageindex.stores.base import Filter
        from imageindex.stores.schema import STATUS_OK

        return self.store.count(self.ds.id, Filter(versions=[self.version], status=STATUS_OK))

    def __iter__(self) -> Iterator[dict]:
        from imageindex.stores.schema import STATUS_OK

        cols = [*META_COLUMNS, "status"]
        batches = self.store.iter_documents(self.ds.id, version=self.version, columns=cols)
        for b in batches:
            for r in b.to_pylist():
                if r.pop("status") == STATUS_OK:
                    yield r


class _ManifestRows:
    def __init__(self, uri: str, conn: str):
        from imageindex.sources.manifest import ManifestSource

        self.source = ManifestSource(uri, s3_conn_id=conn)
        self.source.check_available()

    def __len__(self) -> int:
        return sum(1 for _ in self.source._rows())

    def __iter__(self) -> Iterator[dict]:
        from imageindex.manifest import parse_list
        from imageindex.sources.manifest import normalize_uri

        for _, row in self.source._rows():
            meta = dict(row)
            meta["uri"] = normalize_uri(str(row["uri"]))
            for k in ("tags_ai", "tags_user"):
                if k in meta:
                    meta[k] = parse_list(meta[k])
            yield meta


class VersionDataset:
    """An iterable of ``(image, metadata)``; see :func:`load_version`."""

    def __init__(self, rows, *, s3_conn_id, transform, mode, errors, prefetch):
        self._rows = rows
        self._conn = s3_conn_id
        self.transform = transform
        self.mode = mode
        self.errors = errors
        self.prefetch = max(1, int(prefetch))
        self.skipped = 0
        self._shard = (1, 0)

    def __len__(self) -> int:
        return len(self._rows)

    def as_torch(self):
        """This dataset as a ``torch.utils.data.IterableDataset`` (imports torch)."""
        from torch.utils.data import IterableDataset

        outer = self

        class TorchVersionDataset(IterableDataset):
            def __iter__(self):
                return iter(outer)

            def __len__(self):
                return len(outer)

        return TorchVersionDataset()

    def shard(self, num_shards: int, index: int) -> VersionDataset:
        """Every ``num_shards``-th row starting at ``index`` (e.g. one per training host)."""
        if not 0 <= index < num_shards:
            raise ConfigError(f"shard index {index} is not in [0, {num_shards})")
        out = VersionDataset(
            self._rows,
            s3_conn_id=self._conn,
            transform=self.transform,
            mode=self.mode,
            errors=self.errors,
            prefetch=self.prefetch,
        )
        out._shard = (num_shards, index)
        return out

    def _my_rows(self) -> Iterator[dict]:
        n, i = self._shard
        torch = sys.modules.get("torch")  # only when the caller uses torch already
        info = torch.utils.data.get_worker_info() if torch is not None else None
        if info is not None:
            n, i = n * info.num_workers, i * info.num_workers + info.id
        return islice(iter(self._rows), i, None, n)

    def _read(self, uri: str) -> bytes:
        if uri.startswith("s3://"):
            from imageindex.s3util import get_s3_client, parse_s3_uri, s3_error

            bucket, key = parse_s3_uri(uri)
            try:
                return get_s3_client(self._conn).get_object(Bucket=bucket, Key=key)["Body"].read()
            except Exception as exc:
                raise s3_error(exc, uri=uri, conn_id=self._conn, action="read") from exc
        from imageindex.sources.local import local_path_from_uri, read_local_file

        return read_local_file(local_path_from_uri(uri), since="indexing")

    def _load(self, meta: dict):
        from PIL import Image, ImageOps

        try:
            data = self._read(meta["uri"])
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format
                im = ImageOps.exif_transpose(im)
                img = im.convert(self.mode) if self.mode else im.copy()
                img.format = fmt  # what the file was (copies and conversions drop it)
        except (ImageIndexError, OSError, ValueError, Image.DecompressionBombError) as exc:
            return meta, exc
        return meta, img

    def __iter__(self) -> Iterator[tuple[object, dict]]:
        with ThreadPoolExecutor(max_workers=self.prefetch) as pool:
            pending = []
            rows = self._my_rows()
            for meta in islice(rows, self.prefetch):
                pending.append(pool.submit(self._load, meta))
            while pending:
                meta, result = pending.pop(0).result()
                nxt = next(rows, None)
                if nxt is not None:
                    pending.append(pool.submit(self._load, nxt))
                if isinstance(result, BaseException):
                    if self.errors == "raise":
                        raise SourceError(f"{meta['uri']}: {result}") from result
                    self.skipped += 1
                    log.warning("load_version: skipping %s: %s", meta["uri"], result)
                    continue
                yield (self.transform(result) if self.transform else result), meta
