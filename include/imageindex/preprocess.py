"""Decode one image into its metadata and a small RGB JPEG thumbnail, without ever raising.

A bad file is recorded (``ok=False`` plus a machine-readable ``error_reason`` and a sentence that
names the file) so that one broken photo never fails a shard. Error reasons:

``empty_file``          zero bytes
``not_an_image``        content is not a supported image format (e.g. a text file named .jpg)
``truncated``           the file was cut short
``decompression_bomb``  width*height exceeds ``max_pixels`` (checked from the header, before
                        any pixel is decoded)
``corrupt``             any other decode failure
``read_failed``         (``preprocess_many`` only) the loader raised

With ``model_input_size`` the result also carries the model's input, the raw pixels that
:func:`load_model_input` makes of the thumbnail: computed here, on the CPU workers, so the model
stage decodes nothing (:func:`model_input`) and its vectors stay bit-identical to embedding the
stored thumbnail (as image search by an indexed image does).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from imageindex.errors import ImageError

DEFAULT_MAX_SIDE = 512
DEFAULT_MAX_PIXELS = 100_000_000  # decompression-bomb guard (configurable)

# Only formats we index. Besides keeping results predictable, this stops Pillow from handing
# PostScript-looking files to Ghostscript (EPS) or guessing at header-less formats (TGA).
# (Multi-picture camera JPEGs open through "JPEG" and report format "MPO".)
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "TIFF", "WEBP", "BMP")

_PREPROCESS_KWARGS = frozenset({"max_side", "quality", "max_pixels", "model_input_size"})
_WHITE = (255, 255, 255)

# EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112


@dataclass
class Preprocessed:
    ok: bool
    width: int | None = None  # original image size (after EXIF orientation is applied)
    height: int | None = None
    format: str | None = None  # Pillow format name, e.g. "JPEG", "PNG", "GIF"
    mode: str | None = None  # ORIGINAL Pillow mode, e.g. "CMYK", "P", "I;16"
    n_frames: int = 1
    bytes: int = 0  # size of the input bytes
    thumbnail: bytes | None = None  # JPEG, RGB, longest side <= max_side, aspect kept
    thumb_width: int | None = None
    thumb_height: int | None = None
    error_reason: str | None = None  # short machine-readable reason when not ok
    error_detail: str | None = None  # human sentence naming the file and what is wrong
    # (size, size, 3) uint8 RGB bytes, load_model_input(thumbnail, size); None unless asked for
    model_input: bytes | None = None


def preprocess_image(
    data: bytes,
    *,
    name: str,
    max_side: int = DEFAULT_MAX_SIDE,
    quality: int = 85,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    model_input_size: int | None = None,
) -> Preprocessed:
    """Decode ``data`` (the bytes of the file called ``name``) into metadata and a thumbnail.

    ``model_input_size`` also fills ``model_input`` (see the module docstring). Never raises for
    bad image content; raises ``ValueError`` only for invalid arguments.
    """
    _check_args(
        max_side=max_side,
        quality=quality,
        max_pixels=max_pixels,
        model_input_size=model_input_size,
    )
    result = Preprocessed(ok=False, bytes=len(data))
    if not data:
        return _fail(
            result, "empty_file", f"{name}: file is empty (0 bytes); re-upload or remove it"
        )
    try:
        with Image.open(BytesIO(data), formats=ALLOWED_FORMATS) as img:
            result.format = img.format
            result.mode = img.mode
            width, height = img.size
            if width * height > max_pixels:
                return _fail(
                    result,
                    "decompression_bomb",
                    f"{name}: {result.format} header claims {width}x{height} = "
                    f"{width * height:,} pixels, over max_pixels={max_pixels:,}; "
                    "raise max_pixels if this image is genuine",
                )
            thumb_size = _fit(width, height, max_side)
            if thumb_size != (width, height):
                # JPEG only: decode at 1/2, 1/4 or 1/8 DCT scale, never below the thumbnail size.
                img.draft("RGB", thumb_size)
            img.load()
            orientation = _orientation(img)
            thumb = _to_8bit(img)
            if thumb.size != thumb_size:
                thumb = thumb.resize(thumb_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            thumb = _flatten_to_rgb(thumb)
            transpose = _ORIENTATION_TRANSPOSE.get(orientation)
            if transpose is not None:
                thumb = thumb.transpose(transpose)
                if orientation in (5, 6, 7, 8):
                    width, height = height, width
            # Only an RGB source's profile describes the thumbnail's pixels.
            icc = img.info.get("icc_profile") if result.mode == "RGB" else None
            out = BytesIO()
            # Encode before counting frames: the count seeks ``img``, and ``thumb`` may be ``img``.
            thumb.save(out, "JPEG", quality=quality, icc_profile=icc)
            result.n_frames = _n_frames(img)
    except Exception as exc:  # every decode failure becomes a recorded reason
        if result.format is None and not isinstance(exc, UnidentifiedImageError):
            # Pillow can refuse in open() (its own bomb check, a WEBP it cannot start decoding)
            # before telling us the format.
            result.format = _sniff_format(data)
        reason = _classify(exc, result.format, data)
        return _fail(result, reason, _detail(name, reason, result.format, exc))

    result.ok = True
    result.width, result.height = width, height
    result.thumbnail = out.getvalue()
    result.thumb_width, result.thumb_height = thumb.size
    if model_input_size:
        # From the encoded thumbnail, not from ``thumb``: the same pixels a later decode of the
        # stored thumbnail gives, so every path to a vector agrees to the bit.
        result.model_input = load_model_input(result.thumbnail, model_input_size).tobytes()
    return result


def preprocess_many(
    items: Iterable[tuple[str, Callable[[], bytes]]],
    *,
    threads: int = 2,
    **kwargs,
) -> Iterator[tuple[str, Preprocessed]]:
    """Preprocess ``(name, loader)`` pairs on a thread pool; yield ``(name, result)`` in input order.

    ``kwargs`` are passed to :func:`preprocess_image`. A loader that raises gives
    ``error_reason="read_failed"``. At most ``2 * threads`` items are in flight, so a long (or
    endless) iterable is consumed lazily and memory stays bounded.
    """
    unknown = set(kwargs) - _PREPROCESS_KWARGS
    if unknown:
        raise TypeError(
            f"preprocess_many() got unknown keyword argument(s) {sorted(unknown)}; "
            f"it passes only {', '.join(sorted(_PREPROCESS_KWARGS))} on to preprocess_image()"
        )
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"preprocess_many(): threads must be an integer >= 1, got {threads!r}")
    _check_args(**kwargs)
    # Validation above runs at call time; the generator below only starts on the first next().
    return _preprocess_stream(items, threads, kwargs)


def _preprocess_stream(
    items: Iterable[tuple[str, Callable[[], bytes]]], threads: int, kwargs: dict
) -> Iterator[tuple[str, Preprocessed]]:
    def work(name: str, loader: Callable[[], bytes]) -> Preprocessed:
        try:
            data = loader()
        except Exception as exc:  # a failed read is recorded for that file only
            return Preprocessed(
                ok=False,
                error_reason="read_failed",
                error_detail=f"{name}: could not read the file ({type(exc).__name__}: {exc})",
            )
        return preprocess_image(data, name=name, **kwargs)

    if threads == 1:
        for name, loader in items:
            yield name, work(name, loader)
        return

    # Pillow releases the GIL while decoding, resizing and encoding, so threads scale on cores.
    window = 2 * threads
    pending: deque[tuple[str, Future[Preprocessed]]] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="preprocess") as pool:
        try:
            for name, loader in items:
                pending.append((name, pool.submit(work, name, loader)))
                if len(pending) >= window:
                    done_name, future = pending.popleft()
                    yield done_name, future.result()
            while pending:
                done_name, future = pending.popleft()
                yield done_name, future.result()
        finally:
            # The consumer stopped early (or the iterable raised): don't decode what nobody reads.
            for _, future in pending:
                future.cancel()


def load_model_input(jpeg_or_image_bytes: bytes, size: int = 224) -> np.ndarray:
    """Decode an image (normally a thumbnail) into a ``(size, size, 3)`` uint8 RGB array.

    The image is squashed to a square with BICUBIC (no crop). Raises :class:`ImageError` when the
    bytes cannot be decoded.
    """
    if size < 1:
        raise ValueError(f"load_model_input(): size must be >= 1, got {size}")
    what = f"model input ({len(jpeg_or_image_bytes)} bytes)"
    if not jpeg_or_image_bytes:
        raise ImageError("empty_file", f"{what}: no bytes to decode; the thumbnail is missing")
    fmt = None
    try:
        with Image.open(BytesIO(jpeg_or_image_bytes), formats=ALLOWED_FORMATS) as img:
            fmt = img.format
            # Both sides must stay >= size because the square resize squashes the aspect ratio.
            img.draft("RGB", (size, size))
            img.load()
            rgb = _flatten_to_rgb(_to_8bit(img))
            transpose = _ORIENTATION_TRANSPOSE.get(_orientation(img))
            if transpose is not None:
                rgb = rgb.transpose(transpose)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
            # Copy out while ``img`` is open: ``rgb`` may still be ``img`` itself.
            return np.array(rgb, dtype=np.uint8)
    except Exception as exc:
        reason = _classify(exc, fmt, jpeg_or_image_bytes)
        raise ImageError(reason, _detail(what, reason, fmt, exc)) from exc


def model_input(pixels: bytes | None, thumbnail: bytes, size: int = 224) -> np.ndarray:
    """The ``(size, size, 3)`` model input of an image: the ``model_input`` bytes that preprocess
    stored when they are of this size (no decode), else :func:`load_model_input` of the thumbnail
    (shards written without them, or for another input size)."""
    if pixels is not None and len(pixels) == size * size * 3:
        return np.frombuffer(pixels, dtype=np.uint8).reshape(size, size, 3)
    return load_model_input(thumbnail, size)


def _check_args(
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    quality: int = 85,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    model_input_size: int | None = None,
) -> None:
    if max_side < 1:
        raise ValueError(f"preprocess: max_side must be >= 1, got {max_side}")
    if not 1 <= quality <= 100:
        raise ValueError(f"preprocess: JPEG quality must be in 1..100, got {quality}")
    if max_pixels < 1:
        raise ValueError(f"preprocess: max_pixels must be >= 1, got {max_pixels}")
    if model_input_size is not None and (
        not isinstance(model_input_size, int) or model_input_size < 1
    ):
        raise ValueError(
            f"preprocess: model_input_size must be an integer >= 1 or None, got {model_input_size!r}"
        )


def _fail(result: Preprocessed, reason: str, detail: str) -> Preprocessed:
    result.ok = False
    result.error_reason = reason
    result.error_detail = detail
    return result


def _fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Largest size with longest side <= max_side and the same aspect; never upscales."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    if width >= height:
        return max_side, max(1, round(height * scale))
    return max(1, round(width * scale)), max_side


def _orientation(img: Image.Image) -> int:
    # A broken EXIF block must not cost us an otherwise good photo: treat it as upright.
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if value in _ORIENTATION_TRANSPOSE else 1
    except Exception:
        return 1


def _n_frames(img: Image.Image) -> int:
    # Counting frames walks the whole file; a damaged later frame does not make the first one
    # (the one we index) unusable, so fall back to 1 instead of failing the image.
    try:
        return int(getattr(img, "n_frames", 1))
    except Exception:
        return 1


def _to_8bit(img: Image.Image) -> Image.Image:
    """Convert any mode to one of L, LA, RGB, RGBA so it can be resized with a smooth filter."""
    mode = img.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        if "transparency" in img.info and mode in ("L", "RGB"):
            return img.convert("RGBA")
        return img
    if mode in ("P", "PA"):
        # Palette transparency lives in info["transparency"] (tRNS/GIF); RGBA keeps it.
        has_alpha = mode == "PA" or "transparency" in img.info
        return img.convert("RGBA" if has_alpha else "RGB")
    if mode in ("RGBa", "RGBX", "La", "CMYK", "YCbCr", "1"):
        return img.convert({"RGBa": "RGBA", "La": "LA", "1": "L"}.get(mode, "RGB"))
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_high_depth_to_uint8(np.asarray(img), mode), mode="L")
    return img.convert("RGB")


def _high_depth_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    # 16-bit data must be scaled, not clipped: Pillow's own I;16 -> L conversion saturates
    # everything above 255 to white.
    if mode.startswith("I;16"):
        return (arr.astype(np.uint16) >> 8).astype(np.uint8)
    if mode == "I":
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 255:
            return arr.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return (arr >> 8).astype(np.uint8)
    # Float or out-of-range integer data has no fixed white point: stretch min..max.
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _flatten_to_rgb(img: Image.Image) -> Image.Image:
    """Composite any alpha on white, then return RGB."""
    if img.mode in ("LA", "RGBA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def _classify(exc: BaseException, fmt: str | None, data: bytes) -> str:
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return "decompression_bomb"
    if isinstance(exc, UnidentifiedImageError):
        return "not_an_image"
    message = str(exc).lower()
    if "decompressed data too large" in message:  # PNG text/ICC chunk bomb
        return "decompression_bomb"
    if "truncated" in message or "broken data stream" in message:
        return "truncated"
    if fmt == "WEBP" and _riff_is_short(data):
        # libwebp only says "could not create decoder object"; the RIFF header tells the truth.
        return "truncated"
    return "corrupt"


_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def _sniff_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    return None


def _riff_is_short(data: bytes) -> bool:
    if len(data) < 12 or data[:4] != b"RIFF":
        return False
    (declared,) = struct.unpack("<I", data[4:8])
    return len(data) < declared + 8


def _detail(name: str, reason: str, fmt: str | None, exc: BaseException) -> str:
    kind = f"{fmt} " if fmt else ""
    why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if reason == "not_an_image":
        return (
            f"{name}: not a recognised image (content is not one of "
            f"{', '.join(ALLOWED_FORMATS)}); remove the file or replace it with a real image"
        )
    if reason == "truncated":
        return f"{name}: truncated {kind}data ({exc}); the file was cut short, re-upload it"
    if reason == "decompression_bomb":
        return (
            f"{name}: {kind}image is too large to decode safely ({exc}); raise max_pixels and "
            "PIL.Image.MAX_IMAGE_PIXELS if it is genuine"
        )
    return f"{name}: cannot decode {kind}data ({why}); the file is damaged, replace it"
