"""The tagger interface: tags from the embeddings of one forward pass."""

from __future__ import annotations

from abc import ABC, abstractmethod

from imageindex.embedders.base import ImageEmbeddings
from imageindex.types import Tag


class Tagger(ABC):
    #: Short description recorded in run reports.
    name: str
    #: sha256 of the tag definitions in use (``None`` without definitions); stored with each
    #: file's tags so files tagged under older definitions can be found and re-tagged.
    definitions_hash: str | None = None

    @abstractmethod
    def tag(self, embeddings: ImageEmbeddings) -> list[list[Tag]]:
        """One list of tags per image, in the order of ``embeddings.vectors``."""


class NullTagger(Tagger):
    """``{"type": "none"}``: no tags, for datasets that only need search."""

    name = "none"
    definitions_hash = None

    def tag(self, embeddings: ImageEmbeddings) -> list[list[Tag]]:
        return [[] for _ in range(len(embeddings.vectors))]
