"""Where every file imageindex keeps lives, and which S3 connection opens it: the one owner of
staging paths and of a dataset's connection id. Nothing else builds these paths from strings.

Under the staging root (``IMAGEINDEX_STAGING``), which every worker, the CLI and the API share::

    runs/<dataset>/<version>/<run>/        one index run (:class:`RunFolder`)
        plan.json  todo.parquet  deletes.parquet  report.json
        shards/00000/                      one shard (:class:`ShardFolder`)
            manifest.parquet  preprocessed.parquet  model_input.parquet
            features.parquet  upserted.json
    leases/<dataset>/<version>.json        the run that holds the version (pipeline.lease)
    thumbnails/<dataset>/<id[:2]>/<id>.jpg thumbnails; they outlive runs (search shows them)
    versions/<dataset>/<name>.json         logical versions registered by exports
    exports/<dataset>/<name>.parquet       exports (default location)

Feature tables live apart, under the dataset's ``feature_table`` root or
``IMAGEINDEX_FEATURES``: ``<root>/<dataset>/<version>/features.parquet``.

Paths only: no I/O but :func:`open_dataset_staging`, which opens a location with the dataset's
connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imageindex.config import settings
from imageindex.errors import ConfigError

if TYPE_CHECKING:
    from imageindex.specs import DatasetSpec
    from imageindex.staging import Staging

PLAN_FILE = "plan.json"
TODO_FILE = "todo.parquet"
DELETES_FILE = "deletes.parquet"
REPORT_FILE = "report.json"
MANIFEST_FILE = "manifest.parquet"
PREPROCESSED_FILE = "preprocessed.parquet"
MODEL_INPUT_FILE = "model_input.parquet"
FEATURES_FILE = "features.parquet"
UPSERTED_FILE = "upserted.json"
#: Shard stages in DAG order, each with the file it leaves in the shard folder when it is done.
SHARD_OUTPUTS = (
    ("preprocess", PREPROCESSED_FILE),
    ("tag_embed", FEATURES_FILE),
    ("upsert", UPSERTED_FILE),
)


def s3_conn_id(dataset: DatasetSpec | None = None, override: str | None = None) -> str:
    """The S3 connection of a dataset's files and staging: ``override`` (a caller's explicit
    choice), else the dataset's ``s3_conn_id``, else ``IMAGEINDEX_S3_CONN_ID``."""
    return override or (dataset.s3_conn_id if dataset else None) or settings().s3_conn_id


def safe_run_name(run_id: str) -> str:
    """Airflow run ids hold ':' and '+'; keep staging keys portable across filesystems and S3."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_")
    if not name:
        raise ConfigError(f"run id {run_id!r} gives an empty staging folder name")
    return name[:200]


def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0]


@dataclass(frozen=True)
class ShardFolder:
    """``<run>/shards/<n>/``: one shard's files, one per stage."""

    uri: str

    @classmethod
    def of(cls, file_uri: str) -> ShardFolder:
        """The shard folder of one of its files (a stage gets its input file's uri)."""
        return cls(_parent(file_uri))

    @property
    def manifest(self) -> str:
        return f"{self.uri}/{MANIFEST_FILE}"

    @property
    def preprocessed(self) -> str:
        return f"{self.uri}/{PREPROCESSED_FILE}"

    @property
    def model_input(self) -> str:
        return f"{self.uri}/{MODEL_INPUT_FILE}"

    @property
    def features(self) -> str:
        return f"{self.uri}/{FEATURES_FILE}"

    @property
    def upserted(self) -> str:
        return f"{self.uri}/{UPSERTED_FILE}"

    @property
    def relative(self) -> str:
        """``shards/<n>``: the folder relative to its run folder."""
        return "/".join(self.uri.rsplit("/", 2)[-2:])


@dataclass(frozen=True)
class RunFolder:
    """``runs/<dataset>/<version>/<run>/``: one index run's plan, shards and report."""

    uri: str

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    @property
    def plan(self) -> str:
        return f"{self.uri}/{PLAN_FILE}"

    @property
    def todo(self) -> str:
        return f"{self.uri}/{TODO_FILE}"

    @property
    def deletes(self) -> str:
        return f"{self.uri}/{DELETES_FILE}"

    @property
    def report(self) -> str:
        return f"{self.uri}/{REPORT_FILE}"

    def shard(self, index: int) -> ShardFolder:
        return ShardFolder(f"{self.uri}/shards/{index:05d}")


@dataclass(frozen=True)
class StagingLayout:
    """The staging root's folders; :meth:`current` is the one ``IMAGEINDEX_STAGING`` names."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", str(self.root).rstrip("/"))

    @classmethod
    def current(cls) -> StagingLayout:
        return cls(settings().staging_root)

    def runs(self, dataset_id: str, version: str) -> str:
        """The folder holding every run folder of a dataset version."""
        return f"{self.root}/runs/{dataset_id}/{version}"

    def run(self, dataset_id: str, version: str, run_id: str) -> RunFolder:
        """The folder of the run ``run_id`` (an Airflow run id; made safe for any filesystem)."""
        return RunFolder(f"{self.runs(dataset_id, version)}/{safe_run_name(run_id)}")

    def run_named(self, dataset_id: str, version: str, name: str) -> RunFolder:
        """A run folder by its folder name (as listed, or given in a URL), not by run id."""
        if not name or "/" in name or name in (".", ".."):
            raise ConfigError(f"{name!r} is not a run folder name (one path segment)")
        return RunFolder(f"{self.runs(dataset_id, version)}/{name}")

    def lease(self, dataset_id: str, version: str) -> str:
        return f"{self.root}/leases/{dataset_id}/{version}.json"

    def thumbnails(self, dataset_id: str) -> str:
        return f"{self.root}/thumbnails/{dataset_id}"

    def thumbnail(self, dataset_id: str, doc_id: str) -> str:
        return f"{self.thumbnails(dataset_id)}/{doc_id[:2]}/{doc_id}.jpg"

    def versions(self, dataset_id: str) -> str:
        return f"{self.root}/versions/{dataset_id}"

    def version_record(self, dataset_id: str, name: str) -> str:
        return f"{self.versions(dataset_id)}/{name}.json"

    def exports(self, dataset_id: str) -> str:
        return f"{self.root}/exports/{dataset_id}"

    def export_manifest(self, dataset_id: str, version: str) -> str:
        return f"{self.exports(dataset_id)}/{version}.parquet"


def feature_table_uri(dataset: DatasetSpec, version: str) -> str | None:
    """Where the version's feature table lives; None when the dataset turns it off."""
    root = dataset.feature_table
    if root == "":
        return None
    root = (root or settings().features_root).rstrip("/")
    return f"{root}/{dataset.id}/{version}/features.parquet"


def open_dataset_staging(
    dataset: DatasetSpec | None, root: str | None = None, *, conn_id: str | None = None
) -> Staging:
    """The location ``root`` (default: the staging root) opened with the dataset's connection
    (or ``conn_id``, a caller's explicit choice); reading or writing outside it is refused."""
    from imageindex.staging import open_staging

    return open_staging(root or settings().staging_root, s3_conn_id=s3_conn_id(dataset, conn_id))
