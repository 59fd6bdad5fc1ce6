"""Request and response bodies of the imageindex REST API, and the limits they enforce.

Shared by every router; FastAPI turns them into the OpenAPI schema at ``/imageindex/openapi.json``.
Imports pydantic only: the plugin loader imports this in every Airflow process.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: The library's limit (imageindex.search.MAX_UPLOAD_BYTES, a test keeps them equal), repeated
#: so that a too-large upload is refused without importing the search stack.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_TAGS_PER_REQUEST = 50
MAX_TAG_LENGTH = 100
MAX_IDS_PER_REQUEST = 1000

# --------------------------------------------------------------------------------------------
# search


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


# --------------------------------------------------------------------------------------------
# datasets and runs


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


# --------------------------------------------------------------------------------------------
# user tags


class TagsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: list[str] = Field(description=f"1-{MAX_TAGS_PER_REQUEST} tags")


class BulkTagsBody(TagsBody):
    ids: list[str] = Field(description=f"document ids, at most {MAX_IDS_PER_REQUEST}")


class TagsOut(BaseModel):
    changed: int = Field(description="documents whose user tags changed")
    documents: list[dict[str, Any]] = Field(description="id and tags of each document")


# --------------------------------------------------------------------------------------------
# exports


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


# --------------------------------------------------------------------------------------------
# errors


class ErrorOut(BaseModel):
    detail: str


class QueryErrorOut(ErrorOut):
    column: int | None = Field(None, description="1-based column of the mistake in its line")
    line: int | None = None
    position: int | None = Field(None, description="0-based offset into the query")


#: Error answers every dataset route may give.
ERRORS = {
    400: {"model": QueryErrorOut, "description": "invalid request or query"},
    401: {"model": ErrorOut, "description": "not authenticated"},
    403: {"model": ErrorOut, "description": "no access to the dataset's DAG"},
    404: {"model": ErrorOut, "description": "unknown dataset or document, or nothing indexed"},
}

#: The answers of the routes that send an image.
IMAGE_RESPONSE = {
    200: {"content": {m: {} for m in ("image/jpeg", "image/png", "image/webp")}},
    **ERRORS,
}
