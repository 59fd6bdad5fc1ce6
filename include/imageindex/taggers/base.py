"""The tagger interface: tags from the embeddings of one forward pass, or from the images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from imageindex.embedders.base import ImageEmbeddings
from imageindex.types import Tag


class Tagger(ABC):
    """Turns a batch of images into one list of tags per image.

    Local taggers read the embedder's output (:meth:`tag`). Hosted taggers look at the image
    itself: they set ``wants_jpeg = True`` and callers pass the thumbnail JPEG bytes to
    :meth:`tag_jpegs`.

    Per-image failures of a hosted tagger (the API refused that image, the reply was malformed
    even after one retry) are not raised: that image gets an empty tag list, and
    :attr:`last_errors` holds one entry per image of the batch just tagged, ``None`` for a tagged
    image and a message for a failed one (``None`` as a whole when nothing failed). It is kept per
    thread, so read it right after the call, in the same thread. Failures that are not about one
    image (bad key, service down after all retries) are raised.
    """

    #: Short description recorded in run reports.
    name: str
    #: sha256 of the tag definitions in use (``None`` without definitions); stored with each
    #: file's tags so files tagged under older definitions can be found and re-tagged.
    definitions_hash: str | None = None
    #: True when :meth:`tag_jpegs` should be called with the thumbnail JPEG bytes.
    wants_jpeg: bool = False
    #: Per-image errors of the last batch (see the class docstring); local taggers never fail.
    last_errors: list[str | None] | None = None

    @abstractmethod
    def tag(self, embeddings: ImageEmbeddings) -> list[list[Tag]]:
        """One list of tags per image, in the order of ``embeddings.vectors``."""

    def tag_jpegs(self, jpegs: Sequence[bytes], embeddings: ImageEmbeddings) -> list[list[Tag]]:
        """One list of tags per JPEG; ``embeddings`` are the same images' embeddings.

        The default ignores the bytes and tags from the embeddings.
        """
        return self.tag(embeddings)


class NullTagger(Tagger):
    """``{"type": "none"}``: no tags, for datasets that only need search."""

    name = "none"
    definitions_hash = None

    def tag(self, embeddings: ImageEmbeddings) -> list[list[Tag]]:
        return [[] for _ in range(len(embeddings.vectors))]
