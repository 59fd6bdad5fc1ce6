"""The fields a query may name: their type, the document column(s) behind them, and the typing
rules every query form (DSL, CLI flags, REST API) goes through.

A field with several columns (``tags`` = ``tags_ai`` + ``tags_user``) matches when any of its
columns matches, and HAS when any of them has a value.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from enum import StrEnum
from types import MappingProxyType

from imageindex.errors import ConfigError
from imageindex.query.ast import OPS, RANGE_OPS, Prefix, QueryError, Scalar, Value


class FieldType(StrEnum):
    #: free text (a file name, an error message): ``:`` matches a case-insensitive substring
    TEXT = "text"
    #: an opaque string (uri, format, status...): ``:`` matches a case-insensitive substring too
    KEYWORD = "keyword"
    #: a list of tags: ``:`` and ``=`` match one element exactly
    TAGS = "tags"
    INT = "int"
    FLOAT = "float"
    #: a UTC timestamp; a date value stands for the whole UTC day
    DATETIME = "datetime"


STRING_TYPES = frozenset({FieldType.TEXT, FieldType.KEYWORD, FieldType.TAGS})
ORDERED_TYPES = frozenset({FieldType.INT, FieldType.FLOAT, FieldType.DATETIME})

INT32 = (-(2**31), 2**31 - 1)
# -2**63 itself is not accepted: DataFusion reads the literal as minus 2**63, which overflows.
INT64 = (-(2**63 - 1), 2**63 - 1)

KEYWORDS = frozenset({"and", "or", "not", "has"})
_FIELD_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
# Lowercase only: DataFusion folds unquoted identifiers to lowercase.
_COLUMN_RE = re.compile(r"^[a-z_][a-z0-9_]*$")

_TYPE_WORDS = {
    FieldType.TEXT: "text",
    FieldType.KEYWORD: "text",
    FieldType.TAGS: "tags",
    FieldType.INT: "whole numbers",
    FieldType.FLOAT: "numbers",
    FieldType.DATETIME: "dates",
}


@dataclass(frozen=True)
class FieldSpec:
    """One queryable field. ``name`` and ``aliases`` are lowercase; ``columns`` are document
    columns (SQL identifiers). ``nullable``: whether a document may lack a value (compilers add
    NULL guards only where needed). ``int_range``: bounds of an INT column's storage type."""

    name: str
    type: FieldType
    columns: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    nullable: bool = True
    int_range: tuple[int, int] = INT64
    description: str = ""
    #: names the field may be written as, canonical name first
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            kind = FieldType(self.type)
        except ValueError:
            raise ConfigError(
                f"query field {self.name!r}: type {self.type!r} is unknown; use one of "
                + ", ".join(t.value for t in FieldType)
            ) from None
        columns = (self.columns,) if isinstance(self.columns, str) else tuple(self.columns)
        aliases = (self.aliases,) if isinstance(self.aliases, str) else tuple(self.aliases)
        object.__setattr__(self, "type", kind)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "aliases", aliases)
        object.__setattr__(self, "names", (self.name, *aliases))
        for name in self.names:
            if not isinstance(name, str) or not _FIELD_NAME_RE.match(name) or name in KEYWORDS:
                raise ConfigError(
                    f"query field name {name!r} is invalid: use lowercase letters, digits and '_'"
                    " in dot-separated parts, starting with a letter, and not AND/OR/NOT/HAS"
                )
        if not columns:
            raise ConfigError(f"query field {self.name!r} needs at least one column")
        for col in columns:
            # Columns are pasted into SQL as identifiers, so only plain names are accepted.
            if not isinstance(col, str) or not _COLUMN_RE.match(col):
                raise ConfigError(
                    f"query field {self.name!r}: column {col!r} must be a plain identifier "
                    "(lowercase letters, digits, '_', not starting with a digit)"
                )
        lo, hi = self.int_range
        if not (INT64[0] <= lo <= hi <= INT64[1]):
            raise ConfigError(f"query field {self.name!r}: int_range {self.int_range} is invalid")


def _specs() -> tuple[FieldSpec, ...]:
    t = FieldType
    return (
        FieldSpec("tags", t.TAGS, ("tags_ai", "tags_user"), ("tag",),
                  description="AI or user tags"),
        FieldSpec("tags.ai", t.TAGS, ("tags_ai",), ("tags_ai",),
                  description="tags the tagger model gave"),
        FieldSpec("tags.user", t.TAGS, ("tags_user",), ("tags_user",),
                  description="tags users added"),
        FieldSpec("file_name", t.TEXT, ("file_name",), ("filename",),
                  description="file name with extension, no folder"),
        FieldSpec("uri", t.KEYWORD, ("uri",), ("path",), nullable=False,
                  description="full location, e.g. s3://bucket/a/b.jpg"),
        FieldSpec("key", t.KEYWORD, ("key",), description="path inside the source"),
        FieldSpec("format", t.KEYWORD, ("format",), description="JPEG, PNG, WEBP..."),
        FieldSpec("mode", t.KEYWORD, ("mode",), description="pixel mode: RGB, L, RGBA..."),
        FieldSpec("width", t.INT, ("width",), int_range=INT32, description="pixels"),
        FieldSpec("height", t.INT, ("height",), int_range=INT32, description="pixels"),
        FieldSpec("size", t.INT, ("size",), description="bytes"),
        FieldSpec("mtime", t.DATETIME, ("mtime",), description="last modified (UTC)"),
        FieldSpec("indexed_at", t.DATETIME, ("indexed_at",), description="when indexed (UTC)"),
        FieldSpec("dataset_id", t.KEYWORD, ("dataset_id",), ("dataset",), nullable=False),
        FieldSpec("dataset_version", t.KEYWORD, ("dataset_version",), ("version",),
                  nullable=False),
        FieldSpec("status", t.KEYWORD, ("status",), description="ok or failed"),
        FieldSpec("model", t.KEYWORD, ("model",), description="embedding model"),
        FieldSpec("error", t.TEXT, ("error",), description="why a file failed"),
        FieldSpec("fingerprint", t.KEYWORD, ("fingerprint",), description="content fingerprint"),
        FieldSpec("id", t.KEYWORD, ("id",), nullable=False, description="document id"),
    )  # fmt: skip


def field_table(*specs: FieldSpec) -> Mapping[str, FieldSpec]:
    """A read-only lookup from every name and alias of ``specs`` to its spec."""
    table: dict[str, FieldSpec] = {}
    for spec in specs:
        for name in spec.names:
            if name in table:
                raise ConfigError(
                    f"query field name {name!r} is declared twice ({table[name].name!r} and "
                    f"{spec.name!r}); rename one of them"
                )
            table[name] = spec
    return MappingProxyType(table)


#: The fields of :func:`imageindex.stores.schema.document_schema`.
DEFAULT_FIELDS: Mapping[str, FieldSpec] = field_table(*_specs())


def extend_fields(
    *extra: FieldSpec, base: Mapping[str, FieldSpec] | None = None
) -> Mapping[str, FieldSpec]:
    """``base`` (default :data:`DEFAULT_FIELDS`) plus fields a store declares."""
    base = DEFAULT_FIELDS if base is None else base
    return field_table(*unique_specs(base), *extra)


def unique_specs(fields: Mapping[str, FieldSpec]) -> list[FieldSpec]:
    """Each spec of a lookup table once, sorted by name."""
    seen: dict[str, FieldSpec] = {}
    for spec in fields.values():
        seen.setdefault(spec.name, spec)
    return [seen[k] for k in sorted(seen)]


def lookup(fields: Mapping[str, FieldSpec] | None, name: str) -> FieldSpec:
    """The spec of ``name`` (any case, aliases too); an unknown name raises a QueryError that
    lists the valid fields and suggests the closest one."""
    fields = DEFAULT_FIELDS if fields is None else fields
    if not isinstance(name, str):
        raise QueryError(f"a field name must be a string, not {type(name).__name__}")
    spec = fields.get(name) or fields.get(name.lower())
    if spec is not None:
        return spec
    valid = [s.name for s in unique_specs(fields)]
    close = difflib.get_close_matches(name.lower(), list(fields), n=1, cutoff=0.6)
    hint = f" (did you mean {fields[close[0]].name!r}?)" if close else ""
    raise QueryError(f"unknown field {name!r}{hint}; valid fields: {', '.join(valid)}")


# --------------------------------------------------------------------------------------------
# Values


_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_FLOAT_RE = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_DATE_RE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})$")
_DATETIME_RE = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2})"
    r"(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?"
    r"([Zz]|[+-][0-9]{2}:?[0-9]{2})?$"
)
_DATE_HINT = "write 2026-01-31, 2026-01-31T12:00:00Z or 2026-01-31T12:00:00+02:00"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_datetime(text: str) -> date | datetime | None:
    """``YYYY-MM-DD`` as a date, an ISO datetime as an aware UTC datetime (no offset = UTC),
    None when ``text`` is neither. Raises QueryError for a well-formed but impossible date."""
    m = _DATE_RE.match(text)
    try:
        if m:
            return date(int(m[1]), int(m[2]), int(m[3]))
        m = _DATETIME_RE.match(text)
        if not m:
            return None
        frac = (m[7] or "").ljust(6, "0")
        tz = UTC
        if m[8] and m[8] not in "Zz":
            sign = -1 if m[8][0] == "-" else 1
            digits = m[8][1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:])
            if hours > 23 or minutes > 59:
                raise ValueError("offset out of range")
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        value = datetime(
            int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6] or 0),
            int(frac or 0), tzinfo=tz,
        )  # fmt: skip
        return value.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise QueryError(f"{text!r} is not a valid date or time ({exc}); {_DATE_HINT}") from None


def day_bounds(day: date) -> tuple[datetime, datetime | None]:
    """Start of ``day`` (UTC) and start of the next day; None past the last representable day."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    try:
        return start, start + timedelta(days=1)
    except OverflowError:
        return start, None


def coerce(spec: FieldSpec, value: object) -> Scalar:
    """``value`` as the type of ``spec`` (a str is parsed: ``'640'`` for an INT field)."""
    t = spec.type
    kind = _TYPE_WORDS[t]
    if isinstance(value, Prefix):
        if t not in (FieldType.TEXT, FieldType.KEYWORD):
            raise QueryError(
                f"field {spec.name!r} holds {kind}: a prefix match (value*) works on text fields"
                " only" + ("; tags match whole tags" if t == FieldType.TAGS else "")
            )
        coerce(spec, value.text)
        return value
    if t in STRING_TYPES:
        if not isinstance(value, str):
            raise QueryError(f"field {spec.name!r} holds {kind}; {_show(value)} is not a string")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise QueryError(f"value {_show(value)} of {spec.name!r} is not valid Unicode")
        return value
    if t == FieldType.INT:
        if isinstance(value, str) and _INT_RE.match(value.strip()):
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise QueryError(f"field {spec.name!r} holds {kind}; {_show(value)} is not one")
        lo, hi = spec.int_range
        if not lo <= value <= hi:
            raise QueryError(f"field {spec.name!r} holds values from {lo} to {hi}; got {value}")
        return value
    if t == FieldType.FLOAT:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            value = float(value.strip())
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise QueryError(f"field {spec.name!r} holds {kind}; {_show(value)} is not a number")
        value = float(value)
        if not math.isfinite(value):
            raise QueryError(f"field {spec.name!r}: {value} is not a finite number")
        return value
    # DATETIME
    if isinstance(value, str):
        parsed = parse_datetime(value.strip())
        if parsed is None:
            raise QueryError(f"field {spec.name!r} holds {kind}; {_show(value)} is not one: "
                             f"{_DATE_HINT}")  # fmt: skip
        return parsed
    if isinstance(value, datetime):
        # Naive datetimes are UTC: documents store UTC and the server's zone is arbitrary.
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value
        try:
            return value.astimezone(UTC)
        except (ValueError, OverflowError) as exc:
            raise QueryError(f"field {spec.name!r}: {value} is out of range ({exc})") from None
    if isinstance(value, date):
        return value
    raise QueryError(f"field {spec.name!r} holds {kind}; {_show(value)} is not a date")


def check_operator(spec: FieldSpec, op: str, *, is_list: bool = False) -> None:
    """Refuse an operator (or a list) the field's type has no meaning for."""
    if op not in OPS:
        raise QueryError(f"unknown operator {op!r}; use one of {' '.join(OPS)}")
    if op in RANGE_OPS and spec.type not in ORDERED_TYPES:
        raise QueryError(
            f"operator {op!r} compares numbers and dates, but {spec.name!r} holds "
            f"{_TYPE_WORDS[spec.type]}; use ':', '=' or '!='"
        )
    if is_list:
        if op in RANGE_OPS:
            raise QueryError(f"operator {op!r} takes one value, not a list")
        if spec.type == FieldType.TAGS and op != ":":
            # '=' with a list reads as "exactly these tags" to some and "any of" to others.
            raise QueryError(
                f"a list with {op!r} on {spec.name!r} is ambiguous: write {spec.name}:[a, b] for"
                f" any of, {spec.name}:a AND {spec.name}:b for all of, NOT {spec.name}:[a, b] "
                "for none of"
            )


def check_compare(spec: FieldSpec, op: str, value: Value | list) -> Value:
    """Validate ``spec op value`` and return the value typed for the field."""
    if isinstance(value, list | tuple):
        check_operator(spec, op, is_list=True)
        if not value:
            raise QueryError(f"the list for {spec.name!r} is empty; give at least one value")
        return tuple(coerce(spec, v) for v in value)
    check_operator(spec, op)
    return coerce(spec, value)


__all__ = [
    "DEFAULT_FIELDS",
    "INT32",
    "INT64",
    "FieldSpec",
    "FieldType",
    "check_compare",
    "check_operator",
    "coerce",
    "day_bounds",
    "extend_fields",
    "field_table",
    "lookup",
    "parse_datetime",
    "unique_specs",
]
