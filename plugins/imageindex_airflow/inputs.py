"""Request bodies made into the library's values: blank fields, tag lists, the SearchRequest,
and the library's request errors in the API's words."""

from __future__ import annotations

import re

from fastapi import HTTPException

from imageindex.errors import ConfigError
from imageindex_airflow.schemas import MAX_TAG_LENGTH, SearchBody

_FLAG = re.compile(r"--([a-z][a-z-]*)")


def blank_to_none(value: str | None) -> str | None:
    return value if value is not None and value.strip() else None


def clean_tags(values: list[str], what: str) -> list[str]:
    """Stripped, unique, non-empty tags; a 400 naming ``what`` for one too long or unprintable."""
    tags: list[str] = []
    for raw in values:
        tag = str(raw).strip()
        if not tag:
            continue
        if len(tag) > MAX_TAG_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in tag):
            raise HTTPException(
                400, f"{what}: tag {tag[:40]!r} must be 1-{MAX_TAG_LENGTH} printable characters"
            )
        if tag not in tags:
            tags.append(tag)
    return tags


def api_words(message: str) -> str:
    """The library's request errors name CLI flags (--top-k); API callers know the fields."""
    return _FLAG.sub(lambda m: m.group(1).replace("-", "_"), message)


def search_request(ds, body: SearchBody, image_bytes: bytes | None):
    """The library's SearchRequest for a search body (not validated yet: see :func:`checked`)."""
    from imageindex.search import SearchRequest

    return SearchRequest(
        dataset_id=ds.id,
        version=blank_to_none(body.version),
        text=blank_to_none(body.text),
        image_bytes=image_bytes,
        image_uri=blank_to_none(body.image_uri),
        dsl=blank_to_none(body.dsl),
        tags_any=clean_tags(body.tags_any, "tags_any"),
        tags_all=clean_tags(body.tags_all, "tags_all"),
        tags_exclude=clean_tags(body.tags_exclude, "tags_exclude"),
        file_name=blank_to_none(body.file_name),
        path_prefix=blank_to_none(body.path_prefix),
        mtime_from=blank_to_none(body.mtime_from),
        mtime_to=blank_to_none(body.mtime_to),
        top_k=body.top_k,
        score_threshold=body.score_threshold,
        cursor=blank_to_none(body.cursor),
        sort=body.sort or "uri",
    )


def checked(req):
    """``req`` once the library has validated it; a 400 in the API's words if it is not valid."""
    try:
        req.validate()
    except ConfigError as exc:
        raise HTTPException(400, api_words(str(exc))) from None
    return req
