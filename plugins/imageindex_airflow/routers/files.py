"""``/datasets/{id}/files/{doc_id}``: one indexed document, its thumbnail from staging and its
original from the dataset version's source."""

from __future__ import annotations

import json
import math
from datetime import date, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from imageindex.errors import ConfigError, SourceError
from imageindex_airflow.auth import DocId, ReadableDataset, dag_id_of
from imageindex_airflow.library import get_document, s3_conn_id, thumbnails_of
from imageindex_airflow.responses import (
    FILE_HEADERS,
    attachment,
    etag,
    file_response,
    links,
    not_modified,
    sniff_image_type,
)
from imageindex_airflow.schemas import ERRORS, IMAGE_RESPONSE, ErrorOut

router = APIRouter()

_PRIVATE_CACHE = {"Cache-Control": "private, max-age=300"}


@router.get("/datasets/{dataset_id}/files/{doc_id}", responses=ERRORS)
def get_file(request: Request, ds: ReadableDataset, doc_id: DocId) -> dict:
    """One document: every stored field but the vector, tags with their scores, and links."""
    return _document(request, ds, get_document(ds, doc_id))


def _plain(value: Any) -> Any:
    """A stored value as JSON: timestamps as epoch seconds, like hits carry them."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _document(request: Request, ds, doc: dict) -> dict:
    out = {k: _plain(v) for k, v in doc.items() if k not in ("tags_ai", "tags_user")}
    out["tags"] = {"ai": list(doc.get("tags_ai") or []), "user": list(doc.get("tags_user") or [])}
    detail = doc.get("tags_detail")
    try:
        out["tags_detail"] = json.loads(detail) if detail else []
    except ValueError:
        out["tags_detail"] = []
    out.update(links(request, ds.id, doc["id"]))
    return out


@router.get(
    "/datasets/{dataset_id}/files/{doc_id}/thumbnail",
    response_class=Response,
    responses=IMAGE_RESPONSE,
)
def get_thumbnail(request: Request, ds: ReadableDataset, doc_id: DocId) -> Response:
    """The document's thumbnail (a JPEG of at most 512 px) from staging."""
    doc = get_document(ds, doc_id)
    uri = doc.get("thumbnail_uri")
    if not uri:
        raise HTTPException(404, f"{doc['uri']} has no thumbnail ({doc.get('error') or 'none'})")
    tag = etag(uri, doc.get("fingerprint"), doc.get("indexed_at"))
    if not_modified(request, tag):
        return Response(status_code=304, headers={"ETag": tag})
    try:
        # Rooted at this dataset's thumbnails: the staging refuses any uri outside it.
        data = thumbnails_of(ds).read_bytes(uri)
    except ConfigError:
        raise HTTPException(
            403, f"the thumbnail of {doc_id} is outside the thumbnails of dataset '{ds.id}'"
        ) from None
    except FileNotFoundError:
        raise HTTPException(
            404, f"the thumbnail of {doc['uri']} is missing; run the {dag_id_of(ds.id)} DAG"
        ) from None
    mime = sniff_image_type(data[:16])
    if mime is None:
        raise HTTPException(502, f"the thumbnail of {doc_id} is not an image")
    return Response(data, media_type=mime, headers={**FILE_HEADERS, "ETag": tag, **_PRIVATE_CACHE})


@router.get(
    "/datasets/{dataset_id}/files/{doc_id}/original",
    response_class=Response,
    responses={**IMAGE_RESPONSE, 502: {"model": ErrorOut, "description": "source unreadable"}},
)
def get_original(request: Request, ds: ReadableDataset, doc_id: DocId) -> Response:
    """The original file, read from the dataset version's source.

    Only a uri under that source is read (the document's, never one from the request). Files
    that are not a supported raster image are sent as a download, never shown inline.
    """
    doc = get_document(ds, doc_id)
    version = ds.version(doc["dataset_version"])
    uri = doc["uri"]
    outside = HTTPException(403, f"{uri} is outside the source of {ds.id}/{version.name}")
    if uri.startswith("file:") and (version.manifest or not version.is_s3):
        return _local_original(doc, version, outside)
    if not version.is_s3 and not version.manifest:
        raise outside
    tag = etag(uri, doc.get("fingerprint"))  # an S3 ETag: changes with the content
    if not_modified(request, tag):
        return Response(status_code=304, headers={"ETag": tag})
    data = _read_remote(ds, version, uri, outside)
    headers = {**FILE_HEADERS, **_PRIVATE_CACHE}
    mime = sniff_image_type(data[:16])
    if mime is None:
        headers["Content-Disposition"] = attachment(doc)
        mime = "application/octet-stream"
    return Response(data, media_type=mime, headers={**headers, "ETag": tag})


def _local_original(doc: dict, version, outside: HTTPException) -> Response:
    """Streamed from disk (FileResponse: ranges, its own ETag from size and mtime)."""
    from imageindex.sources import local_path_from_uri

    uri = doc["uri"]
    path = local_path_from_uri(uri)
    if not version.manifest:
        # LocalSource.read_bytes's check, made before the file is opened. A logical version's
        # files may live under any root: its index only holds uris its manifest listed, and
        # this uri comes from the index, never from the request.
        root = local_path_from_uri(version.source)
        if path == root or not path.is_relative_to(root):
            raise outside
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise HTTPException(404, f"{uri} no longer exists in the source") from None
    except OSError as exc:
        raise HTTPException(502, f"cannot read {uri}: {exc.strerror or exc}") from None
    return file_response(path, head, doc, {**FILE_HEADERS, **_PRIVATE_CACHE})


def _read_remote(ds, version, uri: str, outside: HTTPException) -> bytes:
    """An S3 original: from the version's source, or, for a logical version (whose manifest
    may list files of any bucket), from the bucket the indexed uri names."""
    from imageindex.sources import S3Source, open_source

    if version.manifest:
        bucket_root = "s3://" + uri[len("s3://") :].split("/", 1)[0] + "/"
        source = S3Source(bucket_root, conn_id=s3_conn_id(ds))
    else:
        source = open_source(version.source, s3_conn_id=s3_conn_id(ds))
    try:
        return source.read_bytes(uri)
    except SourceError as exc:
        if "outside the source" in str(exc):
            raise outside from None
        raise
