"""Offline tagger: ImageNet classes plus user-defined tags, from the embedder's single forward pass.

* **ImageNet tags** (``source="imagenet"``): classes whose posterior is at least
  ``class_threshold`` (default 0.15), at most ``max_classes`` (default 5), score = posterior.
* **Definition tags** (``source="definition"``): each defined tag's text ``"{name}: {description}"``
  is embedded with the embedder's text model; the tag applies when the image vector is close
  enough to it. ``state`` is the closest of the tag's states (text ``"{name} {state}"``).

Definition score (a deliberate refinement of plain cosine): ``cos(image, tag text)`` minus the
tag text's *background*, its mean cosine to the 1000 ImageNet label texts that image vectors are
built from. Raw cosines carry a large per-tag offset (a text about animals is 0.3-0.4 from almost
any ConSE vector, one about coffee 0.1), so one raw threshold either floods generic tags or
misses specific ones. On the bundled sample photos (71 photos, the 7 tags of
``config/tags/samples.json`` plus "Cat", "Coffee", "Vehicle" test tags, hand-labelled), the best
raw-cosine threshold (0.36) gave 27 false tags at 29% recall; the background-corrected score at
``definition_threshold = 0.18`` gives 6 false tags at 46% recall (precision 0.83; 0.20 gives 3 at
38%). Scores are therefore "cosine above what an average ImageNet class would get": 0.18-0.45 for
clear matches (the cat photo: Cat 0.42, Animal 0.20), below 0.1 for unrelated tags.

The text ``"{name}: {description}"`` beat the description alone (raw F1 0.59 vs 0.55) and keeps
short, instruction-like descriptions ("Can only be identified if the sky is visible ...") anchored
by the tag name. The guide prompt is recorded in the definitions hash but not embedded: it
addresses a vision-language model, not an embedding.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from imageindex.embedders.base import Embedder, ImageEmbeddings
from imageindex.errors import ConfigError
from imageindex.taggers.base import Tagger
from imageindex.taggers.definitions import TagDefinitions
from imageindex.types import Tag

DEFAULT_CLASS_THRESHOLD = 0.15
DEFAULT_MAX_CLASSES = 5
DEFAULT_DEFINITION_THRESHOLD = 0.18
# Bump when the texts embedded for definitions change, so cached embeddings are not reused.
_TEXT_RECIPE = "name-colon-description-v1"
_CACHE_SIZE = 16


@dataclass
class _DefinitionVectors:
    names: list[str]
    vectors: np.ndarray  # (n_tags, dim)
    background: np.ndarray  # (n_tags,)
    # tag index -> (state names, (n_states, dim) vectors, (n_states,) backgrounds)
    states: dict[int, tuple[list[str], np.ndarray, np.ndarray]]


_cache_lock = threading.Lock()
_cache: OrderedDict[tuple[str, str, str], _DefinitionVectors] = OrderedDict()


def definition_text(name: str, description: str) -> str:
    return f"{name}: {description}" if description else name


def _background(embedder: Embedder, vectors: np.ndarray) -> np.ndarray:
    labels = getattr(embedder, "label_vectors", None)
    if labels is None or len(vectors) == 0:
        return np.zeros(len(vectors), dtype=np.float32)
    return (vectors @ np.asarray(labels).T).mean(axis=1).astype(np.float32)


def definition_vectors(embedder: Embedder, definitions: TagDefinitions) -> _DefinitionVectors:
    """Embedded tag and state texts, cached per (embedder, definitions hash) in this process."""
    key = (embedder.name, definitions.hash, _TEXT_RECIPE)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    names = list(definitions.tags)
    texts = [definition_text(n, definitions.tags[n]) for n in names]
    state_texts = [
        (i, states, [f"{names[i]} {s}" for s in states])
        for i, states in ((i, definitions.states.get(n) or []) for i, n in enumerate(names))
        if states
    ]
    flat = [t for _, _, ts in state_texts for t in ts]
    cached = getattr(embedder, "embed_texts_cached", None)
    if cached is not None:
        vectors = cached(texts + flat, purpose="tag-definitions")
    else:
        vectors = embedder.embed_texts(texts + flat)
    tag_vectors, state_vectors = vectors[: len(texts)], vectors[len(texts) :]
    state_background = _background(embedder, state_vectors)
    states: dict[int, tuple[list[str], np.ndarray, np.ndarray]] = {}
    offset = 0
    for i, state_names, ts in state_texts:
        sl = slice(offset, offset + len(ts))
        states[i] = (list(state_names), state_vectors[sl], state_background[sl])
        offset += len(ts)
    value = _DefinitionVectors(names, tag_vectors, _background(embedder, tag_vectors), states)
    with _cache_lock:
        _cache[key] = value
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return value


class OfflineTagger(Tagger):
    def __init__(
        self,
        embedder: Embedder,
        definitions: TagDefinitions | None = None,
        *,
        class_threshold: float = DEFAULT_CLASS_THRESHOLD,
        max_classes: int = DEFAULT_MAX_CLASSES,
        definition_threshold: float = DEFAULT_DEFINITION_THRESHOLD,
    ):
        _check_number("class_threshold", class_threshold, 0.0, 1.0)
        _check_number("definition_threshold", definition_threshold, -2.0, 2.0)
        if not isinstance(max_classes, int) or isinstance(max_classes, bool) or max_classes < 0:
            raise ConfigError(f"tagger max_classes must be an integer >= 0, got {max_classes!r}")
        self.embedder = embedder
        self.definitions = definitions
        self.class_threshold = float(class_threshold)
        self.max_classes = max_classes
        self.definition_threshold = float(definition_threshold)
        self.definitions_hash = definitions.hash if definitions is not None else None
        self.labels: list[str] | None = getattr(embedder, "labels", None)
        suffix = f"+{len(definitions)}-definitions" if definitions is not None else ""
        self.name = f"offline-imagenet{suffix}"

    def tag(self, embeddings: ImageEmbeddings) -> list[list[Tag]]:
        n = len(embeddings.vectors)
        out: list[list[Tag]] = [[] for _ in range(n)]
        if n == 0:
            return out
        if embeddings.class_probs is not None and self.labels is not None and self.max_classes:
            self._imagenet_tags(embeddings.class_probs, out)
        if self.definitions is not None:
            self._definition_tags(np.asarray(embeddings.vectors, dtype=np.float32), out)
        return out

    def _imagenet_tags(self, probs: np.ndarray, out: list[list[Tag]]) -> None:
        k = min(self.max_classes, probs.shape[1])
        top = np.argpartition(probs, -k, axis=1)[:, -k:]
        for i, idx in enumerate(top):
            for j in sorted(idx, key=lambda j: -probs[i, j]):
                p = float(probs[i, j])
                if p >= self.class_threshold:
                    out[i].append(Tag(name=self.labels[j], score=p, source="imagenet"))

    def _definition_tags(self, vectors: np.ndarray, out: list[list[Tag]]) -> None:
        defs = definition_vectors(self.embedder, self.definitions)
        if vectors.shape[1] != defs.vectors.shape[1]:
            raise ConfigError(
                f"tagger: image vectors have {vectors.shape[1]} dims but {self.embedder.name} "
                f"embeds texts in {defs.vectors.shape[1]}; use the same embedder for both"
            )
        scores = vectors @ defs.vectors.T - defs.background
        for i, j in zip(*np.nonzero(scores >= self.definition_threshold), strict=True):
            state = None
            if j in defs.states:
                names, state_vectors, background = defs.states[j]
                state = names[int(np.argmax(state_vectors @ vectors[i] - background))]
            out[i].append(
                Tag(name=defs.names[j], score=float(scores[i, j]), source="definition", state=state)
            )
        for tags in out:
            # ImageNet tags first (already by posterior), then definition tags by score.
            tags.sort(key=lambda t: (t.source != "imagenet", -t.score))


def _check_number(key: str, value: object, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigError(f"tagger {key} must be a number in [{lo}, {hi}], got {value!r}")
