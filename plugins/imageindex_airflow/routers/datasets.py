"""``/datasets``: the registry's datasets the caller may read, with indexed counts per version and
each version's last run."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from imageindex.errors import ImageIndexError
from imageindex_airflow.auth import ReadableDataset, User, dag_id_of, is_authorized
from imageindex_airflow.library import staging_of, store_of
from imageindex_airflow.schemas import ERRORS, DatasetOut, DatasetsOut

router = APIRouter()


@router.get("/datasets", response_model=DatasetsOut, responses={401: ERRORS[401]})
def list_datasets(user: User) -> dict:
    """The registry's datasets the caller may read, with indexed counts and the last run."""
    from imageindex.registry import load_registry

    datasets = [
        _dataset_out(ds, user)
        for ds in load_registry().datasets.values()
        if is_authorized(user, ds.id, "GET")
    ]
    return {"datasets": datasets}


@router.get("/datasets/{dataset_id}", response_model=DatasetOut, responses=ERRORS)
def get_dataset(ds: ReadableDataset, user: User) -> dict:
    """One dataset with indexed counts per version and each version's last run."""
    return _dataset_out(ds, user)


def _dataset_out(ds, user) -> dict:
    all_versions, counts, error = _counts(ds)
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


def _counts(ds) -> tuple[dict, dict[str, tuple[int, int]], str | None]:
    """The dataset's versions, ``{version: (documents, ok documents)}``, and why counts are
    missing, if they are: neither a broken export nor an unreachable store may hide the dataset
    (or the other datasets)."""
    from imageindex.stores.base import Filter
    from imageindex.stores.schema import STATUS_OK

    counts: dict[str, tuple[int, int]] = {}
    error = None
    try:
        all_versions = ds.all_versions()  # declared ones, then logical versions from exports
    except ImageIndexError as exc:
        all_versions, error = dict(ds.versions), str(exc)
    try:
        store = store_of(ds)
        if store.table_info(ds.id) is not None:
            for v in all_versions:
                total = store.count(ds.id, Filter(versions=[v], status=None))
                counts[v] = (total, store.count(ds.id, Filter(versions=[v], status=STATUS_OK)))
    except ImageIndexError as exc:
        counts, error = {}, str(exc)
    return all_versions, counts, error


def _last_run(ds, version: str) -> dict | None:
    """The version's newest run report in staging; None when there is none (or no access)."""
    from imageindex_airflow.runs import last_report

    try:
        report = last_report(staging_of(ds), ds.id, version)
    except (ImageIndexError, OSError, ValueError):
        return None
    if report is None:
        return None
    keys = ("run", "finished_at", "mode", "listed", "new", "changed", "deleted", "failed")
    return {k: report.get(k) for k in (*keys, "indexed_ok", "refused_delete")}


def _tag_names(ds) -> list[str]:
    path = (ds.tagger or {}).get("definitions")
    if not path:
        return []
    try:
        from imageindex.taggers.definitions import load_tag_definitions

        return list(load_tag_definitions(path).tags)
    except (ImageIndexError, OSError):  # a broken definitions file must not hide the dataset
        return []
