"""The LanceDB compiler against a real LanceDB table: every construct, NULLs, and injection
attempts, checked by the exact set of ids each query finds, with and without scalar indexes."""

from __future__ import annotations

from datetime import UTC, datetime

import lancedb
import pyarrow as pa
import pytest

from imageindex.query import (
    FieldSpec,
    FieldType,
    QueryError,
    extend_fields,
    from_filter,
    parse,
    simple_filter,
)
from imageindex.stores.base import Filter
from imageindex.stores.lancedb import (
    SCALAR_INDEXES,
    compile_filter,
    compile_lancedb,
    like_escape,
    literal,
)
from imageindex.stores.schema import document_schema

DIM = 4
FIELDS = extend_fields(FieldSpec("quality", FieldType.FLOAT, ("quality",)))


def ts(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# id: file_name, uri, tags_ai, tags_user, width, height, format, size, mtime, extra columns
ROWS = {
    "r01": ("cat.jpg", "s3://b/pets/cat.jpg", ["cat", "animal"], None, 640, 480, "JPEG", 1000,
            ts(2026, 1, 1), {"quality": 0.9}),
    "r02": ("My_Cat.PNG", "s3://b/pets/My_Cat.PNG", ["cat"], ["favorite"], 1024, 768, "PNG",
            2000, ts(2026, 1, 1, 23, 59, 59, 999999), {"quality": 0.5}),
    "r03": ("dog.jpg", "s3://b/pets/dog.jpg", ["dog", "animal"], [], 800, 600, "JPEG", 3000,
            ts(2026, 1, 2), {"quality": 0.1}),
    "r04": ("broken.jpg", "s3://b/broken.jpg", None, None, None, None, None, 10,
            ts(2025, 12, 31, 23), {"status": "failed", "error": "decode: truncated file",
                                   "mode": None}),
    "r05": ("it's.jpg", "s3://b/quotes/it's.jpg", ["it's"], ["') OR 1=1 --"], 100, 100, "JPEG",
            500, ts(2026, 2, 1, 12), {}),
    "r06": ("100%_real.png", "s3://b/pct/100%_real.png", ["100%"], ["a_b"], 200, 100, "PNG",
            600, ts(2026, 2, 15), {}),
    "r07": ("back\\slash.gif", "s3://b/bs/back\\slash.gif", ["a\\b"], None, 50, 50, "GIF", 700,
            ts(2026, 3, 1), {}),
    "r08": ("Ärger.jpg", "s3://b/de/Ärger.jpg", ["straße"], ["Müde"], 300, 200, "JPEG", 800,
            ts(2026, 3, 2), {}),
    "r09": ("猫.webp", "s3://b/jp/猫.webp", ["猫"], ["cat"], 400, 400, "WEBP", 900,
            ts(2026, 3, 3), {}),
    "r10": ("cat.jpg", "s3://b/v2/cat.jpg", ["cat"], None, 640, 480, "JPEG", 1000,
            ts(2026, 1, 1), {"dataset_version": "v2"}),
    "r11": ("axb.png", "s3://b/misc/axb.png", ["axb"], ["dog"], 2000, 1000, "PNG",
            5_000_000_000, None, {}),
    "r12": (None, "s3://b/misc/noname", [], None, 10, 10, "PNG", None, ts(2026, 4, 1),
            {"key": None, "fingerprint": None}),
}  # fmt: skip
ALL = set(ROWS)


def make_table() -> pa.Table:
    rows = []
    for doc_id, (name, uri, ai, user, w, h, fmt, size, mtime, extra) in ROWS.items():
        row = {
            "id": doc_id,
            "dataset_id": "ds",
            "dataset_version": "v1",
            "uri": uri,
            "key": uri.split("/", 3)[3],
            "file_name": name,
            "size": size,
            "mtime": mtime,
            "fingerprint": f"fp-{doc_id}",
            "status": "ok",
            "error": None,
            "width": w,
            "height": h,
            "format": fmt,
            "mode": "RGB",
            "tags_ai": ai,
            "tags_user": user,
            "model": "m",
            "dim": DIM,
            "vector": [1.0, 0.0, 0.0, 0.0],
        }
        row.update({k: v for k, v in extra.items() if k != "quality"})
        row["quality"] = extra.get("quality")
        rows.append(row)
    schema = document_schema(DIM).append(pa.field("quality", pa.float64()))
    return pa.Table.from_pylist(rows, schema=schema)


@pytest.fixture(scope="module", params=["plain", "indexed"])
def table(request, tmp_path_factory):
    db = lancedb.connect(str(tmp_path_factory.mktemp("lance")))
    tbl = db.create_table("docs", make_table())
    if request.param == "indexed":
        # The store's scalar indexes answer some predicates (IN, array_has, NOT) on their own;
        # results must not change.
        for column, config in SCALAR_INDEXES.items():
            tbl.create_index(column, config=config())
    return tbl


def ids(tbl, where: str) -> set[str]:
    rows = tbl.search().where(where).select(["id"]).limit(1000).to_list()
    return {r["id"] for r in rows}


def run(tbl, query: str) -> set[str]:
    return ids(tbl, compile_lancedb(parse(query, fields=FIELDS), fields=FIELDS))


def S(*nums: int) -> set[str]:  # noqa: N802 - a set literal of row ids
    return {f"r{n:02d}" for n in nums}


CASES = [
    # tags
    ("tags:cat", S(1, 2, 9, 10)),
    ("tags.ai:cat", S(1, 2, 10)),
    ("tags.user:cat", S(9)),
    ("tags:Cat", set()),
    ("tags:[dog, favorite]", S(2, 3, 11)),
    ("tags.user:[dog, favorite]", S(2, 11)),
    ("tags:animal AND tags:dog", S(3)),
    ("NOT tags:cat", ALL - S(1, 2, 9, 10)),
    ("tags != cat", ALL - S(1, 2, 9, 10)),
    ("NOT tags:[cat, dog]", S(4, 5, 6, 7, 8, 12)),
    ("NOT tags.user:cat", ALL - S(9)),
    ("tags:straße", S(8)),
    ("tags.user:Müde", S(8)),
    ("tags.user:müde", set()),
    ("tags:猫", S(9)),
    # HAS
    ("HAS tags.user", S(2, 5, 6, 8, 9, 11)),
    ("NOT HAS tags.user", S(1, 3, 4, 7, 10, 12)),
    ("HAS tags", ALL - S(4, 12)),
    ("NOT HAS tags", S(4, 12)),
    ("NOT HAS tags.ai", S(4, 12)),
    ("HAS width", ALL - S(4)),
    ("NOT HAS width", S(4)),
    ("NOT HAS format", S(4)),
    ("NOT HAS file_name", S(12)),
    ("NOT HAS mtime", S(11)),
    ("NOT HAS key", S(12)),
    ("HAS error", S(4)),
    ("NOT NOT HAS error", S(4)),
    # text
    ("file_name:cat", S(1, 2, 10)),
    ("file_name:CAT", S(1, 2, 10)),
    ("filename:.JPG", S(1, 3, 4, 5, 8, 10)),
    ("file_name=cat.jpg", S(1, 10)),
    ("file_name=CAT.JPG", set()),
    ("file_name:ärger", S(8)),
    ("file_name:ÄRGER", S(8)),
    ("file_name:猫", S(9)),
    ("NOT file_name:cat", ALL - S(1, 2, 10)),
    ("file_name != cat.jpg", ALL - S(1, 10)),
    ("file_name:my_*", S(2)),
    ("file_name=my_*", set()),
    ("file_name=My_*", S(2)),
    ("error:TRUNCATED", S(4)),
    # keyword
    ("uri=s3://b/pets/*", S(1, 2, 3)),
    ("uri:S3://B/PETS/*", S(1, 2, 3)),
    ("uri=S3://B/PETS/*", set()),
    ("path:pets", S(1, 2, 3)),
    ("NOT uri:pets", ALL - S(1, 2, 3)),
    ("key:pets/", S(1, 2, 3)),
    ("uri:[pets/*, s3://b/de/*]", S(8)),
    ("uri:[s3://b/pets/d*, s3://b/de/*]", S(3, 8)),
    ("format:jpeg", S(1, 3, 5, 8, 10)),
    ("format=JPEG", S(1, 3, 5, 8, 10)),
    ("format=jpeg", set()),
    ("format=[PNG, GIF]", S(2, 6, 7, 11, 12)),
    ("format != JPEG", S(2, 4, 6, 7, 9, 11, 12)),
    ("format != [JPEG, PNG]", S(4, 7, 9)),
    ("status=failed", S(4)),
    ("status != ok", S(4)),
    ("dataset_version=v2", S(10)),
    ("version=[v1]", ALL - S(10)),
    ("id=r05", S(5)),
    ("id:[r01, r02]", S(1, 2)),
    ("fingerprint=fp-r01", S(1)),
    ("NOT HAS fingerprint", S(12)),
    ("model=m AND dataset_id=ds", ALL),
    # numbers
    ("width >= 640", S(1, 2, 3, 10, 11)),
    ("width > 640", S(2, 3, 11)),
    ("width < 100", S(7, 12)),
    ("width <= 100", S(5, 7, 12)),
    ("width:640", S(1, 10)),
    ("width = [640, 800]", S(1, 3, 10)),
    ("width != 640", ALL - S(1, 10)),
    ("width != [640, 800]", ALL - S(1, 3, 10)),
    ("NOT width > 640", ALL - S(2, 3, 11)),
    ("size > 4294967296", S(11)),
    ("size >= -9223372036854775807", ALL - S(12)),
    ("size < 9223372036854775807", ALL - S(12)),
    ("height >= 480 AND width < 1024", S(1, 3, 10)),
    ("quality >= 0.5", S(1, 2)),
    ("quality:[0.9, 0.1]", S(1, 3)),
    ("NOT quality < 0.5", ALL - S(3)),
    # dates
    ("mtime >= 2026-01-01", ALL - S(4, 11)),
    ("mtime:2026-01-01", S(1, 2, 10)),
    ("mtime = 2026-01-01", S(1, 2, 10)),
    ("mtime <= 2026-01-01", S(1, 2, 4, 10)),
    ("mtime < 2026-01-01", S(4)),
    ("mtime > 2026-01-01", S(3, 5, 6, 7, 8, 9, 12)),
    ("mtime != 2026-01-01", ALL - S(1, 2, 10)),
    ("mtime < 2026-01-01T12:00:00Z", S(1, 4, 10)),
    ("mtime >= 2026-01-01T23:59:59.999999Z", S(2, 3, 5, 6, 7, 8, 9, 12)),
    ("mtime = 2026-01-01T23:59:59.999999Z", S(2)),
    ("mtime >= 2026-01-02T01:00:00+01:00", S(3, 5, 6, 7, 8, 9, 12)),
    ('mtime < "2026-01-01 12:00"', S(1, 4, 10)),
    ("mtime:[2026-01-02, 2026-03-03]", S(3, 9)),
    ("mtime = [2026-01-01T00:00:00Z, 2026-01-02T00:00:00Z]", S(1, 3, 10)),
    ("mtime <= 9999-12-31", ALL - S(11)),
    ("mtime > 9999-12-31", set()),
    ("mtime >= 0001-01-01", ALL - S(11)),
    # boolean structure
    ("(tags:cat OR tags:dog) AND NOT HAS tags.user", S(1, 3, 10)),
    ("NOT (tags:cat OR format:png)", S(3, 4, 5, 7, 8)),
    ("NOT NOT tags:cat", S(1, 2, 9, 10)),
    ("tags:cat AND NOT HAS tags.user OR width < 60", S(1, 7, 10, 12)),
    ("NOT (width > 100 AND tags:animal)", ALL - S(1, 3)),
    ("NOT (NOT width > 100 OR NOT HAS tags.user)", S(2, 6, 8, 9, 11)),
    # injection attempts: each must match literally, or nothing
    ('tags:"\') OR 1=1 --"', S(5)),
    ('tags.user:"\') OR 1=1 --"', S(5)),
    ('file_name:"\') OR 1=1 --"', set()),
    ("tags:\"x' OR 'a'='a\"", set()),
    ('tags:"it\'s"', S(5)),
    ("tags:'it\\'s'", S(5)),
    ('file_name:"\'"', S(5)),
    ('uri="s3://b/quotes/it\'s.jpg"', S(5)),
    ("tags:'a\\\\b'", S(7)),
    ('file_name:"\\\\"', S(7)),
    ('uri:"s3://b/bs/back\\\\"*', S(7)),
    ('tags:"100%"', S(6)),
    ('tags:"%"', set()),
    ('tags:"a_b"', S(6)),
    ('file_name:"%"', S(6)),
    ('file_name:"_"', S(2, 6)),
    ('file_name:"a_b"', set()),
    ('file_name:"%%"', set()),
    ('uri="s3://b/pct/100%"*', S(6)),
    ('uri="s3://b/pct/100_"*', set()),
    ('uri="s3://b/%"*', set()),
    ('file_name:"\\u0025"', S(6)),
    ("file_name:\"' OR ''='\"", set()),
    ('tags:"\'); DROP TABLE docs; --"', set()),
]


@pytest.mark.parametrize(("query", "expected"), CASES, ids=[c[0] for c in CASES])
def test_matches(table, query, expected):
    assert run(table, query) == expected


def test_table_survives(table):
    assert table.count_rows() == len(ROWS)


@pytest.mark.parametrize(
    ("query", "sql"),
    [
        ("tags:cat", "(array_has(tags_ai, 'cat') OR array_has(tags_user, 'cat'))"),
        ("tags.ai:[a, b]", "array_has_any(tags_ai, ['a', 'b'])"),
        ("file_name:Cat_1", "lower(file_name) LIKE '%cat\\_1%' ESCAPE '\\'"),
        ('file_name:"50%\\\\"', "lower(file_name) LIKE '%50\\%\\\\%' ESCAPE '\\'"),
        ("uri=s3://b/x/*", "uri LIKE 's3://b/x/%' ESCAPE '\\'"),
        ("uri:S3://B/*", "lower(uri) LIKE 's3://b/%' ESCAPE '\\'"),
        ("format=[JPEG, PNG]", "format IN ('JPEG', 'PNG')"),
        ("width >= 640", "width >= 640"),
        ("width:[1, 2]", "width IN (1, 2)"),
        ("mtime >= 2026-01-01", "mtime >= TIMESTAMP '2026-01-01T00:00:00Z'"),
        ("mtime < 2026-01-01T12:00:00Z", "mtime < TIMESTAMP '2026-01-01T12:00:00Z'"),
        (
            "mtime:2026-01-01",
            "(mtime >= TIMESTAMP '2026-01-01T00:00:00Z' AND mtime < "
            "TIMESTAMP '2026-01-02T00:00:00Z')",
        ),
        ("HAS tags.user", "(tags_user IS NOT NULL AND array_length(tags_user) > 0)"),
        ("NOT HAS tags.user", "(tags_user IS NULL OR array_length(tags_user) = 0)"),
        ("NOT HAS width", "width IS NULL"),
        ("HAS width", "width IS NOT NULL"),
        ("NOT width > 5", "NOT (width IS NOT NULL AND width > 5)"),
        ("NOT uri:x", "NOT (lower(uri) LIKE '%x%' ESCAPE '\\')"),
        ("status != ok", "NOT (status IS NOT NULL AND status = 'ok')"),
        (
            "NOT tags.ai:cat",
            "NOT (tags_ai IS NOT NULL AND array_has(tags_ai, 'cat'))",
        ),
        (
            "tags.ai:a AND (width > 1 OR HAS height)",
            "(array_has(tags_ai, 'a')) AND ((width > 1) OR (height IS NOT NULL))",
        ),
        (
            'tags:"\') OR 1=1 --"',
            "(array_has(tags_ai, ''') OR 1=1 --') OR array_has(tags_user, ''') OR 1=1 --'))",
        ),
    ],
)
def test_sql(query, sql):
    assert compile_lancedb(parse(query)) == sql


def test_tag_filters_use_the_label_list_index(tmp_path):
    tbl = lancedb.connect(str(tmp_path)).create_table("docs", make_table())
    for column in ("tags_ai", "tags_user"):
        tbl.create_index(column, config=SCALAR_INDEXES[column]())
    plan = tbl.to_lance().scanner(filter=compile_lancedb(parse("tags:cat"))).explain_plan()
    assert "ScalarIndexQuery" in plan


def test_control_characters_are_refused_with_a_query_error():
    node = parse('tags:"a\\nb"')
    with pytest.raises(QueryError, match="control character"):
        compile_lancedb(node)


def test_literal_is_the_only_way_in():
    assert literal("it's") == "'it''s'"
    assert literal(5) == "5"
    assert literal(0.25) == "0.25"
    assert literal(ts(2026, 1, 1)) == "TIMESTAMP '2026-01-01T00:00:00Z'"
    assert literal(("a", "b'")) == "['a', 'b''']"
    for bad in (True, None, float("nan"), object()):
        with pytest.raises(QueryError):
            literal(bad)
    assert like_escape("a%b_c\\d") == "a\\%b\\_c\\\\d"


def test_hand_built_trees_are_validated():
    from imageindex.query import Compare

    with pytest.raises(QueryError, match="unknown field"):
        compile_lancedb(Compare("tags_ai) OR (1", ":", "x"))
    with pytest.raises(QueryError, match="whole numbers"):
        compile_lancedb(Compare("width", ">", "1; DROP TABLE x"))
    assert compile_lancedb(Compare("path", "=", "a")) == "uri = 'a'"


def test_simple_filter_on_the_table(table):
    node = simple_filter(
        tags_any=["cat", "dog"],
        tags_exclude=["favorite"],
        path_prefix="s3://b/pets/",
        mtime_to="2026-01-01",
    )
    assert ids(table, compile_lancedb(node)) == S(1)
    assert ids(table, compile_lancedb(simple_filter(file_name="CAT", versions=["v1"]))) == S(1, 2)
    node = simple_filter(mtime_from=ts(2026, 3, 1), mtime_to=ts(2026, 3, 2))
    assert ids(table, compile_lancedb(node)) == S(7, 8)


@pytest.mark.parametrize(
    "flt",
    [
        Filter(tags_any=["cat"], versions=["v1"]),
        Filter(tags_all=["cat", "favorite"]),
        Filter(tags_exclude=["cat", "dog"]),
        Filter(tags_any=["cat", "dog"], tags_exclude=["favorite"], status=None),
        Filter(uris=["s3://b/pets/cat.jpg", "s3://b/broken.jpg"], status=None),
        Filter(status="failed"),
    ],
)
def test_same_results_as_the_store_filter(table, flt):
    assert ids(table, compile_lancedb(from_filter(flt))) == ids(table, compile_filter(flt))
