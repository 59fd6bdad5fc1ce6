"""What every embedder gets from ``Embedder``: ``embed_jpegs`` decodes and reports bad files."""

from __future__ import annotations

import numpy as np
from hosted_server import jpeg

from imageindex.embedders.base import Embedder, ImageEmbeddings


def test_embedder_default_embed_jpegs_decodes_and_reports_bad_files():
    class Ones(Embedder):
        name, dim = "ones", 3

        def embed_images(self, images):
            assert all(i.shape == (224, 224, 3) for i in images)
            return ImageEmbeddings(np.ones((len(images), 3), np.float32))

        def embed_texts(self, texts):
            raise NotImplementedError

    out = Ones().embed_jpegs([jpeg(1), b"not an image", jpeg(2)])
    assert out.errors[0] is None and out.errors[2] is None
    assert out.errors[1].startswith("not_an_image") and out.n_failed == 1
    assert out.vectors[:, 0].tolist() == [1.0, 0.0, 1.0]
