"""The imageindex REST API and the "View Data" page, served inside the Airflow API server.

``plugin.py`` mounts :data:`app` at ``/imageindex``; the OpenAPI schema is at
``/imageindex/openapi.json`` and the page at ``/imageindex/ui/``.

Authentication is Airflow's own: every route resolves the caller with the core API's
``get_user`` dependency (``airflow.api_fastapi.core_api.security``), so a JWT from
``POST /auth/token`` in an ``Authorization: Bearer`` header works, and so does the ``_token``
cookie the Airflow UI logs in with (that is how the page, embedded in the UI, calls this API).
Airflow does not protect plugin apps by itself. Each dataset is then checked against the
caller's access to its DAG ``imageindex_<dataset>`` with the configured auth manager: reading
and searching need read access, editing user tags needs edit access.

The file is loaded twice: by ``plugin.py`` and, as a top-level module, by Airflow's plugin
loader, which imports every ``.py`` file under the plugins folder in every Airflow process
(task runners included). Airflow core and the library are therefore imported inside the
functions (only the dependency-free ``imageindex.errors`` at the top), so loading the plugin
costs a worker little more than importing FastAPI.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from imageindex.errors import (
    ConfigError,
    EmptyIndexError,
    ImageIndexError,
    ModelMismatchError,
    ProviderError,
    SourceError,
    StoreError,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The page's files; nothing else under static/ is served.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
DAG_PREFIX = "imageindex_"
#: The library's limit (imageindex.search.MAX_UPLOAD_BYTES, a test keeps them equal), repeated
#: so that a too-large upload is refused without importing the search stack.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Room for the multipart envelope and the small form fields around the file.
_MULTIPART_SLACK = 256 * 1024
MAX_TAGS_PER_REQUEST = 50
MAX_TAG_LENGTH = 100
MAX_IDS_PER_REQUEST = 1000
_DATASET_ID = r"^[A-Za-z0-9_-]{1,64}$"
_DOC_ID = r"^[0-9a-f]{32}$"
_REPORTS_READ = 10

# The page and the originals are shown in the Airflow origin: an image source holding HTML or
# SVG must never be rendered as a document there.
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
)
_FILE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}

# --------------------------------------------------------------------------------------------
# request and response bodies


class SearchBody(BaseModel):
    """One search; every field is optional and they combine with AND (see README)."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, description="dataset version (default: the current one)")
    text: str | None = Field(None, description="find images matching this description")
    image_uri: str | None = Field(
        None, description="find images similar to this already indexed image (its uri)"
    )
    dsl: str | None = Field(None, description="query language, see docs/query-language.md")
    tags_any: list[str] = Field(default_factory=list, description="has any of these tags")
    tags_all: list[str] = Field(default_factory=list, description="has all of these tags")
    tags_exclude: list[str] = Field(default_factory=list, description="has none of these tags")
    file_name: str | None = Field(None, description="file name contains (case-insensitive)")
    path_prefix: str | None = Field(None, description="path under the source starts with")
    mtime_from: str | None = Field(None, description="modified at or after (ISO date/time)")
    mtime_to: str | None = Field(None, description="modified at or before (ISO date/time)")
    top_k: int = Field(10, description="results per page, 1-1000")
    score_threshold: float | None = Field(
        None, description="minimum cosine similarity in [-1, 1] (text or image searches)"
    )
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    sort: str = Field(
        "uri",
        description="order of filter-only results: uri, file_name, mtime, size, indexed_at; "
        "prefix '-' to reverse",
    )


class Tags(BaseModel):
    ai: list[str]
    user: list[str]


class HitOut(BaseModel):
    id: str
    uri: str
    file_name: str
    score: float
    tags: Tags
    width: int | None = None
    height: int | None = None
    format: str | None = None
    size: int | None = None
    mtime: float | None = Field(None, description="seconds since the epoch (UTC)")
    dataset_id: str
    dataset_version: str
    thumbnail_uri: str | None = None
    thumbnail_url: str
    original_url: str


class SearchOut(BaseModel):
    dataset_id: str
    version: str
    hits: list[HitOut]
    next_cursor: str | None = Field(None, description="pass back as 'cursor' for the next page")
    query: str | None = Field(None, description="the filter as query-language text")
    ranked: bool = Field(description="true when ordered by similarity (text or image query)")


class LastRun(BaseModel):
    model_config = ConfigDict(extra="allow")

    run: str
    finished_at: str | None = None


class VersionOut(BaseModel):
    name: str
    current: bool
    source: str = Field(
        description="uri prefix of the version's files (hits' uris start so); for a logical "
        "version, the uri of the manifest listing its files"
    )
    kind: str = Field("prefix", description="prefix, or logical (files from a manifest)")
    indexed: int = Field(description="documents of this version, failed ones included")
    ok: int
    failed: int
    last_run: LastRun | None = None


class DatasetOut(BaseModel):
    id: str
    description: str
    dag_id: str
    current_version: str
    versions: list[VersionOut]
    tag_names: list[str] = Field(description="tags the dataset's tag definitions can produce")
    can_edit: bool = Field(description="whether the caller may edit user tags")
    error: str | None = Field(None, description="why counts are missing, if they are")


class DatasetsOut(BaseModel):
    datasets: list[DatasetOut]


class StageProgress(BaseModel):
    stage: str = Field(description="preprocess, tag_embed or upsert")
    done: int = Field(description="files of the shards this stage has finished")
    total: int = Field(description="files the run processes")
    shards_done: int
    shards: int


class FailedFilter(BaseModel):
    version: str
    dsl: str = Field(
        description="query-language filter that finds the documents this run stored as failed "
        "(files that could not be read are not stored; the next run tries them again)"
    )


class RunOut(BaseModel):
    run: str = Field(description="the run's staging folder: its Airflow run id, made safe")
    run_id: str | None = Field(None, description="the Airflow run id (once planned)")
    version: str
    state: str = Field(
        description="planning, running, finished, or stopped (no report and no longer "
        "holding the version: failed or killed)"
    )
    mode: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    files: int | None = Field(None, description="files the run processes (new, changed, retag)")
    shards: int | None = None
    stages: list[StageProgress]
    report: dict[str, Any] | None = Field(
        None, description="the run report's counts, failed_by_reason and seconds per stage"
    )
    failed_filter: FailedFilter | None = Field(
        None, description="shows the run's failed files in the gallery; null without failures"
    )


class RunsOut(BaseModel):
    dataset_id: str
    version: str
    runs: list[RunOut]


class TagsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: list[str] = Field(description=f"1-{MAX_TAGS_PER_REQUEST} tags")


class BulkTagsBody(TagsBody):
    ids: list[str] = Field(description=f"document ids, at most {MAX_IDS_PER_REQUEST}")


class TagsOut(BaseModel):
    changed: int = Field(description="documents whose user tags changed")
    documents: list[dict[str, Any]] = Field(description="id and tags of each document")


class ErrorOut(BaseModel):
    detail: str


class QueryErrorOut(ErrorOut):
    column: int | None = Field(None, description="1-based column of the mistake in its line")
    line: int | None = None
    position: int | None = Field(None, description="0-based offset into the query")


_ERRORS = {
    400: {"model": QueryErrorOut, "description": "invalid request or query"},
    401: {"model": ErrorOut, "description": "not authenticated"},
    403: {"model": ErrorOut, "description": "no access to the dataset's DAG"},
    404: {"model": ErrorOut, "description": "unknown dataset or document, or nothing indexed"},
}

app = FastAPI(
    title="imageindex",
    version="1",
    description=__doc__,
    # The defaults would be public; these routes are defined below behind authentication.
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)

# --------------------------------------------------------------------------------------------
# authentication and authorization

_bearer = HTTPBearer(
    auto_error=False,
    description="A JWT from Airflow's POST /auth/token; the Airflow UI's _token cookie also works",
)


async def airflow_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
):
    """The caller, resolved exactly as the core API does (bearer header, else cookie)."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, _oauth_token=None, bearer_credentials=credentials)


User = Annotated[Any, Depends(airflow_user)]
DatasetId = Annotated[str, PathParam(pattern=_DATASET_ID, description="dataset id")]
DocId = Annotated[str, PathParam(pattern=_DOC_ID, description="document id")]


def dag_id_of(dataset_id: str) -> str:
    return f"{DAG_PREFIX}{dataset_id}"


def is_authorized(user, dataset_id: str, method: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.configuration import conf

    dag_id = dag_id_of(dataset_id)
    team_name = None
    # The core's requires_access_dag looks the team up in the metadata DB on every call; it
    # only matters in multi-team mode.
    if conf.getboolean("core", "multi_team", fallback=False):
        from airflow.models.dag import DagModel

        team_name = DagModel.get_team_name(dag_id)
    return get_auth_manager().is_authorized_dag(
        method=method, details=DagDetails(id=dag_id, team_name=team_name), user=user
    )


def _dataset_access(method: str) -> Callable:
    action = "read" if method == "GET" else "edit"

    # A plain def: auth managers may query a database, so FastAPI runs this in its threadpool.
    def check(dataset_id: DatasetId, user: User):
        if not is_authorized(user, dataset_id, method):
            raise HTTPException(
                403, f"you may not {action} dataset '{dataset_id}' (DAG {dag_id_of(dataset_id)})"
            )
        from imageindex.registry import load_registry

        ds = load_registry().datasets.get(dataset_id)
        if ds is None:
            raise HTTPException(404, f"no dataset '{dataset_id}' in the registry")
        return ds

    return check


ReadableDataset = Annotated[Any, Depends(_dataset_access("GET"))]
EditableDataset = Annotated[Any, Depends(_dataset_access("PUT"))]

# --------------------------------------------------------------------------------------------
# errors: the library's typed errors become status codes with their message

_STATUS_OF_ERROR: list[tuple[type[ImageIndexError], int]] = [
    (ConfigError, 400),  # QueryError included: it is a ConfigError with a column
    (EmptyIndexError, 404),
    (ModelMismatchError, 409),
    (SourceError, 502),
    (ProviderError, 502),
    (StoreError, 503),
    (ImageIndexError, 500),
]


def _library_error(request: Request, exc: Exception) -> JSONResponse:
    status = next(code for typ, code in _STATUS_OF_ERROR if isinstance(exc, typ))
    if hasattr(exc, "column"):  # a QueryError: the message without the caret drawing
        body = {"detail": exc.message, "column": exc.column, "line": exc.line}
        return JSONResponse(status_code=status, content={**body, "position": exc.position})
    return JSONResponse(status_code=status, content={"detail": str(exc)})


for _exc_type, _ in _STATUS_OF_ERROR:
    app.add_exception_handler(_exc_type, _library_error)


# --------------------------------------------------------------------------------------------
# helpers


def _links(request: Request, dataset_id: str, doc_id: str) -> dict[str, str]:
    base = f"{request.scope.get('root_path', '').rstrip('/')}/datasets/{dataset_id}/files/{doc_id}"
    return {"thumbnail_url": f"{base}/thumbnail", "original_url": f"{base}/original"}


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
    out.update(_links(request, ds.id, doc["id"]))
    return out


def _store(ds):
    from imageindex.stores import open_store

    return open_store(ds.store_uri, spec=ds.store)


def _get_doc(ds, doc_id: str) -> dict:
    docs = _store(ds).get(ds.id, [doc_id])
    if not docs:
        raise HTTPException(404, f"dataset '{ds.id}' has no document {doc_id}")
    return docs[0]


def _s3_conn_id(ds) -> str:
    from imageindex.config import settings

    return ds.s3_conn_id or settings().s3_conn_id


def _blank_to_none(value: str | None) -> str | None:
    return value if value is not None and value.strip() else None


def _clean_tags(values: list[str], what: str) -> list[str]:
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


_FLAG = re.compile(r"--([a-z][a-z-]*)")


def _api_words(message: str) -> str:
    """The library's request errors name CLI flags (--top-k); API callers know the fields."""
    return _FLAG.sub(lambda m: m.group(1).replace("-", "_"), message)


#: Leading bytes of the image types the API accepts and serves, with their MIME types.
_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def sniff_image_type(head: bytes) -> str | None:
    """The MIME type of an image from its first bytes; None when it is not a supported one."""
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    return None


def _etag(*parts: Any) -> str:
    return '"' + hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:32] + '"'


def _not_modified(request: Request, etag: str) -> bool:
    return etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]


# --------------------------------------------------------------------------------------------
# datasets


def _last_run(ds, version: str) -> dict | None:
    """The newest run report of a version in staging; None when there is none (or no access)."""
    from imageindex.config import settings
    from imageindex.staging import open_staging

    try:
        staging = open_staging(settings().staging_root, s3_conn_id=_s3_conn_id(ds))
        prefix = staging.join("runs", ds.id, version)
        reports = [u for u in staging.list(prefix) if u.endswith("/report.json")]
        # Airflow run ids are "<type>__<timestamp>": sorting on the timestamp finds the newest.
        reports.sort(key=lambda u: u.rsplit("/", 2)[-2].split("__")[-1], reverse=True)
        best = None
        for uri in reports[:_REPORTS_READ]:
            report = staging.read_json(uri)
            if best is None or str(report.get("finished_at")) > str(best.get("finished_at")):
                best = report
                best["run"] = uri.rsplit("/", 2)[-2]
    except (ImageIndexError, OSError, ValueError):
        return None
    if best is None:
        return None
    keys = ("run", "finished_at", "mode", "listed", "new", "changed", "deleted", "failed")
    return {k: best.get(k) for k in (*keys, "indexed_ok", "refused_delete")}


def _tag_names(ds) -> list[str]:
    path = (ds.tagger or {}).get("definitions")
    if not path:
        return []
    try:
        from imageindex.taggers.definitions import load_tag_definitions

        return list(load_tag_definitions(path).tags)
    except (ImageIndexError, OSError):  # a broken definitions file must not hide the dataset
        return []


def _dataset_out(ds, user) -> dict:
    from imageindex.stores.base import Filter
    from imageindex.stores.schema import STATUS_OK

    counts: dict[str, tuple[int, int]] = {}
    error = None
    try:
        all_versions = ds.all_versions()  # declared ones, then logical versions from exports
    except ImageIndexError as exc:
        all_versions, error = dict(ds.versions), str(exc)
    try:
        store = _store(ds)
        if store.table_info(ds.id) is not None:
            for v in all_versions:
                total = store.count(ds.id, Filter(versions=[v], status=None))
                counts[v] = (total, store.count(ds.id, Filter(versions=[v], status=STATUS_OK)))
    except ImageIndexError as exc:  # one unreachable store must not hide the other datasets
        counts, error = {}, str(exc)
    versions = []
    for v in all_versions.values():
        total, ok = counts.get(v.name, (0, 0))
        versions.append(
            {
                "name": v.name,
                "current": v.name == ds.current_version,
                "source": v.source if v.is_s3 else Path(v.source).as_uri(),
                "kind": "logical" if v.manifest else "prefix",
                "indexed": total,
                "ok": ok,
                "failed": total - ok,
                "last_run": _last_run(ds, v.name),
            }
        )
    return {
        "id": ds.id,
        "description": ds.description,
        "dag_id": dag_id_of(ds.id),
        "current_version": ds.current_version,
        "versions": versions,
        "tag_names": _tag_names(ds),
        "can_edit": is_authorized(user, ds.id, "PUT"),
        "error": error,
    }


@app.get("/datasets", response_model=DatasetsOut, responses={401: _ERRORS[401]})
def list_datasets(user: User) -> dict:
    """The registry's datasets the caller may read, with indexed counts and the last run."""
    from imageindex.registry import load_registry

    datasets = [
        _dataset_out(ds, user)
        for ds in load_registry().datasets.values()
        if is_authorized(user, ds.id, "GET")
    ]
    return {"datasets": datasets}


@app.get("/datasets/{dataset_id}", response_model=DatasetOut, responses=_ERRORS)
def get_dataset(ds: ReadableDataset, user: User) -> dict:
    """One dataset with indexed counts per version and each version's last run."""
    return _dataset_out(ds, user)


# --------------------------------------------------------------------------------------------
# runs: progress while in flight, the report afterwards


_RUN_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$"
RunName = Annotated[str, PathParam(pattern=_RUN_NAME, description="run folder (see RunOut.run)")]
VersionName = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="version")]


def _run_staging(ds, version: str):
    from imageindex.config import settings
    from imageindex.errors import RegistryError
    from imageindex.staging import open_staging

    try:
        name = ds.version(version).name
    except RegistryError as exc:
        raise HTTPException(404, str(exc)) from None
    return name, open_staging(settings().staging_root, s3_conn_id=_s3_conn_id(ds))


@app.get(
    "/datasets/{dataset_id}/versions/{version}/runs", response_model=RunsOut, responses=_ERRORS
)
def list_runs(
    ds: ReadableDataset,
    version: VersionName,
    limit: Annotated[int, Query(ge=1, le=20, description="runs to return")] = 5,
) -> dict:
    """The version's index runs, the one in flight first, then newest first: per stage
    (preprocess, tag_embed, upsert) the files done of the run's total, and, once a run has
    finished, its report with failures by reason and a gallery filter for its failed files."""
    from imageindex_airflow.runs import list_runs as runs_of

    name, staging = _run_staging(ds, version)
    return {
        "dataset_id": ds.id,
        "version": name,
        "runs": runs_of(staging, ds.id, name, limit=limit),
    }


@app.get(
    "/datasets/{dataset_id}/versions/{version}/runs/{run}", response_model=RunOut, responses=_ERRORS
)
def get_run(ds: ReadableDataset, version: VersionName, run: RunName) -> dict:
    """One run of the version, as in the list (poll it while the run is in flight)."""
    from imageindex_airflow.runs import get_run as run_of

    name, staging = _run_staging(ds, version)
    found = run_of(staging, ds.id, name, run)
    if found is None:
        raise HTTPException(404, f"dataset '{ds.id}' version '{name}' has no run '{run}'")
    return found


# --------------------------------------------------------------------------------------------
# search


def _search_request(ds, body: SearchBody, image_bytes: bytes | None):
    from imageindex.search import SearchRequest

    return SearchRequest(
        dataset_id=ds.id,
        version=_blank_to_none(body.version),
        text=_blank_to_none(body.text),
        image_bytes=image_bytes,
        image_uri=_blank_to_none(body.image_uri),
        dsl=_blank_to_none(body.dsl),
        tags_any=_clean_tags(body.tags_any, "tags_any"),
        tags_all=_clean_tags(body.tags_all, "tags_all"),
        tags_exclude=_clean_tags(body.tags_exclude, "tags_exclude"),
        file_name=_blank_to_none(body.file_name),
        path_prefix=_blank_to_none(body.path_prefix),
        mtime_from=_blank_to_none(body.mtime_from),
        mtime_to=_blank_to_none(body.mtime_to),
        top_k=body.top_k,
        score_threshold=body.score_threshold,
        cursor=_blank_to_none(body.cursor),
        sort=body.sort or "uri",
    )


def _search(request: Request, ds, body: SearchBody, image_bytes: bytes | None = None) -> dict:
    from imageindex.search import run_search

    req = _search_request(ds, body, image_bytes)
    try:
        req.validate()
    except ConfigError as exc:
        raise HTTPException(400, _api_words(str(exc))) from None
    result = run_search(req)
    hits = [{**h.to_dict(), **_links(request, ds.id, h.id)} for h in result.hits]
    return {
        "dataset_id": ds.id,
        "version": ds.version(req.version).name,
        "hits": hits,
        "next_cursor": result.next_cursor,
        "query": result.query,
        "ranked": req.has_vector_query,
    }


@app.post("/datasets/{dataset_id}/search", response_model=SearchOut, responses=_ERRORS)
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


@app.post(
    "/datasets/{dataset_id}/search/image",
    response_model=SearchOut,
    responses={
        **_ERRORS,
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


# --------------------------------------------------------------------------------------------
# files


@app.get("/datasets/{dataset_id}/files/{doc_id}", responses=_ERRORS)
def get_file(request: Request, ds: ReadableDataset, doc_id: DocId) -> dict:
    """One document: every stored field but the vector, tags with their scores, and links."""
    return _document(request, ds, _get_doc(ds, doc_id))


_IMAGE_RESPONSE = {
    200: {"content": {m: {} for m in ("image/jpeg", "image/png", "image/webp")}},
    **_ERRORS,
}


@app.get(
    "/datasets/{dataset_id}/files/{doc_id}/thumbnail",
    response_class=Response,
    responses=_IMAGE_RESPONSE,
)
def get_thumbnail(request: Request, ds: ReadableDataset, doc_id: DocId) -> Response:
    """The document's thumbnail (a JPEG of at most 512 px) from staging."""
    from imageindex.pipeline import thumbnails_root
    from imageindex.staging import open_staging

    doc = _get_doc(ds, doc_id)
    uri = doc.get("thumbnail_uri")
    if not uri:
        raise HTTPException(404, f"{doc['uri']} has no thumbnail ({doc.get('error') or 'none'})")
    etag = _etag(uri, doc.get("fingerprint"), doc.get("indexed_at"))
    if _not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": etag})
    # Rooted at this dataset's thumbnails: the staging refuses any uri outside it.
    staging = open_staging(thumbnails_root(ds.id), s3_conn_id=_s3_conn_id(ds))
    try:
        data = staging.read_bytes(uri)
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
    headers = {**_FILE_HEADERS, "ETag": etag, "Cache-Control": "private, max-age=300"}
    return Response(data, media_type=mime, headers=headers)


@app.get(
    "/datasets/{dataset_id}/files/{doc_id}/original",
    response_class=Response,
    responses={**_IMAGE_RESPONSE, 502: {"model": ErrorOut, "description": "source unreadable"}},
)
def get_original(request: Request, ds: ReadableDataset, doc_id: DocId) -> Response:
    """The original file, read from the dataset version's source.

    Only a uri under that source is read (the document's, never one from the request). Files
    that are not a supported raster image are sent as a download, never shown inline.
    """
    from imageindex.sources import local_path_from_uri, open_source

    doc = _get_doc(ds, doc_id)
    version = ds.version(doc["dataset_version"])
    uri = doc["uri"]
    headers = {**_FILE_HEADERS, "Cache-Control": "private, max-age=300"}
    outside = HTTPException(403, f"{uri} is outside the source of {ds.id}/{version.name}")
    local = uri.startswith("file:") and (version.manifest or not version.is_s3)
    if local:
        # Streamed from disk (FileResponse: ranges, its own ETag from size and mtime).
        path = local_path_from_uri(uri)
        if not version.manifest:
            # LocalSource.read_bytes's check, made before the file is opened. A logical
            # version's files may live under any root: its index only holds uris its manifest
            # listed, and this uri comes from the index, never from the request.
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
        return _file_response(path, head, doc, headers)
    if not version.is_s3 and not version.manifest:
        raise outside
    etag = _etag(uri, doc.get("fingerprint"))  # an S3 ETag: changes with the content
    if _not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": etag})
    if version.manifest:
        from imageindex.sources import S3Source

        bucket_root = "s3://" + uri[len("s3://") :].split("/", 1)[0] + "/"
        source = S3Source(bucket_root, conn_id=_s3_conn_id(ds))
    else:
        source = open_source(version.source, s3_conn_id=_s3_conn_id(ds))
    try:
        data = source.read_bytes(uri)
    except SourceError as exc:
        if "outside the source" in str(exc):
            raise outside from None
        raise
    mime = sniff_image_type(data[:16])
    if mime is None:
        headers["Content-Disposition"] = _attachment(doc)
        mime = "application/octet-stream"
    return Response(data, media_type=mime, headers={**headers, "ETag": etag})


def _attachment(doc: dict) -> str:
    from urllib.parse import quote

    return f"attachment; filename*=UTF-8''{quote(doc.get('file_name') or 'image')}"


def _file_response(path: Path, head: bytes, doc: dict, headers: dict) -> Response:
    mime = sniff_image_type(head)
    if mime is None:
        headers["Content-Disposition"] = _attachment(doc)
        mime = "application/octet-stream"
    return FileResponse(path, media_type=mime, headers=headers, content_disposition_type="inline")


# --------------------------------------------------------------------------------------------
# user tags


def _change_tags(ds, ids: list[str], tags: list[str], add: bool) -> dict:
    tags = _clean_tags(tags, "tags")
    if not tags or len(tags) > MAX_TAGS_PER_REQUEST:
        raise HTTPException(400, f"give 1-{MAX_TAGS_PER_REQUEST} non-empty tags")
    ids = list(dict.fromkeys(ids))
    if not ids or len(ids) > MAX_IDS_PER_REQUEST:
        raise HTTPException(400, f"give 1-{MAX_IDS_PER_REQUEST} document ids")
    if any(not re.fullmatch(_DOC_ID, i) for i in ids):
        raise HTTPException(400, "document ids are 32 lowercase hex characters")
    store = _store(ds)
    found = {d["id"] for d in store.get(ds.id, ids)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise HTTPException(404, f"dataset '{ds.id}' has no document {missing[0]}")
    change = store.add_user_tags if add else store.remove_user_tags
    changed = change(ds.id, ids, tags)
    docs = store.get(ds.id, ids)
    return {
        "changed": changed,
        "documents": [
            {
                "id": d["id"],
                "tags": {"ai": d.get("tags_ai") or [], "user": d.get("tags_user") or []},
            }
            for d in docs
        ],
    }


@app.post("/datasets/{dataset_id}/files/{doc_id}/tags", response_model=TagsOut, responses=_ERRORS)
def add_tags(ds: EditableDataset, doc_id: DocId, body: TagsBody) -> dict:
    """Add user tags to one document (ai tags are never changed; user tags survive re-indexing)."""
    return _change_tags(ds, [doc_id], body.tags, add=True)


@app.delete("/datasets/{dataset_id}/files/{doc_id}/tags", response_model=TagsOut, responses=_ERRORS)
def remove_tags(ds: EditableDataset, doc_id: DocId, body: TagsBody) -> dict:
    """Remove user tags from one document."""
    return _change_tags(ds, [doc_id], body.tags, add=False)


@app.post("/datasets/{dataset_id}/tags", response_model=TagsOut, responses=_ERRORS)
def add_tags_bulk(ds: EditableDataset, body: BulkTagsBody) -> dict:
    """Add user tags to several documents (a selection in the gallery)."""
    return _change_tags(ds, body.ids, body.tags, add=True)


@app.delete("/datasets/{dataset_id}/tags", response_model=TagsOut, responses=_ERRORS)
def remove_tags_bulk(ds: EditableDataset, body: BulkTagsBody) -> dict:
    """Remove user tags from several documents."""
    return _change_tags(ds, body.ids, body.tags, add=False)


# --------------------------------------------------------------------------------------------
# export


class ExportBody(SearchBody):
    """A search (as for /search; ``top_k``/``cursor`` are ignored) and where its matches go."""

    format: str = Field("jsonl", description="jsonl, csv or parquet")
    name: str | None = Field(
        None, description="file name stem (letters, digits, . _ -); default: a timestamp"
    )
    limit: int | None = Field(
        None, description="at most this many files; text/image searches: default 100"
    )
    to_version: str | None = Field(
        None,
        description="register the export as this new logical version of the dataset (needs "
        "edit permission); index it with the dataset's DAG",
    )
    description: str = Field("", description="a note kept with a logical version")


class ExportOut(BaseModel):
    uri: str
    format: str
    count: int
    sha256: str
    bytes: int
    version: str | None = None
    download: str


_EXPORT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def _exports_dir(ds) -> str:
    from imageindex.config import settings

    return f"{settings().staging_root.rstrip('/')}/exports/{ds.id}"


@app.post("/datasets/{dataset_id}/export", response_model=ExportOut, responses=_ERRORS)
def export(request: Request, ds: ReadableDataset, user: User, body: ExportBody) -> dict:
    """Write every match of a search to a JSONL, CSV or Parquet file under the staging
    location's ``exports/<dataset>/`` (never a path chosen by the caller), or register it as a
    logical dataset version. The file appears atomically; its row count and SHA-256 come back
    with a download link."""
    from imageindex.export import export_search, export_version
    from imageindex.manifest import FORMATS

    if body.format not in FORMATS:
        raise HTTPException(400, f"format must be one of {', '.join(FORMATS)}")
    if body.name is not None and (not _EXPORT_NAME.match(body.name) or body.name in (".", "..")):
        raise HTTPException(400, "name may hold letters, digits, '.', '_' and '-' only")
    if body.limit is not None and body.limit < 1:
        raise HTTPException(400, "limit must be at least 1")
    req = _search_request(ds, body, None)
    req.top_k, req.cursor = min(body.limit or 100, 1000), None
    try:
        req.validate()
    except ConfigError as exc:
        raise HTTPException(400, _api_words(str(exc))) from None
    if body.to_version:
        if not is_authorized(user, ds.id, "PUT"):
            raise HTTPException(403, f"registering a version of '{ds.id}' needs edit permission")
        dest = f"{_exports_dir(ds)}/{body.to_version}.{body.format}"
        result = export_version(
            req, body.to_version, dest=dest, limit=body.limit, description=body.description
        )
    else:
        stem = body.name or datetime.now(UTC).strftime("export-%Y%m%dT%H%M%S%fZ")
        dest = f"{_exports_dir(ds)}/{stem}.{body.format}"
        result = export_search(req, dest, fmt=body.format, limit=body.limit)
    root = request.scope.get("root_path", "").rstrip("/")
    name = result.uri.rsplit("/", 1)[-1]
    return {**result.to_dict(), "download": f"{root}/datasets/{ds.id}/exports/{name}"}


@app.get("/datasets/{dataset_id}/exports/{name}", responses=_ERRORS)
def download_export(ds: ReadableDataset, name: str) -> Response:
    """An export file of this dataset (or its ``.sha256``)."""
    from imageindex.config import settings
    from imageindex.staging import open_staging

    if not _EXPORT_NAME.match(name) or name in (".", ".."):
        raise HTTPException(404, "no such export")
    staging = open_staging(settings().staging_root, s3_conn_id=_s3_conn_id(ds))
    try:
        data = staging.read_bytes(f"{_exports_dir(ds)}/{name}")
    except FileNotFoundError:
        raise HTTPException(404, f"no export named {name!r} for dataset '{ds.id}'") from None
    return Response(
        data,
        media_type="application/octet-stream",
        headers={**_FILE_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'},
    )


# --------------------------------------------------------------------------------------------
# the page and the API description


@app.get("/openapi.json", include_in_schema=False)
def openapi(user: User) -> dict:
    return app.openapi()


@app.get("/docs", include_in_schema=False)
def docs(request: Request, user: User) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="imageindex API")


async def _page_user(request: Request, credentials) -> Any | None:
    try:
        return await airflow_user(request, credentials)
    except HTTPException as exc:
        if exc.status_code in (401, 403):
            return None
        raise


@app.get("/ui", include_in_schema=False)
async def page_redirect(request: Request) -> RedirectResponse:
    return RedirectResponse(f"{request.scope.get('root_path', '').rstrip('/')}/ui/")


@app.get("/ui/", include_in_schema=False)
@app.get("/ui/{name}", include_in_schema=False)
async def page(
    request: Request,
    name: str = "index.html",
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> Response:
    """The "View Data" page; someone not logged in is sent to Airflow's login and back."""
    if name not in STATIC_FILES:
        raise HTTPException(404, "no such page")
    if await _page_user(request, credentials) is None:
        if name != "index.html":
            raise HTTPException(401, "Not authenticated")
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)))
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if name == "index.html":
        headers["Content-Security-Policy"] = _PAGE_CSP
    return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name], headers=headers)
