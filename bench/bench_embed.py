"""Benchmark: the embed stage against the bare model forward, on this machine's CPUs.

Measures, on the same N images (photos bundled in installed wheels, cycled to N, as 512-px JPEG
thumbnails like the preprocess stage writes):

(a) ``onnx_forward``: the bare ONNX Runtime forward of EfficientNet-Lite0 on a preprocessed batch
    (224x224 uint8 arrays already in memory -> float normalisation + ``session.run``);
(b) ``embed_stage``: as ``pipeline.tag_embed`` runs it: the model input that preprocess stored
    (raw 224x224 pixels, ``preprocess.model_input``) read on a thread pool overlapped with
    ``embed_images`` (forward, softmax, ConSE projection); ``embed_stage_model`` is the time inside
    ``embed_images`` during that run, ``embed_images`` the same calls on arrays already in memory;
    ``embed_stage_decoding`` the same with the thumbnails decoded and resized to 224 there (shards
    without the stored input; how the stage ran before preprocess stored it);
(c) ``torch_forward``: the plain PyTorch forward of the same batch.

Runs are interleaved and the best of ``--repeats`` rounds is kept (see ``interleaved_best``).
On 2 cores a decode competes with the model's two threads, so ``embed_stage_decoding``/(a) is
bounded by ``1 / (1 + forward_rate / (2 * decode_rate))`` even with perfect overlap; preprocess
pays that decode instead (``decode_resize_img_s``, on the CPU workers).

Prints one JSON object. ``--n`` images, ``--batch-size`` per model call.

    .venv/bin/python bench/bench_embed.py --n 128
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from imageindex.embedders import get_embedder
from imageindex.embedders.offline import cpu_threads, normalize_pixels
from imageindex.preprocess import load_model_input, model_input

SAMPLES = [
    ("skimage", "data", "*.png"),
    ("skimage", "data", "*.jpg"),
    ("sklearn", "datasets/images", "*.jpg"),
    ("matplotlib", "mpl-data/sample_data", "grace_hopper.jpg"),
    ("foolbox", "data", "imagenet_*.jpg"),
    ("interior_photos", "images", "*.jpg"),
]


def sample_paths() -> list[Path]:
    paths = []
    for package, folder, pattern in SAMPLES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations))) / folder
        paths += sorted(root.glob(pattern))
    return paths


def thumbnail(path: Path, max_side: int = 512) -> bytes | None:
    """A 512-px RGB JPEG like the preprocess stage's; ``None`` for tiny or odd sample images."""
    with Image.open(path) as img:
        if min(img.size) < 128 or img.mode not in ("RGB", "RGBA", "P", "L"):
            return None
        rgb = img.convert("RGB")
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = BytesIO()
    rgb.save(out, "JPEG", quality=85)
    return out.getvalue()


def make_thumbnails(n: int) -> list[bytes]:
    thumbs = [t for t in (thumbnail(p) for p in sample_paths()) if t is not None]
    if not thumbs:
        # No sample packages installed: smooth random "photos" keep JPEG sizes realistic.
        rng = np.random.default_rng(0)
        for _ in range(16):
            grid = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
            img = Image.fromarray(grid).resize((512, 384), Image.Resampling.BICUBIC)
            out = BytesIO()
            img.save(out, "JPEG", quality=85)
            thumbs.append(out.getvalue())
    return [thumbs[i % len(thumbs)] for i in range(n)]


def interleaved_best(repeats: int, runs: dict[str, Callable[[], float | None]]) -> dict:
    """Best wall time of each run over ``repeats`` rounds, the runs interleaved within a round.

    Interleaving and keeping the best time make the ratios robust to load from other processes
    on a small shared machine (a burst slows whichever run it lands on, not one whole series).
    Also returns the value each run returned on its best round.
    """
    best: dict[str, tuple[float, float | None]] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            value = fn()
            elapsed = time.perf_counter() - t0
            if name not in best or elapsed < best[name][0]:
                best[name] = (elapsed, value)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--torch-repeats", type=int, default=1)
    args = parser.parse_args()
    n, bs = args.n, args.batch_size

    thumbs = make_thumbnails(n)
    arrays = np.stack([load_model_input(t, 224) for t in thumbs])
    stored = [a.tobytes() for a in arrays]  # what preprocess writes to the shard

    t0 = time.perf_counter()
    embedder = get_embedder({"type": "offline", "batch_size": bs})
    session = embedder.onnx_session  # exports to ONNX on first use (cached afterwards)
    embedder.embed_images(arrays[:2])  # label embeddings, text model (cached on disk)
    load_s = time.perf_counter() - t0
    torch_embedder = get_embedder({"type": "offline", "batch_size": bs, "backend": "torch"})
    torch_forward = torch_embedder._image_forward()

    batches = [arrays[s : s + bs] for s in range(0, n, bs)]

    def onnx_forward() -> None:
        for batch in batches:
            session.run(["logits"], {"pixels": normalize_pixels(batch)})

    def torch_run() -> None:
        for batch in batches:
            torch_forward(normalize_pixels(batch))

    def embed_stage(pixels: list[bytes | None]) -> Callable[[], float]:
        """Get two batches ahead on a 2-thread pool while the model runs (as tag_embed)."""

        def run() -> float:
            model_s = 0.0
            starts = range(0, n, bs)
            size = embedder.input_size
            with ThreadPoolExecutor(max_workers=2) as pool:

                def get(start: int) -> list[np.ndarray]:
                    end = start + bs
                    return [
                        model_input(p, t, size)
                        for p, t in zip(pixels[start:end], thumbs[start:end], strict=True)
                    ]

                futures = [pool.submit(get, s) for s in starts[:2]]
                for i in range(len(starts)):
                    images = futures[i].result()
                    if i + 2 < len(starts):
                        futures.append(pool.submit(get, starts[i + 2]))
                    tm = time.perf_counter()
                    emb = embedder.embed_images(images)
                    model_s += time.perf_counter() - tm
                    assert emb.vectors.shape == (len(images), embedder.dim)
            return model_s

        return run

    def embed_in_memory() -> None:
        for batch in batches:
            embedder.embed_images(batch)

    def decode_only() -> None:
        for t in thumbs:
            load_model_input(t, 224)

    onnx_forward()  # warm-up: first-run allocations
    best = interleaved_best(
        args.repeats,
        {
            "onnx_forward": onnx_forward,
            "embed_images": embed_in_memory,
            "embed_stage": embed_stage(stored),
            "embed_stage_decoding": embed_stage([None] * n),
            "decode": decode_only,
        },
    )
    onnx_s, images_s, decode_s = (best[k][0] for k in ("onnx_forward", "embed_images", "decode"))
    stage_s, model_s = best["embed_stage"]
    decoding_s = best["embed_stage_decoding"][0]
    torch_forward(normalize_pixels(batches[0][:2]))  # warm-up
    torch_s = interleaved_best(args.torch_repeats, {"torch": torch_run})["torch"][0]

    rate = lambda seconds: round(n / seconds, 2)  # noqa: E731
    result = {
        "benchmark": "embed",
        "images": n,
        "batch_size": bs,
        "thumbnail_kb_mean": round(sum(map(len, thumbs)) / n / 1024, 1),
        "cpu_threads": cpu_threads(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "embedder": embedder.name,
        "backend": embedder.active_backend,
        "load_seconds": round(load_s, 2),
        "onnx_forward_img_s": rate(onnx_s),
        "embed_images_img_s": rate(images_s),
        "embed_stage_img_s": rate(stage_s),
        "embed_stage_model_img_s": rate(model_s),
        "embed_stage_decoding_img_s": rate(decoding_s),
        "decode_resize_img_s": rate(decode_s),
        "torch_forward_img_s": rate(torch_s),
        "ratio_embed_stage_to_onnx_forward": round(onnx_s / stage_s, 3),
        "ratio_embed_stage_decoding_to_onnx_forward": round(onnx_s / decoding_s, 3),
        "ratio_embed_images_to_onnx_forward": round(onnx_s / images_s, 3),
        "ratio_stage_model_part_to_onnx_forward": round(onnx_s / model_s, 3),
        "onnx_speedup_over_torch": round(torch_s / onnx_s, 2),
        "targets": {
            "embed_stage_img_s": 35.0,
            "ratio_embed_images_to_onnx_forward": 0.9,
            "ratio_embed_stage_to_onnx_forward": 0.9,
        },
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    result["targets_met"] = bool(
        result["embed_stage_img_s"] >= 35.0
        and result["ratio_embed_images_to_onnx_forward"] >= 0.9
        and result["ratio_embed_stage_to_onnx_forward"] >= 0.9
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
