"""The ``filename`` baseline: ranks images by their file name only, never by their pixels."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imageindex.evaluation.dataset import EvalImage


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
