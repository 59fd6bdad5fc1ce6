"""Taggers turn one batch of images (their embeddings, or for hosted taggers the thumbnails) into
tags. ``get_tagger(spec, embedder)`` picks one."""

from __future__ import annotations

from pathlib import Path

from imageindex.embedders.base import Embedder
from imageindex.errors import ConfigError
from imageindex.taggers.base import NullTagger, Tagger
from imageindex.taggers.definitions import (
    TagDefinitions,
    load_tag_definitions,
    parse_tag_definitions,
)

__all__ = [
    "Tagger",
    "NullTagger",
    "TagDefinitions",
    "TAGGER_TYPES",
    "get_tagger",
    "load_tag_definitions",
    "parse_tag_definitions",
]

#: spec["type"] -> keys allowed besides "type"
TAGGER_TYPES: dict[str, tuple[str, ...]] = {
    "offline": ("definitions", "class_threshold", "max_classes", "definition_threshold"),
    "none": (),
    # Qwen-VL on DashScope looks at each thumbnail; ``definitions`` is required.
    "qwen_vl": (
        "definitions",
        "model",
        "conn_id",
        "concurrency",
        "max_retries",
        "retry_base_delay",
        "timeout",
    ),
}


def get_tagger(spec: dict | None, embedder: Embedder, *, base_dir: Path | None = None) -> Tagger:
    """The tagger for a registry spec, e.g. ``{"type": "offline", "definitions": "tags/x.json"}``.

    A relative ``definitions`` path is resolved against ``base_dir`` (the registry's folder),
    else the working directory. ``{"type": "none"}`` tags nothing. ``{"type": "qwen_vl",
    "model": "qwen-vl-max", "conn_id": "dashscope_default", "definitions": ...}`` asks Qwen-VL on
    DashScope about each thumbnail.
    """
    spec = {"type": "offline"} if spec is None else spec
    if not isinstance(spec, dict):
        raise ConfigError(
            f"tagger spec must be a mapping like {{type: offline}}, got {type(spec).__name__}"
        )
    kind = spec.get("type", "offline")
    if kind not in TAGGER_TYPES:
        raise ConfigError(
            f"tagger type {kind!r} is unknown; valid types: {', '.join(sorted(TAGGER_TYPES))}"
        )
    unknown = sorted(set(spec) - set(TAGGER_TYPES[kind]) - {"type"})
    if unknown:
        raise ConfigError(
            f"tagger {kind!r}: unknown key(s) {unknown}; valid keys: {list(TAGGER_TYPES[kind])}"
        )
    if kind == "none":
        return NullTagger()

    definitions = _definitions(spec.get("definitions"), base_dir)
    if kind == "qwen_vl":
        from imageindex.taggers.qwen_vl import QwenVLTagger

        if definitions is None:
            raise ConfigError(
                "tagger 'qwen_vl' needs 'definitions': the path of a tag definitions file "
                "(guide prompt and tag name -> description)"
            )
        options = {k: spec[k] for k in TAGGER_TYPES["qwen_vl"][1:] if k in spec}
        return QwenVLTagger(definitions, **options)

    from imageindex.taggers.offline import OfflineTagger

    options = {k: spec[k] for k in TAGGER_TYPES["offline"][1:] if k in spec}
    return OfflineTagger(embedder, definitions, **options)


def _definitions(raw_path: object, base_dir: Path | None) -> TagDefinitions | None:
    if raw_path in (None, ""):
        return None
    if not isinstance(raw_path, str | Path):
        raise ConfigError(f"tagger definitions must be a file path, got {raw_path!r}")
    path = Path(raw_path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return load_tag_definitions(path)
