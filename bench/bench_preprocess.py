"""Benchmark: the reference tutorial's naive thumbnail loop vs imageindex.preprocess.

Both sides process the same in-memory synthetic JPEGs (12-MP 4000x3000 and 2-MP 1600x1200) and
produce a 512-px JPEG thumbnail; ``ours_with_model_input_2_threads`` also makes the 224-px model
input as the pipeline's preprocess stage does (so tag_embed decodes nothing). Prints one JSON
object.

    .venv/bin/python bench/bench_preprocess.py --n 12
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sys
import time
from io import BytesIO
from pathlib import Path

import PIL
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # for the synthetic photo generator

from imagezoo import make_jpeg_bytes  # noqa: E402

from imageindex.preprocess import preprocess_image, preprocess_many  # noqa: E402

SIZES = {"12mp": (4000, 3000), "2mp": (1600, 1200)}


def naive(images: list[bytes]) -> None:
    """The reference tutorial's loop: full decode, convert, LANCZOS resize, encode, base64."""
    for data in images:
        img = Image.open(BytesIO(data))
        img = img.convert("RGB")
        img = img.resize((512, 512), Image.LANCZOS)
        out = BytesIO()
        img.save(out, "JPEG", quality=85)
        base64.b64encode(out.getvalue())


def ours_single(images: list[bytes]) -> None:
    for i, data in enumerate(images):
        result = preprocess_image(data, name=f"{i}.jpg")
        assert result.ok, result.error_detail


def ours_threads(images: list[bytes], threads: int = 2, **kwargs) -> None:
    items = [(f"{i}.jpg", lambda data=data: data) for i, data in enumerate(images)]
    for _, result in preprocess_many(items, threads=threads, **kwargs):
        assert result.ok, result.error_detail


def ours_with_model_input(images: list[bytes]) -> None:
    ours_threads(images, model_input_size=224)


def images_per_second(fn, images: list[bytes], repeats: int) -> float:
    fn(images[:2])  # warm-up: plugin imports, first allocations
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="images per size (default 12)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs, best kept (default 2)")
    parser.add_argument(
        "--json-only", action="store_true", help="print only the JSON, no progress on stderr"
    )
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error("--n must be at least 2")

    def progress(message: str) -> None:
        if not args.json_only:
            print(message, file=sys.stderr, flush=True)

    report: dict = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "n_per_size": args.n,
        "repeats": args.repeats,
        "images_per_s": {},
        "speedup_vs_naive": {},
    }
    for label, (width, height) in SIZES.items():
        progress(f"generating {args.n} {width}x{height} JPEGs ...")
        images = [make_jpeg_bytes(width, height, seed=i) for i in range(args.n)]
        report.setdefault("mean_jpeg_bytes", {})[label] = sum(map(len, images)) // len(images)
        rates = {}
        for method, fn in (
            ("naive_loop", naive),
            ("ours_single_thread", ours_single),
            ("ours_preprocess_many_2_threads", ours_threads),
            ("ours_with_model_input_2_threads", ours_with_model_input),
        ):
            rates[method] = round(images_per_second(fn, images, args.repeats), 2)
            progress(f"{label} {method}: {rates[method]} images/s")
        report["images_per_s"][label] = rates
        report["speedup_vs_naive"][label] = {
            method: round(rate / rates["naive_loop"], 2)
            for method, rate in rates.items()
            if method != "naive_loop"
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
