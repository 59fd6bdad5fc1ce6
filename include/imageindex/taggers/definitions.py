"""Smart-tag definition files: a guide prompt plus an object of tag name -> description.

The format follows the managed service's "intelligent tag definition" (a guide prompt and a JSON
object such as ``{"Parking locks": "... you must specify whether it is in the raised or lowered
state ..."}``). Accepted files:

* JSON or YAML ``{"guide_prompt": "...", "tags": {name: description, ...}}``, optionally with
  ``"states": {name: [state, ...]}`` to list a tag's states explicitly;
* a plain JSON/YAML object ``{name: description, ...}`` (guide prompt empty).

States are otherwise read from the description: "whether it is in the raised or lowered state",
"specify if it is open, closed or ajar", "whether it is lit or not", "distinguishing between
entering and exiting". Descriptive phrases ("either hanging or standing") are deliberately not
read as states: only a request to tell states apart is.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from imageindex.errors import ConfigError

MAX_TAGS = 200
MAX_NAME_LENGTH = 200
_TOP_KEYS = ("guide_prompt", "tags", "states")
_YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class TagDefinitions:
    guide_prompt: str
    tags: dict[str, str]  # name -> description, file order
    states: dict[str, list[str]]  # every tag name -> its states ([] when it has none)
    hash: str  # sha256 of the canonical content; recorded with each file's tags
    source: str = field(default="<inline>", compare=False)

    def __len__(self) -> int:
        return len(self.tags)


# ------------------------------------------------------------------------------------------------
# loading


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int | None = None):
        self.key = key
        self.line = line


def _no_duplicate_pairs(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def load_tag_definitions(path: str | Path) -> TagDefinitions:
    """Read and validate a definitions file; every error is a :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise ConfigError(
            f"tag definitions file {path}: {what}; fix the tagger's 'definitions' path"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"tag definitions file {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"tag definitions file {path}: cannot be read ({exc})") from exc
    if path.suffix.lower() in _YAML_SUFFIXES:
        obj = _parse_yaml(text, path)
    else:
        obj = _parse_json(text, path)
    return parse_tag_definitions(obj, source=str(path))


def _parse_json(text: str, path: Path) -> object:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_pairs)
    except _DuplicateKey as dup:
        raise ConfigError(
            f"tag definitions file {path}: duplicate key {dup.key!r}; each name may appear once"
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"tag definitions file {path}: invalid JSON at line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}"
        ) from None


def _parse_yaml(text: str, path: Path) -> object:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - Loader derives from SafeLoader
    except _DuplicateKey as dup:
        raise ConfigError(
            f"tag definitions file {path}: duplicate key {dup.key!r} at line {dup.line}; "
            "each name may appear once"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"tag definitions file {path}: invalid YAML{where}: {problem}") from None


# ------------------------------------------------------------------------------------------------
# validation


def parse_tag_definitions(obj: object, *, source: str = "<inline>") -> TagDefinitions:
    """Validate an already-parsed definitions object (see the module docstring for the shapes)."""

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"tag definitions {source}: {problem}")

    if not isinstance(obj, dict):
        raise fail(
            f"expected an object of tag name -> description (or {{guide_prompt, tags}}), "
            f"got {_kind(obj)}"
        )
    explicit_states: object = {}
    if "tags" in obj or "guide_prompt" in obj:
        unknown = [k for k in obj if k not in _TOP_KEYS]
        if unknown:
            raise fail(f"unknown top-level key(s) {unknown}; allowed: {list(_TOP_KEYS)}")
        guide = obj.get("guide_prompt")
        guide = "" if guide is None else guide
        if not isinstance(guide, str):
            raise fail(f"'guide_prompt' must be a string, got {_kind(guide)}")
        raw_tags = obj.get("tags")
        if not isinstance(raw_tags, dict):
            raise fail(
                f"'tags' must be an object of tag name -> description, got {_kind(raw_tags)}"
            )
        explicit_states = obj.get("states") or {}
    else:
        guide, raw_tags = "", obj

    if not raw_tags:
        raise fail("no tags defined; add at least one tag name -> description")
    if len(raw_tags) > MAX_TAGS:
        raise fail(
            f"{len(raw_tags)} tags defined, more than the limit of {MAX_TAGS}; split the file"
        )

    tags: dict[str, str] = {}
    folded: dict[str, str] = {}
    for raw_name, description in raw_tags.items():
        if not isinstance(raw_name, str):
            raise fail(f"tag name {raw_name!r} is not a string; quote it")
        name = " ".join(raw_name.split())
        if not name:
            raise fail("a tag has an empty name; give every tag a name")
        if len(name) > MAX_NAME_LENGTH:
            raise fail(f"tag name {name[:40]!r}... is longer than {MAX_NAME_LENGTH} characters")
        if not isinstance(description, str):
            raise fail(f"description of tag {name!r} must be a string, got {_kind(description)}")
        key = name.casefold()
        if key in folded:
            raise fail(
                f"duplicate tag name {name!r} (same as {folded[key]!r} ignoring case); "
                "names must be unique"
            )
        folded[key] = name
        tags[name] = description.strip()

    states = {name: parse_states(description) for name, description in tags.items()}
    states.update(_explicit_states(explicit_states, tags, fail))
    canonical = json.dumps(
        {
            "format": 1,
            "guide_prompt": guide.strip(),
            # Sorted: reordering the file changes no tag, so it must not force a re-tag.
            "tags": sorted(tags.items()),
            "states": sorted((k, v) for k, v in states.items() if v),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return TagDefinitions(guide.strip(), tags, states, digest, source)


def _explicit_states(raw: object, tags: dict[str, str], fail) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        raise fail(f"'states' must be an object of tag name -> [state, ...], got {_kind(raw)}")
    by_folded = {name.casefold(): name for name in tags}
    out: dict[str, list[str]] = {}
    for raw_name, values in raw.items():
        name = by_folded.get(" ".join(str(raw_name).split()).casefold())
        if name is None:
            raise fail(f"'states' names {raw_name!r}, which is not a defined tag")
        if (
            not isinstance(values, list)
            or not all(isinstance(v, str) and v.strip() for v in values)
            or len({v.strip().casefold() for v in values}) != len(values)
        ):
            raise fail(f"states of {name!r} must be a list of distinct non-empty strings")
        if len(values) == 1:
            raise fail(f"tag {name!r} lists one state; give at least two, or none")
        out[name] = [v.strip() for v in values]
    return out


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


# ------------------------------------------------------------------------------------------------
# states


_WORD = r"[A-Za-z][\w-]*"
# The clause after "whether" / "specify if" ..., up to the end of the sentence.
_CLAUSE = re.compile(
    r"\b(?:whether|(?:specify|indicate|determine|state|say|tell|mark|note)\s+if)\b([^.;:!?]*)",
    re.IGNORECASE,
)
# "raised or lowered", "open, closed or ajar", "open, closed, or ajar"
_OPTIONS = re.compile(rf"\b({_WORD})((?:\s*,\s*{_WORD})*)\s*,?\s+or\s+({_WORD})\b", re.IGNORECASE)
_BETWEEN = re.compile(
    rf"\b(?:distinguish|distinguishing|differentiate|differentiating)\s+between\s+"
    rf"({_WORD})\s+and\s+({_WORD})\b",
    re.IGNORECASE,
)
# Words that end up between "whether" and "or" without naming a state.
_NOT_STATES = frozenset(
    [
        "a",
        "an",
        "the",
        "it",
        "its",
        "is",
        "are",
        "was",
        "be",
        "been",
        "this",
        "that",
        "these",
        "those",
        "they",
        "there",
        "not",
        "no",
        "any",
        "some",
        "one",
        "ones",
        "present",
        "absent",
        "exist",
        "exists",
    ]
)


def parse_states(description: str) -> list[str]:
    """States a description asks for, lower-cased, in the order given; ``[]`` when none."""
    for match in _CLAUSE.finditer(description):
        states = _options(match.group(1))
        if states:
            return states
    match = _BETWEEN.search(description)
    if match:
        return _clean([match.group(1), match.group(2)])
    return []


def _options(clause: str) -> list[str]:
    match = _OPTIONS.search(clause)
    if not match:
        return []
    first, middle, last = match.group(1), match.group(2), match.group(3)
    if last.lower() == "not":
        # "whether it is lit or not": the states are "lit" and "not lit".
        return [] if first.lower() in _NOT_STATES else [first.lower(), f"not {first.lower()}"]
    words = [first, *[w for w in re.split(r"\s*,\s*", middle) if w], last]
    return _clean(words)


def _clean(words: list[str]) -> list[str]:
    states = [w.lower() for w in words]
    if any(w in _NOT_STATES for w in states) or len(set(states)) != len(states):
        return []
    return states
