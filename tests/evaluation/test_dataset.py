"""The evaluation folder: dataset.jsonl + images/, and its errors naming file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from imageindex import evaluation as ev

# ------------------------------------------------------------------------------------------------
# the evaluation folder


def write_set(root: Path, lines: list[str], images: dict[str, str] | None = None) -> Path:
    """``images``: file name -> colour; ``lines`` are written to dataset.jsonl as they are."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, colour in (images or {}).items():
        Image.new("RGB", (64, 48), colour).save(root / "images" / name)
    (root / "dataset.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_load_eval_set_reference_layout_and_variants(tmp_path):
    root = write_set(
        tmp_path,
        [
            '{"image_id": "a", "tags": ["cat", " dog ", "cat"]}',
            "",
            '{"image_id": "b.png", "tags": ["dog"]}',
            '{"image_id": "c", "tags": []}',
            '{"image_id": 7, "tags": ["seven"]}',
        ],
        {"a.jpg": "red", "b.png": "green", "c.webp": "blue", "7.jpg": "white"},
    )
    s = ev.load_eval_set(root)
    assert [im.image_id for im in s.images] == ["a", "b", "c", "7"]
    assert [im.path.name for im in s.images] == ["a.jpg", "b.png", "c.webp", "7.jpg"]
    assert s.relevant == {"cat": ["a"], "dog": ["a", "b"], "seven": ["7"]}
    assert s.images[0].tags == ("cat", "dog") and s.images[0].line == 1
    assert s.info()["images"] == 4 and s.info()["tags"] == 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"image_id": "a", "tags": ["x"]', "invalid JSON"),
        ('["a", ["x"]]', "expected an object"),
        ('{"tags": ["x"]}', "missing field 'image_id'"),
        ('{"image_id": "a"}', "missing field 'tags'"),
        ('{"image_id": "a", "tags": "x"}', "tags must be a list of strings"),
        ('{"image_id": "a", "tags": ["x", 3]}', "tags must be a list of strings"),
        ('{"image_id": "a", "tags": ["x", "  "]}', "empty tag"),
        ('{"image_id": "", "tags": ["x"]}', "image_id must be a non-empty string"),
        ('{"image_id": "a", "tags": ["x"]}', "already given on line 1"),
        ('{"image_id": "missing", "tags": ["x"]}', "not found in"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
    root = write_set(tmp_path, ['{"image_id": "a", "tags": ["x"]}', line], {"a.jpg": "red"})
    with pytest.raises(ev.EvalDataError) as exc:
        ev.load_eval_set(root)
    assert f"{root / 'dataset.jsonl'}:2" in str(exc.value)
    assert message in str(exc.value)


def test_missing_folder_file_or_tags(tmp_path):
    with pytest.raises(ev.EvalDataError, match="does not exist"):
        ev.load_eval_set(tmp_path / "nope")
    with pytest.raises(ev.EvalDataError, match="dataset.jsonl is missing"):
        ev.load_eval_set(tmp_path)
    root = write_set(tmp_path, ['{"image_id": "a", "tags": []}'], {"a.jpg": "red"})
    with pytest.raises(ev.EvalDataError, match="nothing to query"):
        ev.load_eval_set(root)
    (tmp_path / "dataset.jsonl").write_bytes(b'{"image_id": "a", "tags": ["x"]}\n\xff\xfe\n')
    with pytest.raises(ev.EvalDataError, match=r"dataset\.jsonl:2: not UTF-8"):
        ev.load_eval_set(tmp_path)
    # Two files for one id without the reference's .jpg: ambiguous, so not found.
    root = write_set(
        tmp_path / "two", ['{"image_id": "a", "tags": ["x"]}'], {"a.png": "red", "a.gif": "red"}
    )
    with pytest.raises(ev.EvalDataError, match=r"looked for a\.jpg, a, a\.\*"):
        ev.load_eval_set(root)
