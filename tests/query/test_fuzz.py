"""Property tests: the parser never crashes, printing round-trips, and both compilers find
exactly what a plain-Python reading of the query finds."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import lancedb
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from imageindex.query import (
    And,
    Compare,
    FieldType,
    Has,
    Node,
    Not,
    Or,
    Prefix,
    QueryError,
    lookup,
    parse,
    to_text,
    validate,
)
from imageindex.query.fields import day_bounds, unique_specs
from imageindex.stores.lancedb import compile_lancedb
from imageindex.stores.opensearch import compile_opensearch

from .test_lancedb_compiler import FIELDS, make_table

SPECS = unique_specs(FIELDS)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------- never crashes

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=200)
FRAGMENTS = [
    "tags", "tags.user", "file_name", "uri", "width", "mtime", "size", "format", "quality",
    "widht", "HAS", "has", "NOT", "not", "AND", "and", "OR", "(", ")", ":", "=", "!=", "<", "<=",
    ">", ">=", "!", "[", "]", ",", "*", '"', "'", "\\", "\\u", "\\ud83d", "\\n", "d83d", " ",
    "\n", "\t", "cat", "猫", "é", "2026-01-01", "2026-13-01", "T12:00:00Z", "+02:00", "640",
    "-1", "1.5", "1e9", "99999999999", "%", "_", "\x00", "\ud800", "\u0301", "s3://b/",
]  # fmt: skip
SOUP = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)


def check_any(text: str) -> None:
    try:
        node = parse(text, fields=FIELDS)
    except QueryError as exc:
        # The error renders and encodes whatever the input held.
        str(exc).encode("utf-8")
        assert exc.message
        return
    assert validate(node, FIELDS) == node
    assert parse(to_text(node), fields=FIELDS) == node
    try:
        sql = compile_lancedb(node, fields=FIELDS)
        assert isinstance(sql, str) and sql
    except QueryError as exc:
        assert "control character" in exc.message
    json.dumps(compile_opensearch(node, fields=FIELDS))


@FUZZ
@given(ANY_TEXT)
def test_any_text_parses_or_raises_query_error(text):
    check_any(text)


@FUZZ
@given(SOUP)
def test_token_soup_parses_or_raises_query_error(text):
    check_any(text)


@st.composite
def mutated_queries(draw) -> str:
    # Valid queries with a few characters deleted or fragments inserted: near misses explore
    # the error paths far better than random soup, which almost never parses.
    text = to_text(draw(trees(comparisons())))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:i] + text[i + draw(st.integers(1, 3)) :]
        else:
            text = text[:i] + draw(st.sampled_from(FRAGMENTS)) + text[i:]
    return text


@FUZZ
@given(mutated_queries())
def test_mutated_queries_parse_or_raise_query_error(text):
    check_any(text)


@pytest.mark.parametrize(
    "text",
    ["(" * 5000, ")" * 5000, "NOT " * 1000, "tags:" + '"' * 3000, "[" * 3000, "\\" * 4000],
)
def test_pathological_inputs(text):
    check_any(text)


# ---------------------------------------------------------------------------- round trip

STRINGS = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
DATETIMES = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
)


def scalars(spec, strings) -> st.SearchStrategy:
    t = spec.type
    if t == FieldType.TAGS:
        return strings
    if t in (FieldType.TEXT, FieldType.KEYWORD):
        return strings | strings.map(Prefix)
    if t == FieldType.INT:
        return st.integers(*spec.int_range)
    if t == FieldType.FLOAT:
        return st.floats(allow_nan=False, allow_infinity=False)
    return st.dates() | DATETIMES


@st.composite
def comparisons(draw, strings=STRINGS) -> Compare:
    spec = draw(st.sampled_from(SPECS))
    ordered = spec.type in (FieldType.INT, FieldType.FLOAT, FieldType.DATETIME)
    op = draw(
        st.sampled_from([":", "=", "!=", "<", "<=", ">", ">="] if ordered else [":", "=", "!="])
    )
    one = scalars(spec, strings)
    may_list = op == ":" or (op in ("=", "!=") and spec.type != FieldType.TAGS)
    value = draw(
        st.lists(one, min_size=1, max_size=3).map(tuple)
        if may_list and draw(st.booleans())
        else one
    )
    return Compare(spec.name, op, value)


def trees(leaf) -> st.SearchStrategy:
    has = st.sampled_from(SPECS).map(lambda s: Has(s.name))
    return st.recursive(
        leaf | has,
        lambda kids: (
            kids.map(Not)
            | st.lists(kids, min_size=2, max_size=3).map(lambda xs: And(tuple(xs)))
            | st.lists(kids, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs)))
        ),
        max_leaves=12,
    )


@FUZZ
@given(trees(comparisons()))
def test_print_then_parse_gives_the_same_tree(node):
    assert validate(node, FIELDS) == node
    text = to_text(node)
    assert parse(text, fields=FIELDS) == node


# ---------------------------------------------------------------------------- semantics

# Values near the test rows, so that random queries find something.
WORDS = st.sampled_from([
    "cat", "Cat", "CAT", "dog", "animal", "favorite", "a_b", "axb", "100%", "%", "_", "it's",
    "'", "\\", "a\\b", "ä", "Ä", "ärger", "straße", "Müde", "müde", "猫", "jpg", ".JPG", "png",
    "JPEG", "PNG", "s3://b/", "s3://b/pets/", "S3://B/PETS/", "pets", "my_", "My_", "v1", "v2",
    "ok", "failed", "trunc", "r01", "r1", "fp-r01", "') OR 1=1 --", "",
])  # fmt: skip
DAYS = st.sampled_from([date(2025, 12, 31), date(2026, 1, 1), date(2026, 1, 2), date(2026, 3, 3)])
INSTANTS = st.sampled_from(
    [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 12, tzinfo=UTC),
     datetime(2026, 1, 1, 23, 59, 59, 999999, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)]
)  # fmt: skip
NUMBERS = st.sampled_from([0, 10, 50, 100, 480, 640, 1000, 1024, 5_000_000_000])


@st.composite
def near_comparisons(draw) -> Compare:
    node = draw(comparisons(strings=WORDS))
    spec = lookup(FIELDS, node.field)

    def near(v):
        if spec.type == FieldType.INT:
            return min(max(draw(NUMBERS), spec.int_range[0]), spec.int_range[1])
        if spec.type == FieldType.FLOAT:
            return draw(st.sampled_from([0.1, 0.5, 0.9, 0.7]))
        if spec.type == FieldType.DATETIME:
            return draw(DAYS | INSTANTS)
        return v

    value = (
        tuple(near(v) for v in node.value) if isinstance(node.value, tuple) else near(node.value)
    )
    return Compare(node.field, node.op, value)


def holds(node: Node, doc: dict) -> bool:
    """The meaning of a query, read directly off the docs."""
    if isinstance(node, And):
        return all(holds(i, doc) for i in node.items)
    if isinstance(node, Or):
        return any(holds(i, doc) for i in node.items)
    if isinstance(node, Not):
        return not holds(node.item, doc)
    spec = lookup(FIELDS, node.field)
    if isinstance(node, Has):
        return any(doc[c] not in (None, []) for c in spec.columns)
    if node.op == "!=":
        return not holds(Compare(node.field, "=", node.value), doc)
    values = node.value if isinstance(node.value, tuple) else (node.value,)
    return any(one(spec, node.op, v, doc[c]) for c in spec.columns for v in values)


def one(spec, op, v, have) -> bool:
    if have is None:
        return False
    if spec.type == FieldType.TAGS:
        return v in have
    if spec.type in (FieldType.TEXT, FieldType.KEYWORD):
        if isinstance(v, Prefix):
            return have.lower().startswith(v.text.lower()) if op == ":" else have.startswith(v.text)
        return v.lower() in have.lower() if op == ":" else have == v
    if isinstance(v, date) and not isinstance(v, datetime):
        start, end = day_bounds(v)
        end = end or datetime.max.replace(tzinfo=UTC)
        return {
            ":": start <= have < end, "=": start <= have < end, "<": have < start,
            ">=": have >= start, "<=": have < end, ">": have >= end,
        }[op]  # fmt: skip
    return {
        ":": have == v, "=": have == v, "<": have < v, "<=": have <= v, ">": have > v,
        ">=": have >= v,
    }[op]  # fmt: skip


DOCS = {row["id"]: row for row in make_table().to_pylist()}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return lancedb.connect(str(tmp_path_factory.mktemp("fuzz"))).create_table("d", make_table())


FUZZ_TREES = settings(max_examples=250, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip


@FUZZ_TREES
@given(node=trees(near_comparisons()))
def test_lancedb_compiler_finds_what_the_query_means(table, node):
    expected = {doc_id for doc_id, doc in DOCS.items() if holds(node, doc)}
    try:
        sql = compile_lancedb(node, fields=FIELDS)
    except QueryError as exc:
        assume("control character" not in exc.message)
        raise
    rows = table.search().where(sql).select(["id"]).limit(100).to_list()
    assert {r["id"] for r in rows} == expected, sql


@FUZZ_TREES
@given(node=trees(near_comparisons()))
def test_opensearch_compiler_finds_what_the_query_means_on_a_live_node(live_index, node):
    """The compiled body runs on the session's OpenSearch node (no Python model of it)."""
    expected = {doc_id for doc_id, doc in DOCS.items() if holds(node, doc)}
    body = compile_opensearch(node, fields=FIELDS)
    json.dumps(body)
    client, name = live_index
    resp = client.search(index=name, body={"query": body, "size": 100, "_source": False})
    assert {h["_id"] for h in resp["hits"]["hits"]} == expected, body
