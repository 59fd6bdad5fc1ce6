"""Logical dataset versions: versions whose files are listed by a manifest, not by a prefix.

They come from the registry YAML (``versions: {picked: {manifest: s3://…/picked.parquet}}``)
or are registered at run time by an export (``imageindex export --to-version``). Registered
versions are small JSON records under ``<staging>/versions/<dataset>/<version>.json`` — the
staging root is the one location every Airflow worker, the CLI and the REST API share — and
are read only when a version is asked for by name, so parsing DAG files does no such I/O.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from imageindex.config import settings
from imageindex.errors import RegistryError

if TYPE_CHECKING:
    from imageindex.registry import DatasetSpec, VersionSpec

_VERSION_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _staging(dataset: DatasetSpec):
    from imageindex.staging import open_staging

    return open_staging(
        settings().staging_root, s3_conn_id=dataset.s3_conn_id or settings().s3_conn_id
    )


def _record_uri(dataset_id: str, name: str) -> str:
    return f"{settings().staging_root.rstrip('/')}/versions/{dataset_id}/{name}.json"


def check_version_name(name: str) -> str:
    if not isinstance(name, str) or not _VERSION_RE.match(name) or name in (".", ".."):
        raise RegistryError(f"version name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return name


def register_version(
    dataset: DatasetSpec,
    name: str,
    manifest_uri: str,
    *,
    description: str = "",
    extra: dict | None = None,
    replace: bool = False,
) -> VersionSpec:
    """Record ``name`` as a version of ``dataset`` whose files are those of ``manifest_uri``.

    A name the registry YAML already declares is refused; so is an already registered one
    unless ``replace``.
    """
    from imageindex.registry import VersionSpec

    check_version_name(name)
    if name in dataset.versions:
        raise RegistryError(
            f"dataset '{dataset.id}' already declares version '{name}' in the registry; "
            "pick another name"
        )
    staging = _staging(dataset)
    uri = _record_uri(dataset.id, name)
    if not replace and staging.exists(uri):
        raise RegistryError(
            f"dataset '{dataset.id}' already has a registered version '{name}'; pick another "
            "name or replace it"
        )
    record = {
        "dataset_id": dataset.id,
        "version": name,
        "manifest": manifest_uri,
        "description": description,
        "created_at": datetime.now(UTC).isoformat(),
        **(extra or {}),
    }
    staging.write_json(uri, record)
    return VersionSpec(name=name, source=manifest_uri, manifest=True)


def lookup_registered(dataset: DatasetSpec, name: str) -> VersionSpec | None:
    """The registered version ``name`` of ``dataset``, or None."""
    from imageindex.registry import VersionSpec

    try:
        check_version_name(name)
    except RegistryError:
        return None
    staging = _staging(dataset)
    uri = _record_uri(dataset.id, name)
    try:
        record = staging.read_json(uri)
    except FileNotFoundError:
        return None
    return VersionSpec(name=name, source=record["manifest"], manifest=True)


def registered_versions(dataset: DatasetSpec) -> dict[str, VersionSpec]:
    """Every registered version of ``dataset`` by name (empty when there is none)."""
    from imageindex.registry import VersionSpec

    staging = _staging(dataset)
    folder = f"{settings().staging_root.rstrip('/')}/versions/{dataset.id}"
    out: dict[str, VersionSpec] = {}
    try:
        uris = sorted(staging.list(folder))
    except FileNotFoundError:
        return out
    for uri in uris:
        if not uri.endswith(".json"):
            continue
        record = staging.read_json(uri)
        out[record["version"]] = VersionSpec(
            name=record["version"], source=record["manifest"], manifest=True
        )
    return out
