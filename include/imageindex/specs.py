"""What the registry declares, as plain frozen values: a dataset (:class:`DatasetSpec`) and its
versions (:class:`VersionSpec`), the stage names and the name rules they are checked against.

No I/O and no imageindex module but config and errors: the YAML loader (``registry``), the
logical versions (``versions``), the pipeline, the read side (search, export, loader) and the
plugin all import these values from here, so none of them has to import another for a type.

Logical versions (registered by an export, kept in staging) are looked up through the
:class:`LogicalVersions` the loader attaches to each dataset (``versions.STAGING_VERSIONS``), so
``dataset.version(name)`` finds them without this module knowing where they are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from imageindex.config import settings
from imageindex.errors import RegistryError

#: The pipeline's stages, in DAG order: task ids, fault points, ``tasks:`` keys in the registry.
STAGES = ("plan", "preprocess", "tag_embed", "upsert", "finalize")
#: Dataset ids: what a DAG id, a table name and a staging folder can all hold.
DATASET_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Version names (declared or logical).
VERSION_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class VersionSpec:
    name: str
    #: normalized: "s3://bucket/prefix" or an absolute local path; for a logical version
    #: (``manifest`` true), the uri of the manifest file that lists its files.
    source: str
    manifest: bool = False

    @property
    def is_s3(self) -> bool:
        return self.source.startswith("s3://")


class LogicalVersions(Protocol):
    """Where a dataset's logical versions are kept (implemented by ``versions``)."""

    def lookup(self, dataset: DatasetSpec, name: str) -> VersionSpec | None: ...

    def all(self, dataset: DatasetSpec) -> dict[str, VersionSpec]: ...


@dataclass(frozen=True)
class DatasetSpec:
    id: str
    versions: dict[str, VersionSpec]
    current_version: str
    description: str = ""
    tagger: dict = field(default_factory=lambda: {"type": "offline"})
    embedder: dict = field(default_factory=lambda: {"type": "offline"})
    store: dict = field(default_factory=dict)
    #: a preset or cron expression, a tuple of asset uris (asset-triggered), or None (manual)
    schedule: str | tuple[str, ...] | None = None
    #: with a time schedule, also run the intervals missed since the DAG's start date
    catchup: bool = False
    fingerprint: str = "stat"
    s3_conn_id: str | None = None
    shard_size: int | None = None
    tags: tuple[str, ...] = ()
    #: Airflow settings per stage, e.g. {"tag_embed": {"pool": "dashscope", "queue": "gpu"}}
    tasks: dict = field(default_factory=dict)
    base_dir: Path = Path(".")
    #: root of the per-version Parquet feature tables; None: $IMAGEINDEX_FEATURES; "" = off
    feature_table: str | None = None
    #: where logical versions are looked up (the loader sets it); None: declared versions only
    logical: LogicalVersions | None = field(default=None, compare=False, repr=False)

    def version(self, name: str | None = None) -> VersionSpec:
        """A version declared in the registry, or a logical version registered by an export."""
        name = name or self.current_version
        if name in self.versions:
            return self.versions[name]
        found = self.logical.lookup(self, name) if self.logical is not None else None
        if found is not None:
            return found
        known = ", ".join(sorted(self.versions))
        raise RegistryError(
            f"dataset '{self.id}' has no version '{name}' (known versions: {known}, plus "
            "logical versions registered by exports)"
        )

    def all_versions(self) -> dict[str, VersionSpec]:
        """Declared versions, then registered logical versions (reads the staging root)."""
        registered = self.logical.all(self) if self.logical is not None else {}
        return {**registered, **self.versions}

    @property
    def store_uri(self) -> str:
        return self.store.get("uri") or settings().store_uri
