"""Logical dataset versions: versions whose files are listed by a manifest, not by a prefix.

They come from the registry YAML (``versions: {picked: {manifest: s3://…/picked.parquet}}``)
or are registered at run time by an export (``imageindex export --to-version``). Registered
versions are small JSON records under ``<staging>/versions/<dataset>/<version>.json`` — the
staging root is the one location every Airflow worker, the CLI and the REST API share — and
are read only when a version is asked for by name, so parsing DAG files does no such I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime

from imageindex.errors import RegistryError
from imageindex.layout import StagingLayout, open_dataset_staging
from imageindex.specs import VERSION_NAME_RE, DatasetSpec, VersionSpec


def _record_uri(dataset_id: str, name: str) -> str:
    return StagingLayout.current().version_record(dataset_id, name)


def check_version_name(name: str) -> str:
    if not isinstance(name, str) or not VERSION_NAME_RE.match(name) or name in (".", ".."):
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
    check_version_name(name)
    if name in dataset.versions:
        raise RegistryError(
            f"dataset '{dataset.id}' already declares version '{name}' in the registry; "
            "pick another name"
        )
    staging = open_dataset_staging(dataset)
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
    try:
        check_version_name(name)
    except RegistryError:
        return None
    staging = open_dataset_staging(dataset)
    uri = _record_uri(dataset.id, name)
    try:
        record = staging.read_json(uri)
    except FileNotFoundError:
        return None
    return VersionSpec(name=name, source=record["manifest"], manifest=True)


def registered_versions(dataset: DatasetSpec) -> dict[str, VersionSpec]:
    """Every registered version of ``dataset`` by name (empty when there is none)."""
    staging = open_dataset_staging(dataset)
    folder = StagingLayout.current().versions(dataset.id)
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


class StagingVersions:
    """The :class:`~imageindex.specs.LogicalVersions` the registry loader gives every dataset:
    records under ``<staging>/versions/``, read only when a version is asked for by name."""

    def lookup(self, dataset: DatasetSpec, name: str) -> VersionSpec | None:
        return lookup_registered(dataset, name)

    def all(self, dataset: DatasetSpec) -> dict[str, VersionSpec]:
        return registered_versions(dataset)


STAGING_VERSIONS = StagingVersions()
