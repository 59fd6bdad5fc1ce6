"""The SDK loader over real indexed versions, manifests on disk and on SeaweedFS S3."""

from __future__ import annotations

import json

import numpy as np
import pytest
from imagezoo import make_photo
from PIL import Image
from test_export import indexed, sub  # noqa: F401  (fixture)

from imageindex import load_version, pipeline
from imageindex.errors import ConfigError, RegistryError, SourceError
from imageindex.export import export_search, export_version
from imageindex.search import SearchRequest


def test_loads_every_indexed_image_of_a_version(indexed):  # noqa: F811
    ds = load_version("t", "v1")
    assert len(ds) == 8
    items = list(ds)
    assert len(items) == 8 and ds.skipped == 0
    uris = set()
    for img, meta in items:
        assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (96, 72)
        assert meta["width"] == 96 and meta["dataset_version"] == "v1"
        assert isinstance(meta["tags_ai"], list) and meta["file_name"].endswith(".jpg")
        uris.add(meta["uri"])
    assert uris == {p.as_uri() for p in indexed["src"].rglob("*.jpg")}
    # transform, and shards that split the version without overlap
    sizes = [x for x, _ in load_version("t", transform=lambda im: im.size)]
    assert sizes == [(96, 72)] * 8
    a = {m["uri"] for _, m in ds.shard(2, 0)}
    b = {m["uri"] for _, m in ds.shard(2, 1)}
    assert a | b == uris and not a & b and len(a) == 4
    with pytest.raises(ConfigError):
        ds.shard(2, 2)
    with pytest.raises(RegistryError, match="no version 'nope'"):
        load_version("t", "nope")


def test_pytorch_dataloader_iterates_it(indexed):  # noqa: F811
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    def to_tensor(im):
        return torch.from_numpy(np.asarray(im).copy())

    ds = load_version("t", "v1", transform=to_tensor)
    batches = list(DataLoader(ds.as_torch(), batch_size=3, collate_fn=lambda b: b))
    assert [len(b) for b in batches] == [3, 3, 2]
    assert all(t.shape == (72, 96, 3) for b in batches for t, _ in b)


def test_logical_version_and_manifest(indexed):  # noqa: F811
    req = SearchRequest(dataset_id="t", path_prefix=sub(indexed))
    export_version(req, "picked")
    pipeline.run_all("t", "picked")
    picked = {m["uri"] for _, m in load_version("t", "picked")}
    assert len(picked) == 4 and all("/sub/" in u for u in picked)
    # straight from an export file, without indexing it: tags come back as lists
    dest = indexed["tmp"] / "sub.csv"
    export_search(req, str(dest))
    got = list(load_version("t", manifest=str(dest)))
    assert {m["uri"] for _, m in got} == picked
    assert all(isinstance(m["tags_ai"], list) and float(m["score"]) == 1.0 for _, m in got)


def test_unreadable_file_is_skipped_or_raised(indexed):  # noqa: F811
    (indexed["src"] / "p0.jpg").write_bytes(b"not an image any more")
    (indexed["src"] / "p2.jpg").unlink()
    ds = load_version("t", "v1")
    assert len(list(ds)) == 6 and ds.skipped == 2
    with pytest.raises(SourceError, match=r"p[02]\.jpg"):
        list(load_version("t", "v1", errors="raise"))


def test_manifest_of_s3_objects_streams_from_s3(indexed, seaweedfs, monkeypatch):  # noqa: F811
    bucket = seaweedfs.new_bucket("load")
    client = seaweedfs.client()
    lines = []
    for i in range(3):
        path = make_photo(indexed["tmp"] / f"s3-{i}.png", seed=40 + i, size=(50, 40), fmt="PNG")
        client.put_object(Bucket=bucket, Key=f"imgs/{i}.png", Body=path.read_bytes())
        lines.append(json.dumps({"uri": f"s3://{bucket}/imgs/{i}.png", "tags_ai": ["x"]}))
    lines.append(json.dumps({"uri": f"s3://{bucket}/imgs/missing.png"}))
    client.put_object(Bucket=bucket, Key="m.jsonl", Body="\n".join(lines).encode())
    monkeypatch.setenv("IMAGEINDEX_S3_CONN_ID", seaweedfs.conn_id)
    ds = load_version("t", manifest=f"s3://{bucket}/m.jsonl", mode=None)
    items = list(ds)
    assert [m["uri"].rsplit("/", 1)[-1] for _, m in items] == ["0.png", "1.png", "2.png"]
    assert all(img.format == "PNG" and img.size == (50, 40) for img, _ in items)
    assert ds.skipped == 1 and len(ds) == 4
