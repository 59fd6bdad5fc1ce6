"""SQL for LanceDB filters (DataFusion SQL): every value that reaches a filter string goes
through :func:`sql_string`, column names are written here or come from the field registry."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from imageindex.errors import ConfigError
from imageindex.stores.base import Filter

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def sql_string(value: str) -> str:
    """Quote ``value`` as a SQL string literal (single quotes doubled).

    Control characters are refused: no legitimate id, uri or tag has them, and they are the usual
    way to smuggle something past a parser.
    """
    if not isinstance(value, str):
        raise ConfigError(f"filter value {value!r} must be a string, not {type(value).__name__}")
    if _CONTROL_CHARS.search(value):
        raise ConfigError(f"filter value {value!r} contains a control character; remove it")
    return "'" + value.replace("'", "''") + "'"


def sql_list(values: Sequence[str]) -> str:
    """``['a', 'b']``: an array literal for array_has_any / array_has_all."""
    return "[" + ", ".join(sql_string(v) for v in values) + "]"


def sql_in(column: str, values: Sequence[str]) -> str:
    """``column IN ('a', 'b')``; an empty list matches nothing."""
    if not values:
        return "false"
    return f"{column} IN (" + ", ".join(sql_string(v) for v in values) + ")"


def unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def compile_filter(flt: Filter | None) -> str | None:
    """The SQL predicate for ``flt`` (None when it constrains nothing)."""
    if flt is None:
        return None
    parts: list[str] = []
    if flt.versions is not None:
        parts.append(sql_in("dataset_version", unique(flt.versions)))
    if flt.uris is not None:
        parts.append(sql_in("uri", unique(flt.uris)))
    if flt.status is not None:
        parts.append(f"status = {sql_string(flt.status)}")
    if flt.tags_any:
        lst = sql_list(unique(flt.tags_any))
        parts.append(f"(array_has_any(tags_ai, {lst}) OR array_has_any(tags_user, {lst}))")
    for tag in unique(flt.tags_all):
        # A tag may be in either list, so array_has_all on one column would miss documents.
        one = sql_list([tag])
        parts.append(f"(array_has_any(tags_ai, {one}) OR array_has_any(tags_user, {one}))")
    if flt.tags_exclude:
        lst = sql_list(unique(flt.tags_exclude))
        # array_has_any(NULL, ...) is NULL, and NOT NULL would drop untagged documents.
        parts.append(
            f"(tags_ai IS NULL OR NOT array_has_any(tags_ai, {lst}))"
            f" AND (tags_user IS NULL OR NOT array_has_any(tags_user, {lst}))"
        )
    if not parts:
        return None
    return " AND ".join(f"({p})" for p in parts)


def and_(*preds: str | None) -> str | None:
    kept = [p for p in preds if p]
    if not kept:
        return None
    return " AND ".join(f"({p})" for p in kept)


def keyset_sql(field: str, desc: bool, last, last_id: str) -> str:
    """Rows after (``last``, ``last_id``) in (``field``, id) order: keyset paging."""
    if field in ("mtime", "indexed_at"):
        iso = datetime.fromisoformat(str(last)).isoformat()
        lit = f"TIMESTAMP {sql_string(iso)}"
    elif field in ("size",):
        lit = str(int(last))
    else:
        lit = sql_string(str(last))
    op = "<" if desc else ">"
    return f"({field} {op} {lit} OR ({field} = {lit} AND id > {sql_string(str(last_id))}))"
