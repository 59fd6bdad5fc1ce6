"""Export the result of a search as a file list for training — JSONL, CSV or Parquet, on a
local path or ``s3://`` — or as a new logical version of the dataset.

Writes are atomic: the file is built in a local temporary file and appears at its destination
in one step (a rename, or one S3 upload), so a reader never sees half a manifest. Its row count
and SHA-256 come back in the result and in a ``<dest>.sha256`` file (``sha256sum -c`` format)
written after it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from imageindex import layout
from imageindex.errors import ConfigError
from imageindex.manifest import CSV_LIST_SEP, format_of
from imageindex.search import SearchRequest, iter_hits

log = logging.getLogger(__name__)

#: Columns of an export, in order. ``key`` and ``fingerprint`` let a logical version built from
#: the export reuse the indexed vectors instead of recomputing them.
EXPORT_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("file_name", pa.string()),
        ("key", pa.string()),
        ("size", pa.int64()),
        ("mtime", pa.timestamp("us", tz="UTC")),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("tags_ai", pa.list_(pa.string())),
        ("tags_user", pa.list_(pa.string())),
        ("score", pa.float64()),
        ("fingerprint", pa.string()),
        ("id", pa.string()),
        ("dataset_id", pa.string()),
        ("dataset_version", pa.string()),
    ]
)
COLUMNS = EXPORT_SCHEMA.names


@dataclass
class ExportResult:
    uri: str
    format: str
    count: int
    sha256: str
    bytes: int
    checksum_uri: str
    version: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _staging_for(dest: str, s3_conn_id: str | None):
    from imageindex.sources.local import local_path_from_uri
    from imageindex.staging import open_staging

    if dest.startswith("s3://"):
        bucket_and_key = dest[len("s3://") :]
        if "/" not in bucket_and_key.strip("/"):
            raise ConfigError(f"export destination {dest} names a bucket but no object key")
        return open_staging(dest.rsplit("/", 1)[0], s3_conn_id=s3_conn_id), dest
    if "://" in dest and not dest.startswith("file://"):
        raise ConfigError(f"export destination {dest!r}: use a local path or s3://bucket/key")
    path = local_path_from_uri(dest)
    if path.is_dir():
        raise ConfigError(f"export destination {path} is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    return open_staging(str(path.parent)), str(path)


def _rows(hits, fields: dict[str, tuple[str | None, str | None]]) -> list[dict]:
    out = []
    for h in hits:
        key, fp = fields.get(h.id, (None, None))
        out.append(
            {
                "uri": h.uri,
                "file_name": h.file_name,
                "key": key,
                "size": h.size,
                "mtime": datetime.fromtimestamp(h.mtime, UTC) if h.mtime is not None else None,
                "width": h.width,
                "height": h.height,
                "format": h.format,
                "tags_ai": list(h.tags_ai or []),
                "tags_user": list(h.tags_user or []),
                "score": round(float(h.score), 6),
                "fingerprint": fp,
                "id": h.id,
                "dataset_id": h.dataset_id,
                "dataset_version": h.dataset_version,
            }
        )
    return out


class _Writer:
    """Rows → one local file in the chosen format."""

    def __init__(self, path: str, fmt: str):
        self.fmt = fmt
        self.count = 0
        if fmt == "parquet":
            self._pq = pq.ParquetWriter(path, EXPORT_SCHEMA)
        else:
            self._f = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
            if fmt == "csv":
                self._csv = csv.DictWriter(self._f, fieldnames=COLUMNS)
                self._csv.writeheader()

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        self.count += len(rows)
        if self.fmt == "parquet":
            self._pq.write_table(pa.Table.from_pylist(rows, schema=EXPORT_SCHEMA))
            return
        for row in rows:
            row = {**row, "mtime": row["mtime"].isoformat() if row["mtime"] else None}
            if self.fmt == "jsonl":
                self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                for k in ("tags_ai", "tags_user"):
                    bad = [t for t in row[k] if CSV_LIST_SEP in t]
                    if bad:
                        raise ConfigError(
                            f"tag {bad[0]!r} of {row['uri']} holds '{CSV_LIST_SEP}', which CSV "
                            "exports use between tags; export as jsonl or parquet"
                        )
                    row[k] = CSV_LIST_SEP.join(row[k])
                self._csv.writerow(row)

    def close(self) -> None:
        if self.fmt == "parquet":
            self._pq.close()
        else:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


def export_search(
    req: SearchRequest,
    dest: str,
    *,
    fmt: str | None = None,
    limit: int | None = None,
    registry_path: str | None = None,
    s3_conn_id: str | None = None,
) -> ExportResult:
    """Write every hit of ``req`` to ``dest`` (see :func:`imageindex.search.iter_hits` for which
    hits: all matches of a filter, or the ``limit`` nearest of a text/image query)."""
    from imageindex.registry import load_registry
    from imageindex.stores import open_store

    fmt = format_of(dest, fmt)
    ds = load_registry(registry_path).get(req.dataset_id)
    conn = layout.s3_conn_id(ds, s3_conn_id)
    staging, uri = _staging_for(dest, conn)
    store = open_store(ds.store_uri, spec=ds.store)
    digest = hashlib.sha256()
    with staging.output_file(uri) as tmp:
        writer = _Writer(tmp, fmt)
        try:
            for hits in iter_hits(req, limit=limit, registry_path=registry_path):
                extra = {}
                for b in store.iter_documents(
                    ds.id, ids=[h.id for h in hits], columns=["id", "key", "fingerprint"]
                ):
                    for i, k, f in zip(
                        *(b.column(c).to_pylist() for c in b.schema.names), strict=True
                    ):
                        extra[i] = (k, f)
                writer.write(_rows(hits, extra))
        finally:
            writer.close()
        with open(tmp, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        size = os.path.getsize(tmp)
    sha = digest.hexdigest()
    checksum_uri = uri + ".sha256"
    staging.write_bytes(checksum_uri, f"{sha}  {uri.rsplit('/', 1)[-1]}\n".encode())
    log.info("exported %d file(s) of %s to %s (sha256 %s)", writer.count, ds.id, uri, sha)
    return ExportResult(
        uri=uri, format=fmt, count=writer.count, sha256=sha, bytes=size, checksum_uri=checksum_uri
    )


def export_version(
    req: SearchRequest,
    version: str,
    *,
    dest: str | None = None,
    limit: int | None = None,
    description: str = "",
    replace: bool = False,
    registry_path: str | None = None,
) -> ExportResult:
    """Export ``req`` as a manifest and register it as logical version ``version`` of the
    dataset (default manifest location: ``<staging>/exports/<dataset>/<version>.parquet``).
    Index it like any version: ``imageindex index --dataset D --version NAME`` or the DAG."""
    from imageindex.registry import load_registry
    from imageindex.versions import check_version_name, lookup_registered, register_version

    check_version_name(version)
    ds = load_registry(registry_path).get(req.dataset_id)
    if version in ds.versions:
        raise ConfigError(f"dataset '{ds.id}' already declares version '{version}'")
    if not replace and lookup_registered(ds, version) is not None:
        raise ConfigError(
            f"dataset '{ds.id}' already has a logical version '{version}'; pick another name"
        )
    dest = dest or layout.StagingLayout.current().export_manifest(ds.id, version)
    result = export_search(req, dest, limit=limit, registry_path=registry_path)
    register_version(
        ds,
        version,
        result.uri,
        description=description,
        extra={"count": result.count, "sha256": result.sha256, "from_version": req.version},
        replace=replace,
    )
    result.version = version
    return result
