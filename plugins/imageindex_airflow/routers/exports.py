"""``/datasets/{id}/export`` and ``/datasets/{id}/exports/{name}``: every match of a search
written to a file in staging (or registered as a logical version), and its download."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from imageindex_airflow.auth import ReadableDataset, User, is_authorized
from imageindex_airflow.inputs import checked, search_request
from imageindex_airflow.library import exports_dir, staging_of
from imageindex_airflow.responses import FILE_HEADERS, root_of
from imageindex_airflow.schemas import ERRORS, ExportBody, ExportOut

router = APIRouter()

_EXPORT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def _valid_name(name: str) -> bool:
    return bool(_EXPORT_NAME.match(name)) and name not in (".", "..")


@router.post("/datasets/{dataset_id}/export", response_model=ExportOut, responses=ERRORS)
def export(request: Request, ds: ReadableDataset, user: User, body: ExportBody) -> dict:
    """Write every match of a search to a JSONL, CSV or Parquet file under the staging
    location's ``exports/<dataset>/`` (never a path chosen by the caller), or register it as a
    logical dataset version. The file appears atomically; its row count and SHA-256 come back
    with a download link."""
    from imageindex.export import export_search, export_version
    from imageindex.manifest import FORMATS

    if body.format not in FORMATS:
        raise HTTPException(400, f"format must be one of {', '.join(FORMATS)}")
    if body.name is not None and not _valid_name(body.name):
        raise HTTPException(400, "name may hold letters, digits, '.', '_' and '-' only")
    if body.limit is not None and body.limit < 1:
        raise HTTPException(400, "limit must be at least 1")
    req = search_request(ds, body, None)
    req.top_k, req.cursor = min(body.limit or 100, 1000), None
    checked(req)
    if body.to_version:
        if not is_authorized(user, ds.id, "PUT"):
            raise HTTPException(403, f"registering a version of '{ds.id}' needs edit permission")
        dest = f"{exports_dir(ds)}/{body.to_version}.{body.format}"
        result = export_version(
            req, body.to_version, dest=dest, limit=body.limit, description=body.description
        )
    else:
        stem = body.name or datetime.now(UTC).strftime("export-%Y%m%dT%H%M%S%fZ")
        dest = f"{exports_dir(ds)}/{stem}.{body.format}"
        result = export_search(req, dest, fmt=body.format, limit=body.limit)
    name = result.uri.rsplit("/", 1)[-1]
    return {**result.to_dict(), "download": f"{root_of(request)}/datasets/{ds.id}/exports/{name}"}


@router.get("/datasets/{dataset_id}/exports/{name}", responses=ERRORS)
def download_export(ds: ReadableDataset, name: str) -> Response:
    """An export file of this dataset (or its ``.sha256``)."""
    if not _valid_name(name):
        raise HTTPException(404, "no such export")
    try:
        data = staging_of(ds).read_bytes(f"{exports_dir(ds)}/{name}")
    except FileNotFoundError:
        raise HTTPException(404, f"no export named {name!r} for dataset '{ds.id}'") from None
    return Response(
        data,
        media_type="application/octet-stream",
        headers={**FILE_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'},
    )
