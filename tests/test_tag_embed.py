"""The tag_embed stage embeds the model input that preprocess stored, decoding nothing, and
gives the same features as decoding the thumbnails (shards written before the column existed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from imagezoo import make_photo

import imageindex.preprocess
from imageindex import pipeline

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def shard(tmp_path, monkeypatch) -> str:
    """One preprocessed shard of three photos (one of them portrait) and a broken file."""
    src = tmp_path / "src"
    src.mkdir()
    for i, size in enumerate([(640, 480), (480, 640), (1024, 768)]):
        make_photo(src / f"p{i}.jpg", size=size, seed=i)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    reg = tmp_path / "registry.yaml"
    reg.write_text(
        f"""
datasets:
  - id: t
    versions:
      v1: {{source: {src}}}
    store: {{uri: {tmp_path / "store"}}}
    tagger: {{type: offline, definitions: {REPO / "config" / "tags" / "samples.json"}}}
""",
        encoding="utf-8",
    )
    monkeypatch.setenv("IMAGEINDEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMAGEINDEX_REGISTRY", str(reg))
    monkeypatch.delenv("IMAGEINDEX_STAGING", raising=False)
    plan = pipeline.plan("t", "v1", "manual__model_input", shard_size=10)
    pipeline.release_lease("t", "v1", "manual__model_input")
    return pipeline.preprocess("t", "v1", plan["shards"][0])["preprocessed"]


def features(uri: str) -> tuple[np.ndarray, list, list]:
    table = pq.read_table(uri).sort_by("id")
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    return vectors, table.column("tags_ai").to_pylist(), table.column("tags_detail").to_pylist()


def model_inputs(shard: str) -> Path:
    return Path(shard).with_name("model_input.parquet")


def test_tag_embed_uses_the_stored_model_input_and_matches_decoding(shard, monkeypatch):
    ok = {r["id"] for r in pq.read_table(shard).to_pylist() if r["ok"]}
    stored = pq.read_table(model_inputs(shard)).to_pylist()
    assert len(ok) == 3 and {r["id"] for r in stored} == ok  # the broken file has none
    assert all(len(r["pixels"]) == 224 * 224 * 3 for r in stored)

    def no_decoding(*args, **kwargs):
        raise AssertionError("tag_embed decoded a thumbnail although its model input is stored")

    with monkeypatch.context() as m:
        m.setattr(imageindex.preprocess, "load_model_input", no_decoding)
        result = pipeline.tag_embed("t", "v1", shard)
    assert (result["embedded"], result["model_failed"]) == (3, 0)
    from_pixels = features(result["features"])

    # A shard preprocessed before model inputs were stored: the thumbnails are decoded, and the
    # vectors and tags are the same to the bit.
    model_inputs(shard).unlink()
    from_thumbnails = features(pipeline.tag_embed("t", "v1", shard)["features"])
    assert np.array_equal(from_pixels[0], from_thumbnails[0])
    assert from_pixels[1:] == from_thumbnails[1:]
    assert any(from_pixels[1])  # tags were given, so equal tags mean something


def test_shards_over_the_limit_leave_the_model_input_out(shard, monkeypatch):
    with_pixels = features(pipeline.tag_embed("t", "v1", shard)["features"])
    # 150 KB an image in memory until the shard is written: a huge shard stores none.
    monkeypatch.setattr(pipeline, "MODEL_INPUT_MAX_ROWS", 3)
    manifest = str(Path(shard).with_name("manifest.parquet"))
    assert pipeline.preprocess("t", "v1", manifest)["ok"] == 3
    assert pq.read_table(model_inputs(shard)).num_rows == 0
    decoded = features(pipeline.tag_embed("t", "v1", shard)["features"])
    assert np.array_equal(with_pixels[0], decoded[0]) and with_pixels[1:] == decoded[1:]
