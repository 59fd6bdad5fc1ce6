"""Embedders: images and texts into one vector space. ``get_embedder(spec)`` picks one.

Importing this package needs only numpy; the model packages (the ``models`` extra) are imported
when an embedder first runs. Hosted embedders (``dashscope``, ``gme``) need the ``dashscope`` SDK
and ``requests``, and read their credentials from an Airflow connection at the first request.
"""

from __future__ import annotations

import json
import threading

from imageindex.embedders.base import Embedder, ImageEmbeddings
from imageindex.errors import ConfigError

__all__ = [
    "Embedder",
    "ImageEmbeddings",
    "get_embedder",
    "clear_embedder_cache",
    "model_input_size",
    "EMBEDDER_TYPES",
]

#: spec["type"] -> allowed keys besides "type" (with their defaults)
EMBEDDER_TYPES: dict[str, dict] = {
    "offline": {"batch_size": 32, "top_k_classes": 10, "backend": "onnx", "threads": None},
    # Hosted models (the dashscope SDK / requests); credentials come from the Airflow connection.
    # ``dimension`` and ``batch_size`` None: the model's default size and request limit.
    "dashscope": {
        "model": "tongyi-embedding-vision-plus",
        "conn_id": "dashscope_default",
        "dimension": None,
        "concurrency": 5,
        "batch_size": None,
        "max_retries": 5,
        "retry_base_delay": 1.0,
        "timeout": 60.0,
    },
    "gme": {
        "model": "gme-2b",
        "conn_id": "gme_eas_default",
        "dimension": None,
        "concurrency": 5,
        "batch_size": 8,
        "max_retries": 5,
        "retry_base_delay": 1.0,
        "timeout": 60.0,
    },
}

_lock = threading.Lock()
_instances: dict[str, Embedder] = {}


def _normalize(spec: dict | None) -> dict:
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ConfigError(
            f"embedder spec must be a mapping like {{type: offline}}, got {type(spec).__name__}"
        )
    kind = spec.get("type", "offline")
    if kind not in EMBEDDER_TYPES:
        # Registry order: the default (offline) first.
        raise ConfigError(
            f"embedder type {kind!r} is unknown; valid types: {', '.join(EMBEDDER_TYPES)}"
        )
    allowed = EMBEDDER_TYPES[kind]
    unknown = sorted(set(spec) - set(allowed) - {"type"})
    if unknown:
        raise ConfigError(
            f"embedder {kind!r}: unknown key(s) {unknown}; valid keys: {sorted(allowed)}"
        )
    return {"type": kind, **allowed, **{k: v for k, v in spec.items() if k != "type"}}


def get_embedder(spec: dict | None = None) -> Embedder:
    """The embedder for a registry spec, e.g. ``{"type": "offline"}`` (the default).

    Instances are cached per process by their spec (defaults filled in), so models load once per
    worker however many shards or searches use them. Thread-safe.
    """
    full = _normalize(spec)
    try:
        key = json.dumps(full, sort_keys=True)
    except TypeError as exc:
        raise ConfigError(f"embedder spec {spec!r} has values that are not plain data") from exc
    with _lock:
        embedder = _instances.get(key)
        if embedder is None:
            embedder = _build(full)
            _instances[key] = embedder
    return embedder


def model_input_size(spec: dict | None = None) -> int | None:
    """Side of the square pixel input that the spec's embedder takes, or None when it takes the
    JPEG itself (hosted models). Reads class settings only: no model, package or credential."""
    cls = _class(_normalize(spec)["type"])
    return None if cls.wants_jpeg else cls.input_size


def _class(kind: str) -> type[Embedder]:
    if kind == "offline":
        from imageindex.embedders.offline import OfflineEmbedder

        return OfflineEmbedder
    if kind == "dashscope":
        from imageindex.embedders.dashscope import DashScopeEmbedder

        return DashScopeEmbedder
    if kind == "gme":
        from imageindex.embedders.gme import GmeEmbedder

        return GmeEmbedder
    raise AssertionError(kind)  # _normalize rejected it already


def _build(full: dict) -> Embedder:
    return _class(full["type"])(**{k: v for k, v in full.items() if k != "type"})


def clear_embedder_cache() -> None:
    """Forget cached instances (tests; a changed model cache folder)."""
    with _lock:
        _instances.clear()
