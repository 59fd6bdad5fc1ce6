"""Models (names, specs, prompt), the filename baseline and the embedding runner; what one model's
result writes."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from imagezoo import make_photo
from PIL import Image

from imageindex import evaluation as ev
from imageindex.embedders.base import Embedder, ImageEmbeddings
from imageindex.errors import ConfigError

# ------------------------------------------------------------------------------------------------
# models


def test_resolve_model_names():
    assert ev.resolve_model("filename").is_baseline
    assert ev.resolve_model("offline").spec == {"type": "offline"}
    assert ev.resolve_model("gme").spec == {"type": "gme"}
    choice = ev.resolve_model("dashscope:multimodal-embedding-v1")
    assert choice.spec == {"type": "dashscope", "model": "multimodal-embedding-v1"}
    assert choice.label == "dashscope:multimodal-embedding-v1"
    assert ev.resolve_model('{"type": "offline", "top_k_classes": 5}').spec["top_k_classes"] == 5
    for bad, message in [
        ("clip", "unknown"),
        ("offline:x", "TYPE:MODEL works for types"),
        ('{"type": "offline", "colour": 1}', "unknown key"),
        ("{not json", "invalid JSON"),
        ("", "non-empty"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ev.resolve_model(bad)
    assert ev.model_dir_name("offline") == "offline"
    assert ev.model_dir_name("dashscope:m").startswith("dashscope_m-")


def test_filename_baseline_on_a_tiny_set(tmp_path):
    names = ["red_car.jpg", "zz1.jpg", "Blue-Car.jpg", "bottlecap.jpg", "cat photo.png", "zz2.jpg"]
    root = tmp_path / "set"
    for i, name in enumerate(names):
        make_photo(root / "images" / name, (64, 48), seed=i, fmt="PNG" if "png" in name else "JPEG")
    lines = [
        {"image_id": Path(n).stem, "tags": tags}
        for n, tags in zip(
            names, [["car"], ["car"], ["car"], ["bottle cap"], ["cat"], ["bird"]], strict=True
        )
    ]
    (root / "dataset.jsonl").write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    s = ev.load_eval_set(root)
    assert list(ev.filename_scores("car", names)) == [2.0 + 1, 0, 2.0 + 1, 0, 0, 0]
    assert ev.filename_scores("brick wall", ["brick.png", "wall_brick.jpg"]).tolist() == [0.5, 1.0]
    result = ev.evaluate_model(s, "filename", ks=(1, 5))
    assert result.prompt is None and result.embedder == "filename-baseline"
    # Both named cars first (tie broken by the fixed hash), the unnamed car somewhere after.
    assert set(result.rankings["car"][:2]) == {"red_car", "Blue-Car"}
    assert result.rankings["bottle cap"][0] == "bottlecap"
    assert result.rankings["cat"][0] == "cat photo"
    # Deterministic: the same order on every call, independent of the dataset order.
    again = ev.filename_ranking("bird", list(reversed(s.images)))
    assert ev.filename_ranking("bird", s.images) == again
    summary = result.summary()
    lucky_bird = result.rankings["bird"][0] == "zz2"  # no name says bird: chance order
    assert summary["precision"]["1"] == pytest.approx((3 + lucky_bird) / 4)
    assert summary["tags_counted"] == {"1": 4, "5": 0}
    assert summary["precision"]["5"] is None
    # car has 3 relevant images, so K = 5 is capped to P@3 and logged only; the third car is
    # ranked by the tie-break hash among the names that do not match.
    third = result.rankings["car"][2] == "zz1"
    capped = [t for t in result.per_tag["car"] if not t.counted]
    assert [(t.k, t.precision) for t in capped] == [(3, pytest.approx((2 + third) / 3))]


class ColourEmbedder(Embedder):
    """Images -> their mean RGB; texts "red"/"green"/"blue" -> that axis. Rejects grey images."""

    name = "colour-test"
    dim = 3

    def embed_images(self, images):
        raise AssertionError("the evaluation passes JPEG thumbnails")

    def embed_jpegs(self, jpegs):
        vectors, errors = [], []
        for data in jpegs:
            rgb = np.asarray(Image.open(BytesIO(data)).convert("RGB"), np.float32).mean(axis=(0, 1))
            grey = float(rgb.max() - rgb.min()) < 10
            vectors.append(np.zeros(3) if grey else rgb / np.linalg.norm(rgb))
            errors.append("grey: refused" if grey else None)
        return ImageEmbeddings(np.asarray(vectors, np.float32), errors=errors)

    def embed_texts(self, texts):
        axes = {"red": 0, "green": 1, "blue": 2}
        out = np.zeros((len(texts), 3), np.float32)
        for i, t in enumerate(texts):
            out[i, axes[t.split()[-1]]] = 1.0
        return out


def test_evaluate_model_with_an_embedder_and_failed_images(tmp_path):
    images = {
        "r1.jpg": (250, 10, 10),
        "r2.jpg": (200, 60, 40),
        "g1.jpg": (10, 240, 10),
        "b1.jpg": (10, 10, 250),
        "grey.jpg": (128, 128, 128),
        "broken.jpg": None,
    }
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    for name, colour in images.items():
        if colour is None:
            (root / "images" / name).write_bytes(b"not a jpeg")
        else:
            Image.new("RGB", (40, 30), colour).save(root / "images" / name)
    tags = {"r1": ["red"], "r2": ["red"], "g1": ["green"], "b1": ["blue"], "grey": ["red"]}
    tags["broken"] = ["blue"]
    (root / "dataset.jsonl").write_text(
        "\n".join(json.dumps({"image_id": k, "tags": v}) for k, v in tags.items()), "utf-8"
    )
    s = ev.load_eval_set(root)
    result = ev.evaluate_model(
        s, "offline", ks=(1, 2, 5), prompt="the colour {tag}", embedder=ColourEmbedder()
    )
    # Failed images are not ranked but stay relevant (their tag's precision pays for them).
    assert set(result.failed) == {"grey", "broken"}
    assert "grey: refused" in result.failed["grey"] and "broken.jpg" in result.failed["broken"]
    assert all(len(r) == 4 for r in result.rankings.values())
    assert result.rankings["red"][:2] == ["r1", "r2"]
    assert result.rankings["green"][0] == "g1" and result.rankings["blue"][0] == "b1"
    assert result.relevant["red"] == ["r1", "r2", "grey"]
    summary = result.summary()
    assert summary["embedder"] == "colour-test" and summary["dim"] == 3
    assert summary["failed_images"] == 2 and summary["prompt"] == "the colour {tag}"
    # red: 3 relevant -> P@1 1, P@2 1, capped P@3 = 2/3 (logged only); green 1/1; blue 1 of 2.
    # red: 3 relevant -> P@1 1, P@2 1, capped P@3 = 2/3 logged only; green: 1 relevant ->
    # P@1 1, capped P@1 logged only; blue: 2 relevant, one failed -> P@1 1, P@2 1/2.
    assert summary["precision"] == {"1": 1.0, "2": 0.75, "5": None}
    assert summary["tags_counted"] == {"1": 3, "2": 2, "5": 0}

    written = ev.write_model_result(tmp_path / "out", result)
    folder = Path(written["path"])
    log = (folder / "per_tag.log").read_text().splitlines()
    assert log[:3] == [
        "Tag red, Len(GT) 3, Precision@1 1.0000 ",
        "Tag red, Len(GT) 3, Precision@2 1.0000 ",
        "Tag red, Len(GT) 3, Precision@3 0.6667 ",
    ]
    records = [json.loads(x) for x in (folder / "per_tag.jsonl").read_text().splitlines()]
    red = records[0]
    assert red["query"] == "the colour red" and red["n_relevant"] == 3
    assert red["capped"] == {"requested": 5, "k": 3, "precision": pytest.approx(2 / 3)}
    assert red["gts"] == ["r1", "r2", "grey"] and red["preds"][:2] == ["r1", "r2"]
    assert json.loads((folder / "result.json").read_text())["failures"].keys() == {
        "grey",
        "broken",
    }


def test_prompt_must_hold_tag():
    assert ev.check_prompt("{tag}") == "{tag}"
    for bad in ("a photo", "{tag} {other}", "{tag} {0}"):
        with pytest.raises(ConfigError):
            ev.check_prompt(bad)
