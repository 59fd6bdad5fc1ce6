"""``/datasets/{id}/search`` and ``/search/image``: search one dataset version by text, indexed
image, uploaded image, tags, metadata and query language."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, Request

from imageindex_airflow.auth import ReadableDataset
from imageindex_airflow.inputs import checked, search_request
from imageindex_airflow.responses import links, sniff_image_type
from imageindex_airflow.schemas import (
    ERRORS,
    MAX_UPLOAD_BYTES,
    ErrorOut,
    SearchBody,
    SearchOut,
)

router = APIRouter()

#: Room for the multipart envelope and the small form fields around the file.
_MULTIPART_SLACK = 256 * 1024


def _search(request: Request, ds, body: SearchBody, image_bytes: bytes | None = None) -> dict:
    from imageindex.search import run_search

    req = checked(search_request(ds, body, image_bytes))
    result = run_search(req)
    hits = [{**h.to_dict(), **links(request, ds.id, h.id)} for h in result.hits]
    return {
        "dataset_id": ds.id,
        "version": ds.version(req.version).name,
        "hits": hits,
        "next_cursor": result.next_cursor,
        "query": result.query,
        "ranked": req.has_vector_query,
    }


@router.post("/datasets/{dataset_id}/search", response_model=SearchOut, responses=ERRORS)
def search(request: Request, ds: ReadableDataset, body: SearchBody) -> dict:
    """Search one dataset version by text, indexed image, tags, metadata and query language.

    With ``text`` or ``image_uri`` hits are ranked by similarity (``score`` is the cosine
    similarity); otherwise every match comes back in ``sort`` order with score 1. Pass
    ``next_cursor`` back as ``cursor`` for the next page. Query-language mistakes are a 400 whose
    body names the ``column``.
    """
    return _search(request, ds, body)


async def _capped(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise HTTPException(413, _too_large())
        yield chunk


def _too_large() -> str:
    return f"the uploaded image is larger than {MAX_UPLOAD_BYTES // 2**20} MiB"


async def _read_upload(request: Request) -> tuple[bytes, dict]:
    """The uploaded file and the ``request`` form field, reading no more than the limit."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    limit = MAX_UPLOAD_BYTES + _MULTIPART_SLACK
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise HTTPException(413, _too_large())
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, "send the image as multipart/form-data with a 'file' field")
    parser = MultiPartParser(
        request.headers,
        _capped(request.stream(), limit),
        max_files=1,
        max_fields=4,
        max_part_size=64 * 1024,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"malformed upload: {exc.message}") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "the upload has no 'file' field holding the image")
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        raw = form.get("request")
    finally:
        await form.close()
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, _too_large())
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    if sniff_image_type(data[:16]) is None:
        raise HTTPException(
            415, "the upload is not a supported image; use JPEG, PNG, WebP, GIF, BMP or TIFF"
        )
    params: dict = {}
    if isinstance(raw, str) and raw.strip():
        try:
            params = json.loads(raw)
        except ValueError:
            raise HTTPException(400, "the 'request' field must be a JSON object") from None
        if not isinstance(params, dict):
            raise HTTPException(400, "the 'request' field must be a JSON object")
    return data, params


@router.post(
    "/datasets/{dataset_id}/search/image",
    response_model=SearchOut,
    responses={
        **ERRORS,
        413: {"model": ErrorOut, "description": "image larger than 20 MiB"},
        415: {"model": ErrorOut, "description": "not a JPEG, PNG, WebP, GIF, BMP or TIFF"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "request": {
                                "type": "string",
                                "description": "optional JSON object with the other fields "
                                "of the search body (filters, top_k, score_threshold, ...)",
                            },
                        },
                    }
                }
            },
        }
    },
)
async def search_by_image(request: Request, ds: ReadableDataset) -> dict:
    """Search by an uploaded image (at most 20 MiB; JPEG, PNG, WebP, GIF, BMP or TIFF)."""
    from fastapi.concurrency import run_in_threadpool
    from pydantic import ValidationError

    data, params = await _read_upload(request)
    try:
        body = SearchBody.model_validate(params)
    except ValidationError as exc:
        raise HTTPException(422, exc.errors(include_url=False, include_context=False)) from None
    if body.text or body.image_uri:
        raise HTTPException(400, "give one query: the uploaded image, not also text or image_uri")
    return await run_in_threadpool(_search, request, ds, body, data)
