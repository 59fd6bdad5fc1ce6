"""The simple search forms (CLI flags, REST parameters, the search panel's boxes) as query ASTs,
so they go through the same validation and compilers as the query language.

``simple_filter(tags_any=["cat"], path_prefix="s3://b/pets/")`` is the AST of
``tags:cat AND uri=s3://b/pets/*``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime

from imageindex.query.ast import And, Compare, Node, Not, Prefix, QueryError, Value
from imageindex.query.fields import FieldSpec, check_compare, lookup


def _strings(name: str, values: Iterable[str] | None) -> list[str]:
    if values is None:
        return []
    # A bare string would be iterated character by character: "cat" -> c, a, t.
    if isinstance(values, str):
        raise QueryError(f"{name} must be a list of strings, not the string {values!r}")
    out = list(dict.fromkeys(values))
    for v in out:
        if not isinstance(v, str):
            raise QueryError(f"{name} must hold strings; {v!r} is a {type(v).__name__}")
    return out


def _one_or_list(values: list[str]) -> Value:
    return values[0] if len(values) == 1 else tuple(values)


def _when(name: str, value: object) -> object:
    # Hits carry mtime as epoch seconds, so a client may send those back.
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise QueryError(f"{name}={value!r} is not a valid timestamp ({exc})") from None
    if not isinstance(value, str | date):
        raise QueryError(
            f"{name} must be a date, datetime, ISO string or epoch seconds, not "
            f"{type(value).__name__}"
        )
    return value


class _Builder:
    def __init__(self, fields: Mapping[str, FieldSpec] | None):
        self.fields = fields
        self.parts: list[Node] = []

    def compare(self, field: str, op: str, value: Value) -> Compare:
        spec = lookup(self.fields, field)
        return Compare(spec.name, op, check_compare(spec, op, value))

    def add(self, node: Node) -> None:
        self.parts.append(node)


def simple_filter(
    tags_any: Iterable[str] | None = None,
    tags_all: Iterable[str] | None = None,
    tags_exclude: Iterable[str] | None = None,
    file_name: str | None = None,
    path_prefix: str | None = None,
    mtime_from: date | datetime | str | float | None = None,
    mtime_to: date | datetime | str | float | None = None,
    versions: Iterable[str] | None = None,
    *,
    status: str | None = None,
    uris: Iterable[str] | None = None,
    fields: Mapping[str, FieldSpec] | None = None,
) -> Node | None:
    """The AST of the simple search form, conditions ANDed; None when nothing is constrained.

    - ``tags_any``: has any of these tags (AI or user); ``tags_all``: has every one;
      ``tags_exclude``: has none of them.
    - ``file_name``: the file name contains this, case-insensitively (``file_name:value``).
    - ``path_prefix``: the uri starts with this, case-sensitively (``uri=prefix*``).
    - ``mtime_from`` / ``mtime_to``: modified at or after / at or before (both inclusive; a date
      is a whole UTC day, so ``mtime_to=date(2026, 1, 31)`` includes all of Jan 31).
    - ``versions`` / ``uris``: one of these exact values; an empty list is refused.
    - ``status``: exactly this status.
    """
    b = _Builder(fields)
    tags = _strings("tags_any", tags_any)
    if tags:
        b.add(b.compare("tags", ":", _one_or_list(tags)))
    for tag in _strings("tags_all", tags_all):
        b.add(b.compare("tags", ":", tag))
    excluded = _strings("tags_exclude", tags_exclude)
    if excluded:
        b.add(Not(b.compare("tags", ":", _one_or_list(excluded))))
    if file_name:
        b.add(b.compare("file_name", ":", file_name))
    if path_prefix:
        if not isinstance(path_prefix, str):
            raise QueryError(f"path_prefix must be a string, not {type(path_prefix).__name__}")
        b.add(b.compare("uri", "=", Prefix(path_prefix)))
    if mtime_from is not None:
        b.add(b.compare("mtime", ">=", _when("mtime_from", mtime_from)))
    if mtime_to is not None:
        b.add(b.compare("mtime", "<=", _when("mtime_to", mtime_to)))
    for name, field, values in (("versions", "dataset_version", versions), ("uris", "uri", uris)):
        if values is None:
            continue
        exact = _strings(name, values)
        if not exact:
            raise QueryError(f"{name}=[] matches nothing; pass None to match every {field}")
        b.add(b.compare(field, "=", _one_or_list(exact)))
    if status is not None:
        b.add(b.compare("status", "=", status))
    return combine(*b.parts)


def from_filter(flt, *, fields: Mapping[str, FieldSpec] | None = None) -> Node | None:
    """The AST of a :class:`~imageindex.stores.base.Filter` (None when it constrains nothing).
    Raises QueryError for ``versions=[]`` or ``uris=[]``, which the AST cannot express; callers
    should return no results for those without querying."""
    return simple_filter(
        tags_any=flt.tags_any,
        tags_all=flt.tags_all,
        tags_exclude=flt.tags_exclude,
        versions=flt.versions,
        status=flt.status,
        uris=flt.uris,
        fields=fields,
    )


def combine(*nodes: Node | None) -> Node | None:
    """All of ``nodes`` (None entries skipped): the node itself when there is one, None when
    there is none. Top-level Ands are flattened, so combining stays one level deep."""
    items: list[Node] = []
    for node in nodes:
        if node is None:
            continue
        if isinstance(node, And):
            items.extend(node.items)
        else:
            items.append(node)
    if not items:
        return None
    return items[0] if len(items) == 1 else And(tuple(items))


__all__ = ["combine", "from_filter", "simple_filter"]
