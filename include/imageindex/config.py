"""Settings read from the environment, with defaults that work on a laptop.

Every setting has one environment variable; Airflow workers, the CLI and tests read the same ones.

==============================  =======================================  =========================
variable                        meaning                                  default
==============================  =======================================  =========================
IMAGEINDEX_HOME                 where local state lives                  the registry's ``home``
IMAGEINDEX_REGISTRY             the dataset registry (YAML)              found, see below
IMAGEINDEX_STAGING              staging root (dir or ``s3://…``)         ``$HOME/staging``
IMAGEINDEX_STORE                default store URI                        ``$HOME/lancedb``
IMAGEINDEX_FEATURES             feature tables (dir or ``s3://…``)       ``$STAGING/features``
IMAGEINDEX_MODEL_CACHE          exported models, label embeddings        ``~/.cache/imageindex``
IMAGEINDEX_S3_CONN_ID           Airflow connection for S3                ``aws_default``
IMAGEINDEX_SHARD_SIZE           files per shard (target)                 ``500``
IMAGEINDEX_MAX_SHARDS           cap on mapped shards per run             ``256``
IMAGEINDEX_RETRIES              task retries                             ``3``
IMAGEINDEX_RETRY_DELAY_S        first retry delay, doubles each retry    ``30``
IMAGEINDEX_MAX_DELETE_FRACTION  refuse deletes above this share          ``0.5``
IMAGEINDEX_RUN_LEASE_S          a version's run lease, seconds           ``86400``
IMAGEINDEX_TASK_TIMEOUT_S       default Airflow task execution timeout   ``21600``
==============================  =======================================  =========================

Without ``IMAGEINDEX_REGISTRY`` the registry is ``$IMAGEINDEX_HOME/registry.yaml`` when that
variable is set and the file exists, else the nearest ``config/registry.yaml`` in the current
folder or a folder above it (a project checkout, as after ``make demo``), else
``./.imageindex/registry.yaml``. Without ``IMAGEINDEX_HOME`` local state lives where the
registry's top-level ``home:`` says (relative to the registry's folder; the project's
``config/registry.yaml`` says ``../var``, where ``make demo`` and ``make standalone`` put it),
else in ``./.imageindex``. Set variables always win, so Airflow workers and containers are
unaffected by the folder they start in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from imageindex.errors import ConfigError


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"setting {name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"setting {name}={value} must be >= {minimum}")
    return value


def _float(name: str, default: float, lo: float, hi: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"setting {name}={raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise ConfigError(f"setting {name}={value} must be between {lo} and {hi}")
    return value


@dataclass(frozen=True)
class Settings:
    home: Path
    registry_path: Path
    staging_root: str
    store_uri: str
    features_root: str
    s3_conn_id: str
    shard_size: int
    max_shards: int
    retries: int
    retry_delay_s: float
    max_delete_fraction: float
    run_lease_s: int
    task_timeout_s: int

    @classmethod
    def from_env(cls) -> Settings:
        registry = find_registry()
        home = _home(registry)
        staging = os.environ.get("IMAGEINDEX_STAGING") or str(home / "staging")
        return cls(
            home=home,
            registry_path=registry,
            staging_root=staging,
            store_uri=os.environ.get("IMAGEINDEX_STORE") or str(home / "lancedb"),
            features_root=os.environ.get("IMAGEINDEX_FEATURES")
            or f"{staging.rstrip('/')}/features",
            s3_conn_id=os.environ.get("IMAGEINDEX_S3_CONN_ID") or "aws_default",
            shard_size=_int("IMAGEINDEX_SHARD_SIZE", 500, minimum=1),
            # Airflow's default max_map_length is 1024; stay well below so a run always maps.
            max_shards=_int("IMAGEINDEX_MAX_SHARDS", 256, minimum=1),
            retries=_int("IMAGEINDEX_RETRIES", 3),
            retry_delay_s=_float("IMAGEINDEX_RETRY_DELAY_S", 30.0, 0.0, 86400.0),
            max_delete_fraction=_float("IMAGEINDEX_MAX_DELETE_FRACTION", 0.5, 0.0, 1.0),
            run_lease_s=_int("IMAGEINDEX_RUN_LEASE_S", 86400, minimum=1),
            task_timeout_s=_int("IMAGEINDEX_TASK_TIMEOUT_S", 21600, minimum=1),
        )


PROJECT_REGISTRY = Path("config") / "registry.yaml"
DEFAULT_HOME = Path(".imageindex")


def find_registry(start: Path | None = None) -> Path:
    """The registry this process uses; see the module docstring for the order."""
    explicit = os.environ.get("IMAGEINDEX_REGISTRY")
    if explicit:
        return Path(explicit)
    home = os.environ.get("IMAGEINDEX_HOME")
    if home and (Path(home) / "registry.yaml").is_file():
        return Path(home) / "registry.yaml"
    folder = (start or Path.cwd()).absolute()
    for candidate in (folder, *folder.parents):
        if (candidate / PROJECT_REGISTRY).is_file():
            return candidate / PROJECT_REGISTRY
    return Path(home or DEFAULT_HOME).absolute() / "registry.yaml"


# (path, mtime_ns, size) -> the registry's ``home``: settings() is read on every call.
_HOME_CACHE: dict[tuple[str, int, int], Path | None] = {}


def registry_home(registry: Path) -> Path | None:
    """The registry's top-level ``home:`` as an absolute path (relative to its folder), if any."""
    try:
        st = registry.stat()
    except OSError:
        return None
    key = (str(registry.absolute()), st.st_mtime_ns, st.st_size)
    if key not in _HOME_CACHE:
        import yaml

        try:
            raw = yaml.safe_load(registry.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            raw = None  # load_registry reports a broken file with its own message
        value = raw.get("home") if isinstance(raw, dict) else None
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{registry}: field 'home' must be a path (a string)")
        _HOME_CACHE[key] = (registry.absolute().parent / value).resolve() if value else None
    return _HOME_CACHE[key]


def _home(registry: Path) -> Path:
    explicit = os.environ.get("IMAGEINDEX_HOME")
    if explicit:
        return Path(explicit).absolute()
    return registry_home(registry) or DEFAULT_HOME.absolute()


def settings() -> Settings:
    """Current settings (read each call, so tests can change the environment)."""
    return Settings.from_env()
