"""The offline tagger on real photos: ImageNet tags, definition tags and states, one forward pass."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageindex.embedders import get_embedder
from imageindex.embedders.base import ImageEmbeddings
from imageindex.errors import ConfigError
from imageindex.taggers import NullTagger, get_tagger, load_tag_definitions
from imageindex.taggers.offline import definition_vectors

from .test_definitions import AUTONOMOUS_DRIVING

# ImageNet-1k ids 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = range(281, 286)

TEST_DEFINITIONS = {
    "Cat": "a domestic cat",
    "Coffee": "a cup of coffee",
    "Vehicle": "a car or motorcycle",
}


def _photo(package: str, rel: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    # Same folder as tests/embedders: label embeddings are computed once per session.
    path = tmp_path_factory.getbasetemp() / "imageindex-model-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEINDEX_MODEL_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def embedder(model_cache):
    for module in ("torch", "onnxruntime", "sentence_transformers", "efficientnet_lite_pytorch"):
        pytest.importorskip(module)
    return get_embedder({"type": "offline"})


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    wanted = {
        "chelsea": ("skimage", "data/chelsea.png"),
        "coffee": ("skimage", "data/coffee.png"),
        "motorcycle": ("skimage", "data/motorcycle_left.png"),
        "brick": ("skimage", "data/brick.png"),
        "astronaut": ("skimage", "data/astronaut.png"),
        "china": ("sklearn", "datasets/images/china.jpg"),
    }
    out = {}
    for name, (package, rel) in wanted.items():
        path = _photo(package, rel)
        if path is not None:
            with Image.open(path) as img:
                out[name] = np.asarray(
                    img.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
                )
    if not {"chelsea", "coffee", "motorcycle"} <= set(out):
        pytest.skip("scikit-image sample photos are not installed")
    return out


@pytest.fixture(scope="module")
def embeddings(embedder, photos) -> ImageEmbeddings:
    return embedder.embed_images(list(photos.values()))


@pytest.fixture
def definitions_file(tmp_path) -> Path:
    path = tmp_path / "tags" / "test.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"guide_prompt": "Sample photos.", "tags": TEST_DEFINITIONS}))
    return path


def by_name(tags):
    return {t.name: t for t in tags}


# ------------------------------------------------------------------------------------------------
# specs


def test_none_tagger_tags_nothing():
    tagger = get_tagger({"type": "none"}, embedder=None)
    assert isinstance(tagger, NullTagger) and tagger.definitions_hash is None
    emb = ImageEmbeddings(np.zeros((3, 384), np.float32))
    assert tagger.tag(emb) == [[], [], []]


def test_bad_specs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="valid types: none, offline"):
        get_tagger({"type": "vlm"}, embedder=None)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['threshold'\]"):
        get_tagger({"type": "offline", "threshold": 0.2}, embedder=None)
    with pytest.raises(ConfigError, match="class_threshold"):
        get_tagger({"type": "offline", "class_threshold": 2}, embedder=None)
    with pytest.raises(ConfigError, match="max_classes"):
        get_tagger({"type": "offline", "max_classes": -1}, embedder=None)
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigError, match="not found") as info:
        get_tagger({"type": "offline", "definitions": "missing.json"}, None, base_dir=tmp_path)
    assert str(missing) in str(info.value)


# ------------------------------------------------------------------------------------------------
# real models


@pytest.mark.slow
def test_imagenet_tags(embedder, photos, embeddings):
    tagger = get_tagger({"type": "offline"}, embedder)
    assert tagger.definitions_hash is None
    tags = dict(zip(photos, tagger.tag(embeddings), strict=True))
    cat_names = {embedder.labels[i] for i in CAT_CLASSES}
    assert tags["chelsea"] and tags["chelsea"][0].name in cat_names
    assert tags["chelsea"][0].source == "imagenet"
    assert tags["coffee"][0].name == "espresso"
    for per_image in tags.values():
        assert len(per_image) <= 5
        assert all(t.score >= 0.15 and t.source == "imagenet" for t in per_image)
        assert [t.score for t in per_image] == sorted((t.score for t in per_image), reverse=True)
    strict = get_tagger({"type": "offline", "class_threshold": 0.9, "max_classes": 1}, embedder)
    assert all(len(t) <= 1 for t in strict.tag(embeddings))


@pytest.mark.slow
def test_definition_tags_on_the_right_photos(embedder, photos, embeddings, definitions_file):
    spec = {"type": "offline", "definitions": "tags/test.json"}
    tagger = get_tagger(spec, embedder, base_dir=definitions_file.parent.parent)
    assert tagger.definitions_hash == load_tag_definitions(definitions_file).hash
    tags = {
        name: {t.name for t in per_image if t.source == "definition"}
        for name, per_image in zip(photos, tagger.tag(embeddings), strict=True)
    }
    assert "Cat" in tags["chelsea"] and not tags["chelsea"] & {"Coffee", "Vehicle"}
    assert "Coffee" in tags["coffee"] and not tags["coffee"] & {"Cat", "Vehicle"}
    assert "Vehicle" in tags["motorcycle"] and not tags["motorcycle"] & {"Cat", "Coffee"}
    for name in ("brick", "china"):
        if name in tags:
            assert not tags[name], (name, tags[name])

    # Vectors alone are enough (no class posteriors): definition tags only, same result.
    vectors_only = tagger.tag(ImageEmbeddings(embeddings.vectors))
    assert all(t.source == "definition" for per_image in vectors_only for t in per_image)
    assert {t.name for t in vectors_only[0]} == tags["chelsea"]


@pytest.mark.slow
def test_states_and_definition_cache(embedder, embeddings, tmp_path):
    path = tmp_path / "ad.json"
    path.write_text(AUTONOMOUS_DRIVING)
    defs = load_tag_definitions(path)
    # A threshold every tag passes, to see the states chosen for each.
    tagger = get_tagger(
        {"type": "offline", "definitions": str(path), "definition_threshold": -2.0}, embedder
    )
    per_image = tagger.tag(embeddings)
    for tags in per_image:
        named = by_name(t for t in tags if t.source == "definition")
        assert set(named) == set(defs.tags)
        assert named["Parking locks"].state in ("raised", "lowered")
        assert named["Tunnels"].state in ("entering", "exiting")
        assert named["Cloudy"].state is None
    first = definition_vectors(embedder, defs)
    assert definition_vectors(embedder, load_tag_definitions(path)) is first
    assert first.vectors.shape == (len(defs.tags), embedder.dim)


def test_a_fresh_worker_tags_without_loading_the_text_model(tmp_path):
    """Tag-definition vectors are cached on disk, so a new task process needs only ONNX.

    Two child processes tag the cat photo over a model cache that holds the ONNX graph and the
    label vectors but no tag-definition vectors: the first embeds the definitions (loading
    MiniLM) and stores them, the second reads them and must tag exactly alike without torch.
    """
    import shutil
    import subprocess
    import sys

    from imageindex import modelcache

    photo = _photo("skimage", "data/chelsea.png")
    if photo is None:
        pytest.skip("scikit-image sample photos are not installed")
    cache = tmp_path / "cache"
    cache.mkdir()
    if modelcache.cache_dir().is_dir():  # reuse the exported graph; else the first run builds it
        for f in modelcache.cache_dir().iterdir():
            if f.is_file() and not f.name.startswith("tag-definitions-"):
                shutil.copy(f, cache / f.name)
    defs = Path(__file__).resolve().parents[2] / "config" / "tags" / "samples.json"
    code = f"""
import json, sys
import numpy as np
from PIL import Image
from imageindex.embedders import get_embedder
from imageindex.taggers import get_tagger
emb = get_embedder({{"type": "offline"}})
tagger = get_tagger({{"type": "offline", "definitions": {str(defs)!r}}}, emb)
with Image.open({str(photo)!r}) as im:
    img = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC))
tags = tagger.tag(emb.embed_images([img]))
print(json.dumps({{"tags": [[t.name, t.source] for t in tags[0]],
                  "heavy": sorted(m for m in ("torch", "sentence_transformers") if m in sys.modules)}}))
"""
    env = {**os.environ, "IMAGEINDEX_MODEL_CACHE": str(cache)}
    runs = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert "sentence_transformers" in runs[0]["heavy"], "the first run must embed the definitions"
    assert [f.name for f in cache.glob("tag-definitions-*.npy")], "and store them"
    assert ["Animal", "definition"] in runs[0]["tags"], runs[0]
    assert runs[0]["tags"] == runs[1]["tags"]  # the cached vectors tag exactly as computed ones
    assert runs[1]["heavy"] == [], runs[1]
