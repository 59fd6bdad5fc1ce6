"""``/datasets/{id}/versions/{version}/runs``: a version's index runs, files done per stage while
in flight, the report afterwards (read from staging by :mod:`imageindex_airflow.runs`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam

from imageindex_airflow.auth import ReadableDataset
from imageindex_airflow.library import staging_of
from imageindex_airflow.schemas import ERRORS, RunOut, RunsOut

router = APIRouter()

_RUN_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$"
RunName = Annotated[str, PathParam(pattern=_RUN_NAME, description="run folder (see RunOut.run)")]
VersionName = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="version")]


def _version_name(ds, version: str) -> str:
    from imageindex.errors import RegistryError

    try:
        return ds.version(version).name
    except RegistryError as exc:
        raise HTTPException(404, str(exc)) from None


@router.get(
    "/datasets/{dataset_id}/versions/{version}/runs", response_model=RunsOut, responses=ERRORS
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

    name = _version_name(ds, version)
    return {
        "dataset_id": ds.id,
        "version": name,
        "runs": runs_of(staging_of(ds), ds.id, name, limit=limit),
    }


@router.get(
    "/datasets/{dataset_id}/versions/{version}/runs/{run}", response_model=RunOut, responses=ERRORS
)
def get_run(ds: ReadableDataset, version: VersionName, run: RunName) -> dict:
    """One run of the version, as in the list (poll it while the run is in flight)."""
    from imageindex_airflow.runs import get_run as run_of

    name = _version_name(ds, version)
    found = run_of(staging_of(ds), ds.id, name, run)
    if found is None:
        raise HTTPException(404, f"dataset '{ds.id}' version '{name}' has no run '{run}'")
    return found
