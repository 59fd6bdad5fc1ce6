"""Where derived model artefacts live: exported ONNX graphs, label and tag text embeddings.

The folder is ``$IMAGEINDEX_MODEL_CACHE`` (default ``~/.cache/imageindex/models``). Every file name
carries a content hash of everything the file was derived from (weights, texts, recipe version),
so a changed input gives a new name and a stale file is never read. Writes go to a temporary file
in the same folder and are renamed into place with :func:`os.replace`, so a reader sees either no
file or a complete one, even when several worker processes build the same file at once (they may
each do the work; the last rename wins and every candidate is identical).

The digests of the model files themselves (the keys above) are remembered in
``file-sha256.json`` by path, size, mtime and inode, so a fresh worker process (one per Airflow
task) does not read ~110 MB of weights to name the files it then loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from imageindex.errors import ConfigError

ENV_VAR = "IMAGEINDEX_MODEL_CACHE"

HASH_INDEX = "file-sha256.json"

_file_hash_lock = threading.Lock()
_file_hashes: dict[str, str] = {}
_index_read = False


def cache_dir() -> Path:
    """The cache folder, created if needed."""
    raw = os.environ.get(ENV_VAR)
    path = Path(raw).expanduser() if raw else Path.home() / ".cache" / "imageindex" / "models"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"model cache folder {path} cannot be created ({exc}); set {ENV_VAR} to a writable folder"
        ) from exc
    if not os.access(path, os.W_OK):
        raise ConfigError(
            f"model cache folder {path} is not writable; set {ENV_VAR} to one that is"
        )
    return path


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's content, memoised by (path, size, mtime, inode) in this process and in
    the cache folder's :data:`HASH_INDEX`."""
    global _index_read
    path = Path(path)
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    with _file_hash_lock:
        if not _index_read:
            _file_hashes.update(_read_hash_index())
            _index_read = True
        cached = _file_hashes.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _file_hash_lock:
        _file_hashes[key] = value
        # Merge with what other processes wrote meanwhile; a lost race only costs a re-hash.
        known = _read_hash_index() | {key: value}
        data = json.dumps(known, sort_keys=True, indent=0).encode()
        atomic_write(cache_dir() / HASH_INDEX, lambda tmp: tmp.write_bytes(data))
    return value


def _read_hash_index() -> dict[str, str]:
    try:
        known = json.loads((cache_dir() / HASH_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or damaged: hashes are recomputed and rewritten
        return {}
    if not isinstance(known, dict):
        return {}
    return {k: v for k, v in known.items() if isinstance(k, str) and isinstance(v, str)}


def content_hash(parts: Iterable[str | bytes], length: int = 16) -> str:
    """A short hex digest of ``parts``; each part is length-prefixed so boundaries matter."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:length]


def cache_path(stem: str, key: str, suffix: str) -> Path:
    """``<cache>/<stem>-<key><suffix>``, e.g. ``efficientnet-lite0-1a2b….onnx``."""
    return cache_dir() / f"{stem}-{key}{suffix}"


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); cached models are shared like any cache file.
        tmp.chmod(0o644)
        # Flush to disk before the rename so a crash cannot leave a renamed-but-empty file.
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def get_or_create_file(path: Path, create: Callable[[Path], None]) -> Path:
    """Return ``path``, building it first with ``create(tmp_path)`` when it does not exist."""
    if not path.exists():
        atomic_write(path, create)
    return path


def load_or_compute_array(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Load an ``.npy`` from the cache, or compute it and store it atomically.

    An unreadable file (e.g. a disk-full leftover from an older version without atomic writes) is
    recomputed and replaced instead of failing the caller.
    """
    if path.exists():
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            pass
    array = np.ascontiguousarray(compute())

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.save(fh, array, allow_pickle=False)

    atomic_write(path, write)
    return array
