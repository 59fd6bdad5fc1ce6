"""A "bad-file zoo": synthetic images, awkward formats and broken files, generated at test time.

Nothing here is a real photo and nothing is committed: every file is drawn with Pillow/numpy.
``make_zoo(root)`` returns ``{relative posix path: expected error_reason or None if OK}``.
"""

from __future__ import annotations

import pathlib
import zlib
from io import BytesIO

import numpy as np
from PIL import Image, ImageDraw

# File the sources do not list (extension not an image); created but not returned by make_zoo.
NOT_LISTED = ("notes.txt",)

# Colours of the three animated GIF frames, first frame first (tests check the thumbnail is red).
GIF_FRAME_COLOURS = ((220, 20, 20), (20, 200, 20), (20, 20, 220))


def photo_image(size: tuple[int, int] = (640, 480), seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth random gradients, shapes, and a little sensor-like noise."""
    width, height = size
    rng = np.random.default_rng(seed)
    # Upscaling a tiny random grid with BICUBIC gives smooth, photo-like colour gradients.
    grid = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    img = Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, x1 = sorted(rng.integers(0, width, size=2).tolist())
        y0, y1 = sorted(rng.integers(0, height, size=2).tolist())
        colour = tuple(rng.integers(0, 256, size=3).tolist())
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0))
    line_width = max(1, width // 200)
    for _ in range(6):
        points = rng.integers(0, [width, height], size=(2, 2)).ravel().tolist()
        draw.line(points, fill=tuple(rng.integers(0, 256, size=3).tolist()), width=line_width)
    # Noise makes JPEG sizes and decode times realistic (flat synthetic images compress to nothing).
    pixels = np.asarray(img, dtype=np.int16)
    noise = rng.integers(-6, 7, size=(height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB")


def make_photo(
    path: pathlib.Path | str,
    size: tuple[int, int] = (640, 480),
    seed: int = 0,
    fmt: str = "JPEG",
) -> pathlib.Path:
    """Write a synthetic photo to ``path`` (parents created); a different ``seed`` changes it."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    photo_image(size, seed).save(path, fmt)
    return path


def make_jpeg_bytes(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """The JPEG bytes of a synthetic photo (used by the benchmark)."""
    out = BytesIO()
    photo_image((width, height), seed).save(out, "JPEG", quality=quality)
    return out.getvalue()


def png_bomb_bytes(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` pixels (CRC fixed so it parses)."""
    out = BytesIO()
    Image.new("RGB", (1, 1), (255, 0, 0)).save(out, "PNG")
    data = bytearray(out.getvalue())
    # 8-byte signature, then IHDR: length(4) "IHDR"(4) width(4) height(4) ... crc(4).
    assert data[12:16] == b"IHDR"
    data[16:20] = width.to_bytes(4, "big")
    data[20:24] = height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _grey16_gradient(size: tuple[int, int] = (256, 128)) -> Image.Image:
    # Full 0..65535 horizontal ramp: a correct 8-bit reduction has mean ~127.
    width, height = size
    ramp = np.linspace(0, 65535, width, dtype=np.float64).round().astype(np.uint16)
    return Image.fromarray(np.tile(ramp, (height, 1)))


def _palette_with_transparency() -> Image.Image:
    # Left half transparent (index 0), right half opaque blue (index 1).
    img = Image.new("P", (120, 80), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    ImageDraw.Draw(img).rectangle((60, 0, 119, 79), fill=1)
    img.info["transparency"] = 0
    return img


def _save(root: pathlib.Path, rel: str, img: Image.Image, fmt: str, **params) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **params)


def _write(root: pathlib.Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_zoo(root: pathlib.Path) -> dict[str, str | None]:
    """Create the zoo under ``root``; return ``{relative posix path: expected error_reason}``.

    ``None`` means the file must be indexed OK. ``notes.txt`` is created but not returned,
    because sources only list image extensions.
    """
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}
    photo = photo_image((640, 480), seed=1)

    _save(root, "good.jpg", photo, "JPEG", quality=90)
    expected["good.jpg"] = None

    good_jpeg = (root / "good.jpg").read_bytes()
    _write(root, "broken/truncated.jpg", good_jpeg[: len(good_jpeg) // 2])
    expected["broken/truncated.jpg"] = "truncated"

    _write(root, "broken/empty.jpg", b"")
    expected["broken/empty.jpg"] = "empty_file"

    _write(root, "broken/text.jpg", b"This is a text file with an image extension.\n" * 20)
    expected["broken/text.jpg"] = "not_an_image"

    _write(root, "broken/bomb.png", png_bomb_bytes())
    expected["broken/bomb.png"] = "decompression_bomb"

    _save(root, "modes/cmyk.jpg", photo.convert("CMYK"), "JPEG", quality=90)
    expected["modes/cmyk.jpg"] = None

    _save(root, "modes/grey16.png", _grey16_gradient(), "PNG")
    expected["modes/grey16.png"] = None

    _save(root, "modes/palette_alpha.png", _palette_with_transparency(), "PNG")
    expected["modes/palette_alpha.png"] = None

    la = Image.new("LA", (100, 60), (0, 0))
    ImageDraw.Draw(la).rectangle((50, 0, 99, 59), fill=(40, 255))
    _save(root, "modes/grey_alpha.png", la, "PNG")
    expected["modes/grey_alpha.png"] = None

    _save(root, "modes/bilevel.png", photo.convert("1"), "PNG")
    expected["modes/bilevel.png"] = None

    _save(root, "modes/grey.jpg", photo.convert("L"), "JPEG", quality=90)
    expected["modes/grey.jpg"] = None

    frames = [Image.new("RGB", (160, 120), colour) for colour in GIF_FRAME_COLOURS]
    _save(root, "anim/animated.gif", frames[0], "GIF", save_all=True, append_images=frames[1:])
    expected["anim/animated.gif"] = None

    pages = [photo_image((200, 150), seed=2), photo_image((200, 150), seed=3)]
    _save(root, "anim/multipage.tif", pages[0], "TIFF", save_all=True, append_images=pages[1:])
    expected["anim/multipage.tif"] = None

    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise (portrait)
    _save(root, "rotated_exif.jpg", photo, "JPEG", quality=90, exif=exif.tobytes())
    expected["rotated_exif.jpg"] = None

    _save(root, "formats/photo.webp", photo, "WEBP", quality=80)
    expected["formats/photo.webp"] = None

    _save(root, "formats/photo.bmp", photo_image((120, 90), seed=4), "BMP")
    expected["formats/photo.bmp"] = None

    _save(root, "formats/mislabelled_png.jpg", photo_image((160, 120), seed=5), "PNG")
    expected["formats/mislabelled_png.jpg"] = None

    _save(root, "formats/UPPER.JPG", photo_image((160, 120), seed=6), "JPEG")
    expected["formats/UPPER.JPG"] = None

    _save(root, "names/café photo ü.jpg", photo_image((160, 120), seed=7), "JPEG")
    expected["names/café photo ü.jpg"] = None

    _save(root, "names/日本 画像.png", photo_image((160, 120), seed=8), "PNG")
    expected["names/日本 画像.png"] = None

    _save(root, "a/b/c/deep.png", photo_image((160, 120), seed=9), "PNG")
    expected["a/b/c/deep.png"] = None

    _write(root, NOT_LISTED[0], b"Not an image; sources must not list this file.\n")
    return expected
