"""File lists ("manifests"): what an export writes and what a logical dataset version reads.

One row per file. Formats, picked by the file's extension:

- ``.parquet`` — typed columns (``mtime`` a UTC timestamp, tags as lists);
- ``.jsonl`` / ``.ndjson`` — one JSON object per line (``mtime`` an ISO 8601 string);
- ``.csv`` — a header line, tags joined with ``|``, ``mtime`` ISO 8601.

Only ``uri`` is required when reading (``file:///abs/path``, a plain absolute path or
``s3://bucket/key``); ``key``, ``size``, ``mtime`` and ``fingerprint`` are used when present
and looked up otherwise. Everything here streams: a manifest of any length is read in batches.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

from imageindex.errors import ConfigError, SourceError

FORMATS = ("jsonl", "csv", "parquet")
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
}
#: Separator of list values (tags) in CSV cells.
CSV_LIST_SEP = "|"


def format_of(uri: str, fmt: str | None = None) -> str:
    """The manifest format of ``uri`` (``fmt`` wins when given)."""
    if fmt:
        if fmt not in FORMATS:
            raise ConfigError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
        return fmt
    name = uri.rsplit("/", 1)[-1].lower()
    for ext, f in _EXTENSIONS.items():
        if name.endswith(ext):
            return f
    raise ConfigError(
        f"{uri}: cannot tell the manifest format from the name; end it with .jsonl, .csv or "
        ".parquet"
    )


def iter_rows(path: str | Path, fmt: str, *, label: str | None = None) -> Iterator[dict]:
    """Rows of a local manifest file as dicts; errors name the file and the line or row."""
    label = label or str(path)
    if fmt == "parquet":
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:
            raise SourceError(f"manifest {label} is not a readable Parquet file: {exc}") from exc
        with pf:
            if "uri" not in pf.schema_arrow.names:
                raise SourceError(f"manifest {label} has no 'uri' column")
            for batch in pf.iter_batches(batch_size=10_000):
                yield from batch.to_pylist()
        return
    if fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SourceError(f"manifest {label}, line {n}: not JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise SourceError(f"manifest {label}, line {n}: expected a JSON object")
                yield row
        return
    if fmt == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "uri" not in reader.fieldnames:
                raise SourceError(f"manifest {label} has no 'uri' column in its header")
            for row in reader:
                yield {k: (v if v != "" else None) for k, v in row.items()}
        return
    raise ConfigError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")


def parse_mtime(value, *, where: str) -> float | None:
    """Seconds since the epoch from a number, an ISO 8601 string or a datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise SourceError(f"{where}: mtime {value!r} is not a finite number")
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise SourceError(f"{where}: mtime {value!r} is neither a number nor ISO 8601") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def parse_int(value, *, field: str, where: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SourceError(f"{where}: {field} {value!r} is not an integer") from None


def parse_list(value) -> list[str]:
    """Tags from a list, a JSON list or a ``|``-joined CSV cell."""
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    text = str(value)
    if text.startswith("["):
        try:
            parsed = json.loads(text)
            if isinstance(parsed, list):
                return [str(v) for v in parsed]
        except json.JSONDecodeError:
            pass
    return [t for t in text.split(CSV_LIST_SEP) if t]
