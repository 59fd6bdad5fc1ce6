"""Unit tests for imageindex.preprocess, driven by the generated bad-file zoo (tests/imagezoo.py)."""

from __future__ import annotations

import itertools
import pathlib
import threading
from io import BytesIO

import numpy as np
import pytest
from imagezoo import GIF_FRAME_COLOURS, NOT_LISTED, make_jpeg_bytes, make_zoo, png_bomb_bytes
from PIL import Image, JpegImagePlugin

from imageindex.errors import ImageError
from imageindex.preprocess import (
    DEFAULT_MAX_SIDE,
    Preprocessed,
    load_model_input,
    model_input,
    preprocess_image,
    preprocess_many,
)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[pathlib.Path, dict[str, str | None]]:
    root = tmp_path_factory.mktemp("zoo")
    return root, make_zoo(root)


@pytest.fixture(scope="module")
def results(zoo) -> dict[str, Preprocessed]:
    root, expected = zoo
    return {rel: preprocess_image((root / rel).read_bytes(), name=rel) for rel in expected}


def thumb_image(result: Preprocessed) -> Image.Image:
    assert result.thumbnail is not None
    img = Image.open(BytesIO(result.thumbnail))
    img.load()
    return img


def test_zoo_layout(zoo):
    root, expected = zoo
    for name in NOT_LISTED:
        assert (root / name).is_file()
        assert name not in expected
    assert "a/b/c/deep.png" in expected
    assert "names/café photo ü.jpg" in expected
    assert "names/日本 画像.png" in expected
    assert (root / "broken/empty.jpg").stat().st_size == 0
    # The bomb must stay tiny on disk: the danger is in its header, not its size.
    assert (root / "broken/bomb.png").stat().st_size < 200
    assert set(expected.values()) >= {
        None,
        "truncated",
        "empty_file",
        "not_an_image",
        "decompression_bomb",
    }


def test_every_zoo_file_has_expected_outcome(zoo, results):
    root, expected = zoo
    for rel, reason in expected.items():
        result = results[rel]
        assert result.bytes == (root / rel).stat().st_size, rel
        if reason is None:
            assert result.ok, f"{rel}: {result.error_detail}"
            assert result.error_reason is None and result.error_detail is None
            assert result.width and result.height and result.thumbnail
        else:
            assert not result.ok, rel
            assert result.error_reason == reason, f"{rel}: {result.error_detail}"
            assert result.thumbnail is None
            # The sentence names the file so an operator can find it.
            assert result.error_detail and result.error_detail.startswith(f"{rel}: ")


def test_format_and_mode_recorded(results):
    assert (results["good.jpg"].format, results["good.jpg"].mode) == ("JPEG", "RGB")
    assert (results["modes/cmyk.jpg"].format, results["modes/cmyk.jpg"].mode) == ("JPEG", "CMYK")
    assert results["modes/grey16.png"].mode.startswith("I")
    assert results["modes/palette_alpha.png"].mode == "P"
    assert results["formats/photo.webp"].format == "WEBP"
    assert results["formats/photo.bmp"].format == "BMP"
    assert results["anim/multipage.tif"].format == "TIFF"
    # Decoded by content, not by name.
    assert results["formats/mislabelled_png.jpg"].format == "PNG"
    # Format is still known for broken files whose header identifies them.
    assert results["broken/truncated.jpg"].format == "JPEG"
    assert results["broken/bomb.png"].format == "PNG"
    assert results["broken/empty.jpg"].format is None


def test_thumbnails_are_rgb_jpeg_within_max_side_with_aspect_kept(results):
    for rel, result in results.items():
        if not result.ok:
            continue
        img = thumb_image(result)
        assert img.format == "JPEG", rel
        assert img.mode == "RGB", rel
        assert img.size == (result.thumb_width, result.thumb_height), rel
        assert max(img.size) <= DEFAULT_MAX_SIDE, rel
        # Small images are not upscaled.
        assert max(img.size) == min(DEFAULT_MAX_SIDE, max(result.width, result.height)), rel
        aspect = result.width / result.height
        assert abs(img.width / img.height - aspect) / aspect < 0.01, rel


def test_good_jpeg_thumbnail_matches_source(zoo, results):
    root, _ = zoo
    result = results["good.jpg"]
    assert (result.width, result.height) == (640, 480)
    assert (result.thumb_width, result.thumb_height) == (512, 384)
    reference = Image.open(root / "good.jpg").convert("RGB").resize((512, 384))
    diff = np.abs(np.asarray(thumb_image(result), float) - np.asarray(reference, float))
    assert diff.mean() < 8


def test_exif_rotated_image_reports_swapped_size_and_portrait_thumbnail(zoo, results):
    root, _ = zoo
    result = results["rotated_exif.jpg"]
    with Image.open(root / "rotated_exif.jpg") as stored:
        assert stored.size == (640, 480)
    assert (result.width, result.height) == (480, 640)
    assert (result.thumb_width, result.thumb_height) == (384, 512)
    # Orientation 6 means "rotate 90 degrees clockwise": the stored top-left corner ends up at
    # the top-right of the thumbnail.
    upright = np.asarray(thumb_image(result), float)
    stored_thumb = np.asarray(thumb_image(results["good.jpg"]), float)  # same pixels, unrotated
    expected = np.rot90(stored_thumb, k=-1)
    assert upright.shape == expected.shape
    assert np.abs(upright - expected).mean() < 8


def test_cmyk_converted_to_rgb(results):
    good = np.asarray(thumb_image(results["good.jpg"]), float)
    cmyk = np.asarray(thumb_image(results["modes/cmyk.jpg"]), float)
    assert np.abs(good - cmyk).mean() < 12


def test_grey16_scaled_not_clipped(results):
    result = results["modes/grey16.png"]
    pixels = np.asarray(thumb_image(result), float)
    # The file holds a full-range 0..65535 horizontal ramp.
    assert 110 < pixels.mean() < 145
    assert pixels[:, :8].mean() < 20
    assert pixels[:, -8:].mean() > 235


def test_palette_transparency_becomes_white(results):
    pixels = np.asarray(thumb_image(results["modes/palette_alpha.png"]), float)
    left, right = pixels[:, :50], pixels[:, 70:]
    assert left.min() > 240  # transparent -> white
    assert right[..., 2].mean() > 230 and right[..., :2].mean() < 25  # opaque blue stays blue


def test_grey_alpha_transparent_region_becomes_white(results):
    pixels = np.asarray(thumb_image(results["modes/grey_alpha.png"]), float)
    assert pixels[:, :40].min() > 240
    assert pixels[:, 60:].mean() < 60


def test_animated_gif_first_frame_and_frame_count(results):
    result = results["anim/animated.gif"]
    assert result.n_frames == 3
    mean = np.asarray(thumb_image(result), float).reshape(-1, 3).mean(axis=0)
    assert np.abs(mean - np.array(GIF_FRAME_COLOURS[0])).max() < 20


def test_multipage_tiff_frame_count(results):
    assert results["anim/multipage.tif"].n_frames == 2
    assert results["good.jpg"].n_frames == 1


def test_animated_webp_first_frame(tmp_path):
    frames = [Image.new("RGB", (64, 48), colour) for colour in GIF_FRAME_COLOURS]
    out = BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    result = preprocess_image(out.getvalue(), name="anim.webp")
    assert result.ok and result.format == "WEBP" and result.n_frames == 3
    mean = np.asarray(thumb_image(result), float).reshape(-1, 3).mean(axis=0)
    assert np.abs(mean - np.array(GIF_FRAME_COLOURS[0])).max() < 20


@pytest.mark.parametrize(
    "mode, values",
    [
        ("I", np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.int32)),
        ("F", np.linspace(-1.0, 1.0, 64 * 32).reshape(32, 64).astype(np.float32)),
    ],
)
def test_high_depth_modes_stretch_to_8bit(mode, values):
    img = Image.fromarray(values, mode=mode)
    out = BytesIO()
    img.save(out, "TIFF")
    result = preprocess_image(out.getvalue(), name=f"deep.{mode}.tif")
    assert result.ok, result.error_detail
    assert result.mode == mode
    assert 100 < np.asarray(thumb_image(result), float).mean() < 155


def test_decompression_bomb_uses_own_limit_not_pillows(monkeypatch):
    # Even with Pillow's global guard switched off, our header check refuses the bomb.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    result = preprocess_image(png_bomb_bytes(), name="bomb.png")
    assert result.error_reason == "decompression_bomb"
    assert "30000x30000" in result.error_detail and "max_pixels" in result.error_detail
    # And the limit is configurable.
    small = make_jpeg_bytes(64, 48)
    assert preprocess_image(small, name="s.jpg", max_pixels=64 * 48).ok
    refused = preprocess_image(small, name="s.jpg", max_pixels=64 * 48 - 1)
    assert refused.error_reason == "decompression_bomb" and refused.format == "JPEG"


def test_truncated_png_and_corrupt_data():
    png = BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        png, "PNG"
    )
    data = png.getvalue()
    assert preprocess_image(data[: len(data) // 2], name="t.png").error_reason == "truncated"
    webp = BytesIO()
    Image.open(BytesIO(data)).save(webp, "WEBP")
    cut = preprocess_image(webp.getvalue()[:300], name="t.webp")
    assert (cut.error_reason, cut.format) == ("truncated", "WEBP")
    # Intact header, garbage pixel data.
    jpeg = make_jpeg_bytes(64, 48)
    garbage = jpeg[:200] + bytes(range(256)) * 8
    result = preprocess_image(garbage, name="g.jpg")
    assert not result.ok and result.error_reason in {"truncated", "corrupt"}
    assert result.error_detail.startswith("g.jpg: ")


def test_twelve_megapixel_jpeg_uses_draft_and_keeps_original_size(monkeypatch):
    data = make_jpeg_bytes(4000, 3000, seed=3)
    decoded_sizes = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def spy_draft(self, mode, size):
        answer = original_draft(self, mode, size)
        decoded_sizes.append(self.size)
        return answer

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy_draft)
    result = preprocess_image(data, name="big.jpg")
    # 1/4 DCT scale: the largest reduction whose longest side is still >= 512.
    assert decoded_sizes == [(1000, 750)]
    assert result.ok, result.error_detail
    assert (result.width, result.height) == (4000, 3000)
    assert (result.thumb_width, result.thumb_height) == (512, 384)
    assert result.bytes == len(data)
    # Compare with a full-resolution decode: draft decoding must not cost visible quality.
    reference = Image.open(BytesIO(data)).resize((512, 384), Image.Resampling.LANCZOS)
    diff = np.abs(np.asarray(thumb_image(result), float) - np.asarray(reference, float))
    assert diff.mean() < 6


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="max_side"):
        preprocess_image(b"x", name="x.jpg", max_side=0)
    # Raised at call time, not at the first next(), so a typo fails where it is made.
    with pytest.raises(TypeError, match="bogus"):
        preprocess_many([], bogus=1)
    with pytest.raises(ValueError, match="threads"):
        preprocess_many([], threads=0)
    with pytest.raises(ValueError, match="quality"):
        preprocess_many([], quality=0)
    with pytest.raises(ValueError, match="model_input_size"):
        preprocess_many([], model_input_size=0)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_preprocess_many_keeps_order_and_records_read_failures(zoo, threads):
    root, expected = zoo

    def loader_for(rel):
        return lambda: (root / rel).read_bytes()

    def failing():
        raise PermissionError("access denied by bucket policy")

    items = [(rel, loader_for(rel)) for rel in expected]
    items.insert(3, ("gone.jpg", failing))
    out = list(preprocess_many(items, threads=threads, max_side=128))
    assert [name for name, _ in out] == [name for name, _ in items]
    by_name = dict(out)
    failed = by_name.pop("gone.jpg")
    assert failed.error_reason == "read_failed" and not failed.ok
    assert (
        "gone.jpg" in failed.error_detail
        and "access denied by bucket policy" in failed.error_detail
    )
    for rel, reason in expected.items():
        assert by_name[rel].error_reason == reason, rel
        if reason is None:
            assert max(by_name[rel].thumb_width, by_name[rel].thumb_height) <= 128


@pytest.mark.timeout(60)  # an unbounded read-ahead never finishes on an endless input
def test_preprocess_many_is_lazy_and_bounded():
    data = make_jpeg_bytes(64, 48)
    pulled = 0
    lock = threading.Lock()

    def endless():
        nonlocal pulled
        for i in itertools.count():
            with lock:
                pulled += 1
            yield f"{i}.jpg", lambda: data

    stream = preprocess_many(endless(), threads=2)
    first = list(itertools.islice(stream, 5))
    stream.close()
    assert [name for name, _ in first] == [f"{i}.jpg" for i in range(5)]
    assert all(result.ok for _, result in first)
    # An endless input works only if at most a small window is read ahead.
    assert pulled <= 5 + 2 * 2


def test_load_model_input(results):
    arr = load_model_input(results["good.jpg"].thumbnail)
    assert arr.shape == (224, 224, 3) and arr.dtype == np.uint8
    assert 20 < arr.mean() < 235
    # Works on full-size images too (draft decode), squashing without crop.
    big = load_model_input(make_jpeg_bytes(1600, 1200), size=64)
    assert big.shape == (64, 64, 3) and big.dtype == np.uint8
    grey = load_model_input(results["modes/grey16.png"].thumbnail, size=32)
    assert grey.shape == (32, 32, 3)
    with pytest.raises(ImageError) as info:
        load_model_input(b"not an image")
    assert info.value.reason == "not_an_image"


def test_model_input_is_the_decoded_thumbnail_to_the_bit(zoo):
    root, expected = zoo
    items = [(rel, (lambda p=root / rel: p.read_bytes())) for rel in expected]
    for rel, res in preprocess_many(items, threads=2, model_input_size=96):
        if not res.ok:
            assert res.model_input is None, rel
            continue
        # Exactly what decoding the stored thumbnail gives (search by an indexed image does
        # that), so a vector made from it equals one made from the thumbnail.
        assert res.model_input == load_model_input(res.thumbnail, 96).tobytes(), rel
    assert preprocess_image(make_jpeg_bytes(64, 48), name="x.jpg").model_input is None


def test_model_input_reads_stored_pixels_and_decodes_otherwise(results):
    thumb = results["good.jpg"].thumbnail
    pixels = load_model_input(thumb, 32).tobytes()
    # Stored pixels of the right size are used as they are: no thumbnail is decoded.
    arr = model_input(pixels, b"", 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8 and arr.tobytes() == pixels
    # None (a shard written before model inputs were stored) or another size: decode.
    assert np.array_equal(model_input(None, thumb, 32), load_model_input(thumb, 32))
    assert np.array_equal(model_input(pixels, thumb, 16), load_model_input(thumb, 16))
    with pytest.raises(ImageError):
        model_input(pixels, b"", 16)
