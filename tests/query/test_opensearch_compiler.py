"""The OpenSearch compiler: golden request bodies, and the same result sets as the LanceDB
compiler when the bodies are evaluated (by a small model of OpenSearch's query semantics) over
the rows the LanceDB tests use."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from imageindex.query import (
    Compare,
    QueryError,
    compile_opensearch,
    parse,
    simple_filter,
)
from imageindex.query.opensearch import case_insensitive, wildcard_escape

from .test_lancedb_compiler import CASES, FIELDS, make_table


def body(query: str, **kw) -> dict:
    out = compile_opensearch(parse(query, fields=FIELDS), fields=FIELDS, **kw)
    json.dumps(out)  # a request body must serialize as is
    return out


TAGS_CAT = {
    "bool": {
        "should": [{"term": {"tags_ai": "cat"}}, {"term": {"tags_user": "cat"}}],
        "minimum_should_match": 1,
    }
}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("tags:cat", TAGS_CAT),
        ("tags=cat", TAGS_CAT),
        ("tags.ai:cat", {"term": {"tags_ai": "cat"}}),
        ("tags.user:[a, b]", {"terms": {"tags_user": ["a", "b"]}}),
        (
            "tags:[a, b]",
            {
                "bool": {
                    "should": [
                        {"terms": {"tags_ai": ["a", "b"]}},
                        {"terms": {"tags_user": ["a", "b"]}},
                    ],
                    "minimum_should_match": 1,
                }
            },
        ),
        ("NOT tags:cat", {"bool": {"must_not": [TAGS_CAT]}}),
        ("tags != cat", {"bool": {"must_not": [TAGS_CAT]}}),
        (
            "file_name:Cat",
            {"wildcard": {"file_name.keyword": {"value": "*Cat*", "case_insensitive": True}}},
        ),
        (
            'file_name:"a*b?c\\\\"',
            {
                "wildcard": {
                    "file_name.keyword": {"value": "*a\\*b\\?c\\\\*", "case_insensitive": True}
                }
            },
        ),
        ("file_name=cat.jpg", {"term": {"file_name.keyword": "cat.jpg"}}),
        ("file_name=[a, b]", {"terms": {"file_name.keyword": ["a", "b"]}}),
        (
            "file_name:ärger",
            {"regexp": {"file_name.keyword": {"value": ".*[Ää][Rr][Gg][Ee][Rr].*"}}},
        ),
        (
            "file_name:猫",
            {"wildcard": {"file_name.keyword": {"value": "*猫*", "case_insensitive": True}}},
        ),
        (
            "error:truncated",
            {"wildcard": {"error.keyword": {"value": "*truncated*", "case_insensitive": True}}},
        ),
        ("uri=s3://b/x/*", {"prefix": {"uri": {"value": "s3://b/x/"}}}),
        ("path:S3://B/*", {"prefix": {"uri": {"value": "S3://B/", "case_insensitive": True}}}),
        ("uri:Ä/*", {"regexp": {"uri": {"value": "[Ää]\\/.*"}}}),
        ("format=JPEG", {"term": {"format": "JPEG"}}),
        ("format:jpeg", {"wildcard": {"format": {"value": "*jpeg*", "case_insensitive": True}}}),
        ("status != ok", {"bool": {"must_not": [{"term": {"status": "ok"}}]}}),
        ("version=[v1, v2]", {"terms": {"dataset_version": ["v1", "v2"]}}),
        ("width >= 640", {"range": {"width": {"gte": 640}}}),
        ("width > 640", {"range": {"width": {"gt": 640}}}),
        ("width < 640", {"range": {"width": {"lt": 640}}}),
        ("width <= 640", {"range": {"width": {"lte": 640}}}),
        ("width:640", {"term": {"width": 640}}),
        ("width = [640, 800]", {"terms": {"width": [640, 800]}}),
        ("width != 640", {"bool": {"must_not": [{"term": {"width": 640}}]}}),
        ("quality >= 0.5", {"range": {"quality": {"gte": 0.5}}}),
        ("mtime < 2026-01-01T12:00:00+02:00", {"range": {"mtime": {"lt": "2026-01-01T10:00:00Z"}}}),
        ("mtime = 2026-01-01T12:00:00.5Z", {"term": {"mtime": "2026-01-01T12:00:00.500000Z"}}),
        ("mtime >= 2026-01-31", {"range": {"mtime": {"gte": "2026-01-31T00:00:00Z"}}}),
        ("mtime < 2026-01-31", {"range": {"mtime": {"lt": "2026-01-31T00:00:00Z"}}}),
        ("mtime <= 2026-01-31", {"range": {"mtime": {"lt": "2026-02-01T00:00:00Z"}}}),
        ("mtime > 2026-01-31", {"range": {"mtime": {"gte": "2026-02-01T00:00:00Z"}}}),
        (
            "mtime:2026-01-31",
            {"range": {"mtime": {"gte": "2026-01-31T00:00:00Z", "lt": "2026-02-01T00:00:00Z"}}},
        ),
        ("mtime > 9999-12-31", {"match_none": {}}),
        ("mtime <= 9999-12-31", {"exists": {"field": "mtime"}}),
        ("HAS width", {"exists": {"field": "width"}}),
        ("NOT HAS tags.user", {"bool": {"must_not": [{"exists": {"field": "tags_user"}}]}}),
        (
            "HAS tags",
            {
                "bool": {
                    "should": [
                        {"exists": {"field": "tags_ai"}},
                        {"exists": {"field": "tags_user"}},
                    ],
                    "minimum_should_match": 1,
                }
            },
        ),
        (
            "tags:cat AND width >= 640 AND NOT HAS tags.user",
            {
                "bool": {
                    "filter": [
                        TAGS_CAT,
                        {"range": {"width": {"gte": 640}}},
                        {"bool": {"must_not": [{"exists": {"field": "tags_user"}}]}},
                    ]
                }
            },
        ),
        (
            "(tags.ai:cat OR tags.ai:dog) AND NOT (width < 10 OR HAS error)",
            {
                "bool": {
                    "filter": [
                        {
                            "bool": {
                                "should": [
                                    {"term": {"tags_ai": "cat"}},
                                    {"term": {"tags_ai": "dog"}},
                                ],
                                "minimum_should_match": 1,
                            }
                        },
                        {
                            "bool": {
                                "must_not": [
                                    {
                                        "bool": {
                                            "should": [
                                                {"range": {"width": {"lt": 10}}},
                                                {"exists": {"field": "error"}},
                                            ],
                                            "minimum_should_match": 1,
                                        }
                                    }
                                ]
                            }
                        },
                    ]
                }
            },
        ),
        (
            'tags.ai:"\') OR 1=1 --"',
            {"term": {"tags_ai": "') OR 1=1 --"}},
        ),
        (
            'uri:[a*, "b"]',
            {
                "bool": {
                    "should": [
                        {"prefix": {"uri": {"value": "a", "case_insensitive": True}}},
                        {"wildcard": {"uri": {"value": "*b*", "case_insensitive": True}}},
                    ],
                    "minimum_should_match": 1,
                }
            },
        ),
    ],
)
def test_golden(query, expected):
    assert body(query) == expected


def test_keyword_subfields_can_be_remapped():
    assert body("file_name=a", keyword_subfields={"file_name": "file_name.raw"}) == {
        "term": {"file_name.raw": "a"}
    }


def test_simple_filter_body():
    node = simple_filter(tags_any=["cat"], tags_exclude=["dog"], path_prefix="s3://b/")
    assert compile_opensearch(node) == {
        "bool": {
            "filter": [
                TAGS_CAT,
                {
                    "bool": {
                        "must_not": [
                            {
                                "bool": {
                                    "should": [
                                        {"term": {"tags_ai": "dog"}},
                                        {"term": {"tags_user": "dog"}},
                                    ],
                                    "minimum_should_match": 1,
                                }
                            }
                        ]
                    }
                },
                {"prefix": {"uri": {"value": "s3://b/"}}},
            ]
        }
    }


def test_control_characters_are_fine_here():
    assert body('tags.ai:"a\\nb"') == {"term": {"tags_ai": "a\nb"}}


def test_hand_built_trees_are_validated():
    with pytest.raises(QueryError, match="unknown field"):
        compile_opensearch(Compare("tags_ai.keyword", ":", "x"))
    with pytest.raises(QueryError, match="dates"):
        compile_opensearch(Compare("mtime", ">", "now-1d"))


def test_helpers():
    assert wildcard_escape("a*b?c\\") == "a\\*b\\?c\\\\"
    assert case_insensitive("f", "x.y", prefix=False) == {
        "wildcard": {"f": {"value": "*x.y*", "case_insensitive": True}}
    }
    assert case_insensitive("f", "é(1)", prefix=True) == {
        "regexp": {"f": {"value": "[Éé]\\(1\\).*"}}
    }


# --------------------------------------------------------------------------------------------
# A model of the OpenSearch query semantics the compiler relies on, to check that a compiled
# body finds the same documents as the LanceDB SQL does.


def _ascii_fold(text: str) -> str:
    # case_insensitive folds ASCII letters only (opensearch-project/OpenSearch#20843).
    return "".join(c.lower() if c.isascii() else c for c in text)


def _wildcard_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return "".join(out)


def _lucene_regex(pattern: str) -> str:
    # Only the constructs the compiler writes: \x escapes, [..] classes of letters, and .*
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif c == "[":
            end = pattern.index("]", i)
            out.append("[" + re.escape(pattern[i + 1 : end]) + "]")
            i = end + 1
        elif pattern.startswith(".*", i):
            out.append(".*")
            i += 2
        else:
            assert c.isalnum(), f"unexpected regexp syntax {c!r} in {pattern!r}"
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _values(doc: dict, field: str) -> list:
    value = doc.get(field.removesuffix(".keyword"))
    if value is None:
        return []
    return [v for v in value if v is not None] if isinstance(value, list) else [value]


def _as(doc_value, query_value):
    if isinstance(doc_value, datetime):
        return datetime.fromisoformat(query_value.replace("Z", "+00:00"))
    return query_value


def _spec(clause: dict) -> tuple[str, object]:
    ((field, spec),) = clause.items()
    return field, spec


def matches(query: dict, doc: dict) -> bool:
    ((kind, clause),) = query.items()
    if kind == "bool":
        assert set(clause) <= {"filter", "must", "must_not", "should", "minimum_should_match"}
        ok = all(matches(q, doc) for q in clause.get("filter", []) + clause.get("must", []))
        ok = ok and not any(matches(q, doc) for q in clause.get("must_not", []))
        if "should" in clause:
            assert clause["minimum_should_match"] == 1
            ok = ok and any(matches(q, doc) for q in clause["should"])
        return ok
    if kind == "match_none":
        return False
    if kind == "exists":
        return bool(_values(doc, clause["field"]))
    field, spec = _spec(clause)
    values = _values(doc, field)
    if kind == "term":
        want = spec["value"] if isinstance(spec, dict) else spec
        return any(v == _as(v, want) for v in values)
    if kind == "terms":
        return any(v == _as(v, w) for v in values for w in spec)
    if kind == "range":
        ops = {"gt": "__gt__", "gte": "__ge__", "lt": "__lt__", "lte": "__le__"}
        return any(
            all(getattr(v, ops[op])(_as(v, bound)) for op, bound in spec.items()) for v in values
        )
    fold = _ascii_fold if spec.get("case_insensitive") else (lambda s: s)
    if kind == "prefix":
        return any(fold(v).startswith(fold(spec["value"])) for v in values)
    if kind == "wildcard":
        rx = re.compile(_wildcard_regex(fold(spec["value"])), re.S)
        return any(rx.fullmatch(fold(v)) for v in values)
    if kind == "regexp":
        assert "case_insensitive" not in spec
        rx = re.compile(_lucene_regex(spec["value"]), re.S)
        return any(rx.fullmatch(v) for v in values)
    raise AssertionError(f"the model does not know {kind!r}")


def documents() -> dict[str, dict]:
    return {row["id"]: row for row in make_table().to_pylist()}


DOCS = documents()


@pytest.mark.parametrize(("query", "expected"), CASES, ids=[c[0] for c in CASES])
def test_same_results_as_lancedb(query, expected):
    q = body(query)
    assert {doc_id for doc_id, doc in DOCS.items() if matches(q, doc)} == expected


def test_model_sanity():
    doc = {"mtime": datetime(2026, 1, 1, tzinfo=UTC), "tags_ai": [], "file_name": "Ab"}
    assert not matches({"exists": {"field": "tags_ai"}}, doc)
    assert matches({"range": {"mtime": {"gte": "2026-01-01T00:00:00Z"}}}, doc)
    assert not matches(
        {"wildcard": {"file_name": {"value": "*a\\*", "case_insensitive": True}}}, doc
    )
