"""Opaque cursors for paging search results, shared by every store.

A cursor records where the previous page ended and a digest of the query it belongs to, so a
cursor replayed against another query (or a tampered one) is refused instead of silently
returning the wrong page. Cursors carry no secrets and no documents, only positions.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import numpy as np

from imageindex.errors import ConfigError


def query_digest(dataset_id: str, vector, where_text: str | None, sort: str, threshold) -> str:
    h = hashlib.sha256()
    h.update(dataset_id.encode())
    if vector is not None:
        h.update(np.asarray(vector, dtype=np.float32).round(6).tobytes())
    h.update(b"\x00" + (where_text or "").encode())
    h.update(b"\x00" + sort.encode() + b"\x00" + repr(threshold).encode())
    return h.hexdigest()[:16]


def encode_cursor(digest: str, **position: Any) -> str:
    raw = json.dumps({"q": digest, **position}, separators=(",", ":"), default=str)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, digest: str) -> dict:
    try:
        pad = "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(cursor + pad))
        if not isinstance(data, dict):
            raise ValueError
    except (ValueError, TypeError, UnicodeDecodeError):
        raise ConfigError(
            "cursor is malformed; pass the next_cursor of the previous page"
        ) from None
    if data.get("q") != digest:
        raise ConfigError("cursor belongs to another query; start again without a cursor")
    return data


def parse_sort(sort: str, allowed) -> tuple[str, bool]:
    """``"-mtime"`` → ("mtime", True); unknown fields are refused with the valid list."""
    desc = sort.startswith("-")
    name = sort[1:] if desc else sort
    if name not in allowed:
        raise ConfigError(f"sort {sort!r} is not one of {list(allowed)} (prefix '-' to reverse)")
    return name, desc
