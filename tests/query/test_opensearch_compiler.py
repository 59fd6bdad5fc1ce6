"""The OpenSearch compiler: the bodies it writes, and the same result sets as the LanceDB
compiler when those bodies run on a live OpenSearch node over the rows the LanceDB tests use."""

from __future__ import annotations

import json

import pytest

from imageindex.query import (
    Compare,
    QueryError,
    parse,
    simple_filter,
)
from imageindex.stores.opensearch import case_insensitive, compile_opensearch, wildcard_escape

from .test_lancedb_compiler import CASES, FIELDS


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
# The compiled bodies run on a live OpenSearch node (conftest.py ``opensearch_url``) over the rows
# the LanceDB compiler tests use: both compilers must find the same documents.


@pytest.mark.parametrize(("query", "expected"), CASES, ids=[c[0] for c in CASES])
def test_same_results_as_lancedb(live_index, query, expected):
    client, name = live_index
    resp = client.search(index=name, body={"query": body(query), "size": 100, "_source": False})
    assert {h["_id"] for h in resp["hits"]["hits"]} == expected
