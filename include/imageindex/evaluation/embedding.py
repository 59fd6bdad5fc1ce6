"""The embedding runner: images and tag queries through an ``Embedder``, ranked by cosine.

Images are embedded the way the indexing pipeline embeds them: the 512-px thumbnail JPEG of
:func:`imageindex.preprocess.preprocess_image` through ``Embedder.embed_jpegs``. Ranking keeps
ties in dataset order (a stable sort, as the reference's ``sorted``); an image the model could
not embed is left out of the ranking but stays in every tag's ground truth (the reference writes
no feature for it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from imageindex.evaluation.dataset import EvalImage, EvalSet

EMBED_BATCH = 32


def rank_by_similarity(scores: np.ndarray, ids: Sequence[str]) -> list[str]:
    """Ids by descending score, ties in the given (dataset) order, like the reference's sort."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [ids[i] for i in order]


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


def embedding_rankings(
    embedder, eval_set: EvalSet, prompt: str, *, started: float | None = None
) -> tuple[dict[str, list[str]], dict[str, str], dict[str, float]]:
    """``(rankings, failed, seconds)``: each tag's query ``prompt.format(tag=...)`` ranks the
    images ``embedder`` could embed, by cosine.

    ``seconds`` has ``images``, ``texts`` and ``rank``; ``images`` counts from ``started`` (when
    the caller began, e.g. before loading the embedder) or from this call.
    """
    tags = eval_set.tags
    t0 = time.perf_counter() if started is None else started
    vectors, failed = embed_eval_images(embedder, eval_set.images)
    t1 = time.perf_counter()
    seconds = {"images": t1 - t0}
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
    return rankings, failed, seconds
