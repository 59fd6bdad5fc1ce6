"""The evaluation folder: ``dataset.jsonl`` plus ``images/``, in the reference's layout.

``image_id``: the reference reads ``images/{image_id}.jpg`` and keys ground truth by
``image_id.split('.')[0]``. Here an id may also carry its extension (``images/{image_id}``) or
name any one file ``images/{image_id}.*``; the id used in rankings drops a trailing image
extension. Tags are stripped (as the reference does); a tag repeated on one line counts once.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from imageindex.errors import ConfigError
from imageindex.evaluation.metrics import DEFAULT_KS

DATASET_FILE = "dataset.jsonl"
IMAGES_DIR = "images"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff", ".webp", ".bmp")


class EvalDataError(ConfigError):
    """The evaluation folder is invalid; the message names the file (and line) to fix."""


@dataclass(frozen=True)
class EvalImage:
    image_id: str
    path: Path
    tags: tuple[str, ...]
    line: int


@dataclass
class EvalSet:
    root: Path
    images: list[EvalImage]
    #: tag -> ids of the images that carry it, in dataset order (first appearance of each tag).
    relevant: dict[str, list[str]] = field(default_factory=dict)

    @property
    def tags(self) -> list[str]:
        return list(self.relevant)

    def info(self) -> dict:
        sizes = [len(v) for v in self.relevant.values()]
        return {
            "data": str(self.root),
            "images": len(self.images),
            "tags": len(self.relevant),
            "tags_with_at_least": {str(k): sum(1 for s in sizes if s >= k) for k in DEFAULT_KS},
        }


def _strip_extension(image_id: str) -> str:
    stem, ext = os.path.splitext(image_id)
    return stem if stem and ext.lower() in IMAGE_EXTENSIONS else image_id


def _find_image(images_dir: Path, image_id: str) -> tuple[Path | None, list[str]]:
    """The file for ``image_id``: ``{id}.jpg`` (reference), ``{id}`` itself, or one ``{id}.*``."""
    tried = [f"{image_id}.jpg", image_id]
    for name in tried:
        candidate = images_dir / name
        if candidate.is_file():
            return candidate, tried
    stem = _strip_extension(image_id)
    matches = sorted(
        p
        for p in images_dir.glob(f"{_glob_escape(stem)}.*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    tried.append(f"{stem}.*")
    if len(matches) == 1:
        return matches[0], tried
    return None, tried


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def load_eval_set(data_dir: str | Path) -> EvalSet:
    """Read ``data_dir/dataset.jsonl`` and check that every image exists under ``images/``.

    Raises :class:`EvalDataError` naming the file and line for invalid JSON, a missing or
    mistyped field, an empty tag, a repeated image id or a missing image, and when no line has a
    tag at all (nothing to query). Blank lines are skipped; an image with ``"tags": []`` is a
    distractor (ranked, never relevant).
    """
    root = Path(data_dir)
    jsonl = root / DATASET_FILE
    images_dir = root / IMAGES_DIR
    if not root.is_dir():
        raise EvalDataError(f"evaluation folder {root} does not exist")
    if not jsonl.is_file():
        raise EvalDataError(
            f"{jsonl} is missing: an evaluation folder holds {DATASET_FILE} "
            f'(one {{"image_id": ..., "tags": [...]}} per line) and {IMAGES_DIR}/'
        )
    images: list[EvalImage] = []
    relevant: dict[str, list[str]] = {}
    seen: dict[str, int] = {}
    for line_no, raw_bytes in enumerate(jsonl.read_bytes().split(b"\n"), start=1):
        where = f"{jsonl}:{line_no}"
        try:
            raw = raw_bytes.decode("utf-8-sig" if line_no == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise EvalDataError(f"{where}: not UTF-8 text ({exc.reason})") from None
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise EvalDataError(
                f"{where}: invalid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise EvalDataError(
                f'{where}: expected an object {{"image_id": ..., "tags": [...]}}, '
                f"got {type(obj).__name__}"
            )
        for key in ("image_id", "tags"):
            if key not in obj:
                raise EvalDataError(f"{where}: missing field {key!r}")
        raw_id = obj["image_id"]
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or not str(raw_id).strip():
            raise EvalDataError(f"{where}: image_id must be a non-empty string, got {raw_id!r}")
        raw_id = str(raw_id).strip()
        tags_raw = obj["tags"]
        if not isinstance(tags_raw, list) or not all(isinstance(t, str) for t in tags_raw):
            raise EvalDataError(f"{where}: tags must be a list of strings, got {tags_raw!r}")
        tags = tuple(dict.fromkeys(t.strip() for t in tags_raw))
        if "" in tags:
            raise EvalDataError(f"{where}: image {raw_id!r} has an empty tag")
        image_id = _strip_extension(raw_id)
        if image_id in seen:
            raise EvalDataError(
                f"{where}: image_id {image_id!r} already given on line {seen[image_id]}"
            )
        seen[image_id] = line_no
        path, tried = _find_image(images_dir, raw_id)
        if path is None:
            raise EvalDataError(
                f"{where}: image {raw_id!r} not found in {images_dir} "
                f"(looked for {', '.join(tried)})"
            )
        images.append(EvalImage(image_id, path, tags, line_no))
        for tag in tags:
            relevant.setdefault(tag, []).append(image_id)
    if not relevant:
        raise EvalDataError(f"{jsonl}: no line has a tag, so there is nothing to query")
    return EvalSet(root=root, images=images, relevant=relevant)
