"""The embedder interface: images and texts into one normalised vector space."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class ImageEmbeddings:
    """Output of one forward pass over a batch of images.

    ``vectors`` is ``(n, dim)`` float32 with unit rows. ``class_probs`` is ``(n, n_classes)``
    softmax posteriors when the embedder is built on a classifier; taggers read it so that tagging
    needs no second forward pass.

    ``errors`` is ``None`` when every image was embedded, else one entry per image: ``None`` for
    an embedded image, a message for one the model refused or answered badly for (a hosted API's
    400 for that image, no embedding in the reply, a malformed reply even after one retry). A
    failed image's row of ``vectors`` is all zeros and must not be stored as a vector. Failures
    that are not about one image (bad key, service down after all retries) are raised instead.
    """

    vectors: np.ndarray
    class_probs: np.ndarray | None = None
    errors: list[str | None] | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def n_failed(self) -> int:
        return sum(1 for e in self.errors or () if e)


class Embedder(ABC):
    """Maps images and texts into the same ``dim``-dimensional space (cosine similarity)."""

    #: Recorded with every vector; an index built by another name is not comparable.
    name: str
    dim: int
    #: Side of the square uint8 RGB input that ``embed_images`` expects.
    input_size: int = 224
    #: True when the model wants the image file itself (hosted APIs take a JPEG, not pixels):
    #: callers then pass the thumbnail JPEG bytes to :meth:`embed_jpegs` instead of decoding.
    wants_jpeg: bool = False

    @abstractmethod
    def embed_images(self, images: Sequence) -> ImageEmbeddings:
        """Embed ``(input_size, input_size, 3)`` uint8 RGB arrays (or PIL images)."""

    def embed_jpegs(self, jpegs: Sequence[bytes]) -> ImageEmbeddings:
        """Embed encoded images (normally the 512-px thumbnail JPEGs), one row per input.

        Per-image failures come back in :attr:`ImageEmbeddings.errors`, never raised. This default
        decodes and calls :meth:`embed_images`, so every embedder accepts JPEGs; hosted embedders
        (``wants_jpeg = True``) send the bytes as they are.
        """
        from imageindex.errors import ImageError
        from imageindex.preprocess import load_model_input

        arrays: list[np.ndarray] = []
        errors: list[str | None] = []
        for data in jpegs:
            try:
                arrays.append(load_model_input(data, self.input_size))
                errors.append(None)
            except ImageError as exc:
                arrays.append(np.zeros((self.input_size, self.input_size, 3), np.uint8))
                errors.append(str(exc))
        out = self.embed_images(arrays)
        if any(errors):
            out.vectors[[i for i, e in enumerate(errors) if e]] = 0.0
            out.errors = [e or o for e, o in zip(errors, out.errors or errors, strict=True)]
        return out

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts into ``(n, dim)`` float32 unit vectors in the image space."""


def to_uint8_batch(images: Sequence, size: int) -> np.ndarray:
    """Stack images into a C-contiguous ``(n, size, size, 3)`` uint8 array.

    Accepts uint8 arrays (HxWx3, HxWx4 or HxW) and PIL images; anything not already ``size`` x
    ``size`` RGB is converted and squashed with BICUBIC like
    :func:`imageindex.preprocess.load_model_input`.
    """
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            if image.shape == (size, size, 3) and image.dtype == np.uint8:
                out[i] = image
                continue
            image = _array_to_pil(image, i)
        elif not hasattr(image, "convert"):
            raise TypeError(
                f"image {i}: expected a uint8 numpy array or a PIL image, got {type(image).__name__}"
            )
        out[i] = _pil_to_array(image, size)
    return out


def _array_to_pil(array: np.ndarray, index: int):
    from PIL import Image

    if array.dtype != np.uint8:
        raise TypeError(
            f"image {index}: expected uint8 pixels (0..255), got dtype {array.dtype}; "
            "decode with imageindex.preprocess.load_model_input"
        )
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
        return Image.fromarray(
            array.squeeze(2) if array.ndim == 3 and array.shape[2] == 1 else array
        )
    raise TypeError(f"image {index}: expected an HxWx3 RGB array, got shape {array.shape}")


def _pil_to_array(image, size: int) -> np.ndarray:
    from PIL import Image

    if image.mode != "RGB":
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            # Composite on white, as preprocess does, rather than letting alpha turn black.
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)
