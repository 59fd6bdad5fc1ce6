"""The query parser, printer and simple-form builder: what each construct parses to, and what
each mistake is told."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from imageindex.errors import ConfigError
from imageindex.query import (
    DEFAULT_FIELDS,
    And,
    Compare,
    FieldSpec,
    FieldType,
    Has,
    Not,
    Or,
    Prefix,
    QueryError,
    combine,
    extend_fields,
    from_filter,
    parse,
    simple_filter,
    to_text,
    validate,
)
from imageindex.query.parser import MAX_DEPTH, MAX_QUERY_LENGTH, MAX_TERMS
from imageindex.stores.base import Filter

DOCS = Path(__file__).resolve().parents[2] / "docs" / "query-language.md"


def C(field, op, value):  # noqa: N802 - reads like the node it builds
    return Compare(field, op, value)


CAT = C("tags", ":", "cat")
DOG = C("tags", ":", "dog")


# ---------------------------------------------------------------------------- structure


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tags:cat", CAT),
        ("  tags : cat  ", CAT),
        ("tags.ai:cat", C("tags.ai", ":", "cat")),
        ("TAGS.User:cat", C("tags.user", ":", "cat")),
        ("tags_user:cat", C("tags.user", ":", "cat")),
        ("path=s3://b/a.jpg", C("uri", "=", "s3://b/a.jpg")),
        ("filename:x", C("file_name", ":", "x")),
        ("version=v1", C("dataset_version", "=", "v1")),
        ("status != ok", C("status", "!=", "ok")),
        ("width>640", C("width", ">", 640)),
        ("width >= -5", C("width", ">=", -5)),
        ("height < +3", C("height", "<", 3)),
        ("size <= 10", C("size", "<=", 10)),
        ("size:10", C("size", ":", 10)),
        ("HAS tags.user", Has("tags.user")),
        ("has width", Has("width")),
        ("NOT HAS width", Not(Has("width"))),
        ("not tags:cat", Not(CAT)),
        ("NOT NOT tags:cat", Not(Not(CAT))),
        ("tags:cat AND tags:dog", And((CAT, DOG))),
        ("tags:cat and tags:dog And tags:cat", And((CAT, DOG, CAT))),
        ("tags:cat OR tags:dog", Or((CAT, DOG))),
        ("tags:cat or tags:dog", Or((CAT, DOG))),
        ("(tags:cat)", CAT),
        ("((tags:cat))", CAT),
        ("tags:[cat, dog]", C("tags", ":", ("cat", "dog"))),
        ("tags:[ cat ,dog ]", C("tags", ":", ("cat", "dog"))),
        ("tags:[cat]", C("tags", ":", ("cat",))),
        ("format=[JPEG, PNG]", C("format", "=", ("JPEG", "PNG"))),
        ("width:[640, 1024]", C("width", ":", (640, 1024))),
        ("uri=s3://b/cats/*", C("uri", "=", Prefix("s3://b/cats/"))),
        ('uri="s3://b/my cats/"*', C("uri", "=", Prefix("s3://b/my cats/"))),
        ("uri:[a/*, b]", C("uri", ":", (Prefix("a/"), "b"))),
        ('tags:"and"', C("tags", ":", "and")),
        ("tags:'NOT'", C("tags", ":", "NOT")),
        ("tags:android", C("tags", ":", "android")),
        ("tags:猫", C("tags", ":", "猫")),
        ("file_name:ärger.jpg", C("file_name", ":", "ärger.jpg")),
        ("tags:cat:dog", C("tags", ":", "cat:dog")),
        ("file_name:640", C("file_name", ":", "640")),
        ("tags:\n\tcat", CAT),
    ],
)
def test_parses(text, expected):
    assert parse(text) == expected


def test_precedence_not_and_or():
    # NOT binds tighter than AND, which binds tighter than OR.
    assert parse("NOT tags:cat AND tags:dog OR HAS tags.user") == Or(
        (And((Not(CAT), DOG)), Has("tags.user"))
    )
    assert parse("tags:cat OR tags:dog AND NOT HAS width") == Or(
        (CAT, And((DOG, Not(Has("width")))))
    )
    assert parse("(tags:cat OR tags:dog) AND HAS width") == And((Or((CAT, DOG)), Has("width")))
    assert parse("NOT (tags:cat OR tags:dog)") == Not(Or((CAT, DOG)))


def test_parentheses_keep_nesting():
    assert parse("(tags:cat AND tags:dog) AND HAS width") == And((And((CAT, DOG)), Has("width")))


# ---------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r'"say \"hi\""', 'say "hi"'),
        (r"'it\'s'", "it's"),
        ("'say \"hi\"'", 'say "hi"'),
        ('"it\'s"', "it's"),
        (r'"a\\b"', "a\\b"),
        (r'"a\nb\tc\rd"', "a\nb\tc\rd"),
        (r'"\u00e9t\u00C9"', "étÉ"),
        (r'"\ud83d\ude00"', "\U0001f600"),
        ('"😀"', "\U0001f600"),
        ('""', ""),
        ('"a b  c"', "a b  c"),
        ('"(x) AND y"', "(x) AND y"),
        ('"*"', "*"),
        ("'%_'", "%_"),
    ],
)
def test_quoted_strings(text, value):
    assert parse(f"tags:{text}") == C("tags", ":", value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2026-01-31", date(2026, 1, 31)),
        ("2026-01-31T12:00:00Z", datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31t12:00:00z", datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31T12:00", datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31T12:00:00+02:00", datetime(2026, 1, 31, 10, tzinfo=UTC)),
        ("2026-01-31T12:00:00-0130", datetime(2026, 1, 31, 13, 30, tzinfo=UTC)),
        ("2026-01-31T12:00:00.5Z", datetime(2026, 1, 31, 12, 0, 0, 500000, tzinfo=UTC)),
        ('"2026-01-31 12:00:00.123456"', datetime(2026, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)),
        ("0001-01-01", date(1, 1, 1)),
    ],
)
def test_dates(text, value):
    node = parse(f"mtime >= {text}")
    assert node == C("mtime", ">=", value)
    got = node.value
    assert type(got) is type(value)
    if isinstance(got, datetime):
        assert got.utcoffset() == timedelta(0)


def test_float_field_declared_by_a_store():
    fields = extend_fields(FieldSpec("quality", FieldType.FLOAT, ("quality_score",)))
    assert parse("quality >= 0.5", fields=fields) == C("quality", ">=", 0.5)
    assert parse("quality < 1e-3", fields=fields) == C("quality", "<", 0.001)
    assert parse("quality:2", fields=fields) == C("quality", ":", 2.0)
    with pytest.raises(QueryError, match="not a number"):
        parse("quality > high", fields=fields)
    with pytest.raises(QueryError, match="unknown field 'quality'"):
        parse("quality > 0.5")


def test_field_specs_are_checked():
    with pytest.raises(ConfigError, match="plain identifier"):
        FieldSpec("evil", FieldType.TEXT, ("x) OR (1=1",))
    with pytest.raises(ConfigError, match="invalid"):
        FieldSpec("Not", FieldType.TEXT, ("x",))
    with pytest.raises(ConfigError, match="type 'blob' is unknown"):
        FieldSpec("x", "blob", ("x",))
    with pytest.raises(ConfigError, match="declared twice"):
        extend_fields(FieldSpec("path", FieldType.TEXT, ("p",)))


# ---------------------------------------------------------------------------- errors


def error_of(text: str, **kw) -> QueryError:
    with pytest.raises(QueryError) as info:
        parse(text, **kw)
    return info.value


def caret_column(err: QueryError) -> int:
    lines = str(err).split("\n")
    return len(lines[-1]) - len("  ^") + 1


@pytest.mark.parametrize(
    ("text", "column", "pattern"),
    [
        ("tags:cat tags:dog", 10, r"expected AND or OR at column 10, found 'tags'"),
        ("tags:cat (tags:dog)", 10, r"expected AND or OR at column 10"),
        ("(tags:cat", 10, r"expected '\)' at column 10 to close the '\(' at column 1"),
        ("tags:cat)", 9, r"unmatched '\)' at column 9"),
        ("widht > 5", 1, r"unknown field 'widht' \(did you mean 'width'\?\); valid fields: "),
        ("cat", 1, r"unknown field 'cat'; valid .*To find a tag write tags:cat"),
        ("HAS colour", 5, r"unknown field 'colour'"),
        ("width > abc", 9, r"field 'width' holds whole numbers; 'abc' is not one"),
        ("width > 1.5", 9, r"'1.5' is not one"),
        ("width > 9999999999", 9, r"from -2147483648 to 2147483647"),
        ("tags > 3", 6, r"operator '>' compares numbers and dates, but 'tags' holds tags"),
        ("file_name < b", 11, r"'file_name' holds text; use ':', '=' or '!='"),
        ("mtime > 2026-13-01", 9, r"not a valid date or time \(month must be in 1..12\)"),
        ("mtime > yesterday", 9, r"field 'mtime' holds dates; 'yesterday' is not one"),
        ("mtime > 2026-01-01T25:00Z", 9, r"not a valid date or time"),
        ("tags=[a, b]", 6, r"a list with '=' on 'tags' is ambiguous"),
        ("tags!=[a, b]", 7, r"ambiguous.*NOT tags:\[a, b\] for none of"),
        ("width > [1, 2]", 9, r"operator '>' takes one value, not a list"),
        ("tags:[]", 6, r"the list at column 6 is empty"),
        ("tags:[a, [b]]", 10, r"lists cannot be nested"),
        ("tags:[a b]", 9, r"expected ',' or ']' at column 9"),
        ("tags:[a,", 9, r"expected a value after ':' at the end of the query"),
        ("tags:cat,dog", 9, r"a list needs brackets: tags:\[a, b\]"),
        ("tags:", 6, r"expected a value after ':' at the end"),
        ("tags: AND tags:dog", 7, r"found the keyword 'AND'; .* quote it: \"AND\""),
        ("tags:not", 6, r"found the keyword 'not'"),
        ("tags:(cat)", 6, r"expected a value after ':' at column 6, found '\('"),
        ("file_name:a&b", 12, r"unexpected '&' at column 12 after the value 'a'; put values"),
        ("file_name:100%", 14, r"unexpected '%'"),
        ("tags:x*y", 8, r"'\*' only works once, at the end of a value"),
        ("tags:x**", 8, r"'\*' only works once"),
        ("tags:x*", 6, r"prefix match \(value\*\) works on text fields only; tags match whole"),
        ("width:5*", 7, r"prefix match"),
        ('tags:"abc', 6, r"the string starting at column 6 is never closed; add a closing \""),
        ("tags:'abc\\'", 6, r"never closed; add a closing '"),
        (r'tags:"\q"', 7, r"unknown escape \\ followed by 'q'"),
        (r'tags:"\u12"', 7, r"\\u needs four hex digits"),
        (r'tags:"\ud83d"', 7, r"high surrogate without its low half"),
        (r'tags:"\ude00"', 7, r"lone low surrogate"),
        ("tags:cat AND", 13, r"expected a condition .* found the end of the query"),
        ("tags:cat OR OR tags:dog", 13, r"expected a condition .* found 'OR'"),
        ("AND tags:cat", 1, r"expected a condition .* found 'AND'"),
        ("NOT", 4, r"expected a condition"),
        ("HAS", 4, r"expected a field name after HAS"),
        ("HAS NOT", 5, r"expected a field name after HAS"),
        ("tags cat", 6, r"expected an operator \(: = != < <= > >=\) after field 'tags'"),
        ("tags == cat", 7, r"expected a value after '=' at column 7, found '='"),
        ("tags:cat && tags:dog", 10, r"found '&'; write AND"),
        ("tags:cat || tags:dog", 10, r"found '\|'; write OR"),
        ("!tags:cat", 1, r"found '!'; write NOT"),
        ('"tags":cat', 1, r"found '\"' \(a quoted string\)"),
        ("()", 2, r"expected a condition .* found '\)'"),
        ("tags:cat\x00", 9, r"U\+0000"),
        ("", 1, r"the query is empty"),
        ("   \n ", 1, r"the query is empty"),
    ],
)
def test_errors_say_what_and_where(text, column, pattern):
    err = error_of(text)
    assert re.search(pattern, err.message), err.message
    assert err.column == column, str(err)
    assert caret_column(err) == column, str(err)
    # The rendered error holds the message, the query line, and the caret line.
    assert str(err).startswith(err.message)


def test_error_on_a_later_line():
    err = error_of("tags:cat AND\n  widht > 5")
    assert (err.line, err.column) == (2, 3)
    assert "line 2" not in err.message  # unknown-field messages carry no location text
    assert str(err).split("\n")[1:] == ["    widht > 5", "    ^"]
    err = error_of("tags:cat\n tags:dog")
    assert "line 2, column 2" in err.message


def test_caret_under_wide_characters():
    err = error_of("tags:猫猫 x")
    assert err.column == 9
    shown, caret = str(err).split("\n")[1:]
    # Each CJK character takes two terminal columns.
    assert caret.index("^") == shown.index("x") + 2


@pytest.mark.parametrize("text", ["tags:x \ud800 AND", "file_name:a&\ud800", "\ud800:x"])
def test_error_display_is_safe_for_any_text(text):
    err = error_of(text)
    assert "\ud800" not in str(err)
    str(err).encode("utf-8")


def test_query_error_is_a_config_error():
    assert issubclass(QueryError, ConfigError)


# ---------------------------------------------------------------------------- limits


def test_length_limit():
    ok = "tags:" + "a" * (MAX_QUERY_LENGTH - 5)
    assert parse(ok) == C("tags", ":", "a" * (MAX_QUERY_LENGTH - 5))
    err = error_of(ok + "a")
    assert f"the limit is {MAX_QUERY_LENGTH}" in err.message


def test_depth_limit():
    ok = "(" * MAX_DEPTH + "tags:cat" + ")" * MAX_DEPTH
    assert parse(ok) == CAT
    err = error_of("(" * (MAX_DEPTH + 1) + "tags:cat" + ")" * (MAX_DEPTH + 1))
    assert f"deeper than {MAX_DEPTH} levels" in err.message
    assert err.column == MAX_DEPTH + 1
    assert "deeper" in error_of("NOT " * (MAX_DEPTH + 1) + "tags:cat").message
    # Far past the limit: still a QueryError, not a RecursionError.
    assert "deeper" in error_of("(" * 2000).message
    assert "deeper" in error_of("NOT " * 900 + "tags:cat").message


def test_terms_limit():
    parse(" OR ".join(["tags:cat"] * MAX_TERMS))
    parse("tags:[" + ", ".join(["a"] * MAX_TERMS) + "]")
    assert "more than 200" in error_of(" OR ".join(["tags:cat"] * (MAX_TERMS + 1))).message
    assert "more than 200" in error_of("tags:[" + ",".join(["a"] * (MAX_TERMS + 1)) + "]").message
    assert "more than 200" in error_of(" OR ".join(["HAS width"] * (MAX_TERMS + 1))).message


def test_non_string_input():
    with pytest.raises(QueryError, match="must be a string"):
        parse(b"tags:cat")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- printing


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("tags:cat", "tags:cat"),
        ("TAGS : cat and width>=640", "tags:cat AND width >= 640"),
        ("path=s3://b/x/*", "uri = s3://b/x/*"),
        ("tags:'it\\'s'", 'tags:"it\'s"'),
        ('tags:"a\\nb"', 'tags:"a\\nb"'),
        ('tags:"\\u0001"', 'tags:"\\u0001"'),
        ("tags:[a, 'b c']", 'tags:[a, "b c"]'),
        ('uri:"my dir/"*', 'uri:"my dir/"*'),
        ('tags:""', 'tags:""'),
        ('tags:"Or"', 'tags:"Or"'),
        ("mtime >= 2026-01-01T12:00:00+02:00", "mtime >= 2026-01-01T10:00:00Z"),
        ("mtime < 2026-01-01T12:00:00.000100Z", "mtime < 2026-01-01T12:00:00.000100Z"),
        ("mtime:2026-01-01", "mtime:2026-01-01"),
        ("NOT (tags:cat OR tags:dog)", "NOT (tags:cat OR tags:dog)"),
        ("NOT NOT HAS width", "NOT NOT HAS width"),
        ("(tags:cat AND tags:dog) AND HAS width", "(tags:cat AND tags:dog) AND HAS width"),
        ("tags:cat AND tags:dog OR HAS width", "tags:cat AND tags:dog OR HAS width"),
        ("(tags:cat OR tags:dog) OR HAS width", "(tags:cat OR tags:dog) OR HAS width"),
        ("(tags:cat OR tags:dog) AND HAS width", "(tags:cat OR tags:dog) AND HAS width"),
    ],
)
def test_to_text(text, printed):
    node = parse(text)
    assert to_text(node) == printed
    assert parse(printed) == node


def test_nodes_check_their_shape():
    with pytest.raises(TypeError, match="at least two"):
        And((CAT,))
    with pytest.raises(TypeError, match="unknown operator"):
        Compare("tags", "~", "x")
    assert And([CAT, DOG]) == And((CAT, DOG))
    assert Compare("tags", ":", ["a", "b"]).value == ("a", "b")


def test_validate_normalizes_hand_built_trees():
    node = And((C("path", "=", "s3://x"), C("WIDTH", ">", "640"), C("mtime", "<", "2026-01-01")))
    assert validate(node) == And(
        (C("uri", "=", "s3://x"), C("width", ">", 640), C("mtime", "<", date(2026, 1, 1)))
    )
    naive = datetime(2026, 1, 1, 12)
    assert validate(C("mtime", "<", naive)).value == naive.replace(tzinfo=UTC)
    plus2 = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert validate(C("mtime", "<", plus2)).value.tzinfo == UTC
    for bad, msg in [
        (C("nope", ":", "x"), "unknown field"),
        (C("width", ">", "x"), "whole numbers"),
        (C("width", ">", True), "whole numbers"),
        (C("tags", ":", 5), "not a string"),
        (C("tags", ">", "x"), "compares numbers"),
        (C("tags", ":", ()), "empty"),
        (C("tags", ":", "\ud800"), "not valid Unicode"),
        (Not("tags:cat"), "not a query node"),  # type: ignore[arg-type]
        ("tags:cat", "not a query node"),
    ]:
        with pytest.raises(QueryError, match=msg):
            validate(bad)  # type: ignore[arg-type]
    deep = CAT
    for _ in range(500):
        deep = Not(deep)
    with pytest.raises(QueryError, match="nested deeper"):
        validate(deep)
    with pytest.raises(QueryError, match="nested deeper"):
        to_text(deep)
    with pytest.raises(QueryError, match="the limit is 200"):
        validate(Or(tuple([CAT] * (MAX_TERMS + 1))))


# ---------------------------------------------------------------------------- simple forms


def test_simple_filter_builds_the_same_ast_as_the_language():
    node = simple_filter(
        tags_any=["cat", "dog"],
        tags_all=["pet", "pet", "cute"],
        tags_exclude=["blurry"],
        file_name="holiday",
        path_prefix="s3://b/2026/",
        mtime_from="2026-01-01",
        mtime_to=date(2026, 1, 31),
        versions=["v1"],
    )
    assert node == parse(
        "tags:[cat, dog] AND tags:pet AND tags:cute AND NOT tags:blurry AND file_name:holiday"
        " AND uri=s3://b/2026/* AND mtime >= 2026-01-01 AND mtime <= 2026-01-31"
        " AND dataset_version=v1"
    )


def test_simple_filter_edges():
    assert simple_filter() is None
    assert simple_filter(tags_any=[], tags_all=[], file_name="") is None
    assert simple_filter(tags_any=["cat"]) == CAT
    assert simple_filter(versions=["v1", "v2", "v1"]) == C("dataset_version", "=", ("v1", "v2"))
    assert simple_filter(mtime_from=0) == C("mtime", ">=", datetime(1970, 1, 1, tzinfo=UTC))
    assert simple_filter(status="ok", uris=["a"]) == And(
        (C("uri", "=", "a"), C("status", "=", "ok"))
    )
    for kwargs, msg in [
        ({"tags_any": "cat"}, "must be a list of strings, not the string 'cat'"),
        ({"tags_all": [1]}, "must hold strings"),
        ({"versions": []}, r"versions=\[\] matches nothing"),
        ({"mtime_from": "last week"}, "not one"),
        ({"mtime_to": [2026]}, "must be a date"),
        ({"path_prefix": 5}, "must be a string"),
    ]:
        with pytest.raises(QueryError, match=msg):
            simple_filter(**kwargs)


def test_from_filter():
    assert from_filter(Filter(status=None)) is None
    assert from_filter(Filter(tags_any=["cat"], versions=["v1"])) == parse(
        "tags:cat AND dataset_version=v1 AND status=ok"
    )


def test_combine():
    assert combine() is None
    assert combine(None, None) is None
    assert combine(CAT) == CAT
    assert combine(CAT, None, DOG) == And((CAT, DOG))
    # Top-level Ands are flattened; Ors stay grouped.
    assert combine(And((CAT, DOG)), Or((CAT, DOG))) == And((CAT, DOG, Or((CAT, DOG))))
    typed = parse("width > 5 OR HAS tags.user")
    assert to_text(combine(typed, simple_filter(tags_any=["cat"]))) == (
        "(width > 5 OR HAS tags.user) AND tags:cat"
    )


# ---------------------------------------------------------------------------- docs


def test_docs_list_every_field():
    text = DOCS.read_text()
    rows = {
        m[1]: (m[2], m[3], m[4])
        for m in re.finditer(r"^\| `([a-z_.]+)` \| ([^|]*) \| (\w+) \| ([^|]*) \|", text, re.M)
    }
    specs = {s.name: s for s in DEFAULT_FIELDS.values()}
    assert set(rows) >= set(specs), set(specs) - set(rows)
    for name, spec in specs.items():
        aliases, kind, columns = rows[name]
        assert kind == spec.type.value, name
        assert re.findall(r"`([a-z_.]+)`", columns) == list(spec.columns), name
        assert re.findall(r"`([a-z_.]+)`", aliases) == list(spec.aliases), name
    for limit in (MAX_QUERY_LENGTH, MAX_DEPTH, MAX_TERMS):
        assert f"**{limit}" in text
