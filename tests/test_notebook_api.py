"""The Python API for notebooks (imageindex.search, load_features, eval_summary) against the demo
index, and README.md's notebook example run as written."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from demo_project import README, REPO, as_newcomer, demo_project, newcomer_env  # noqa: F401

import imageindex
from imageindex.errors import ConfigError, RegistryError
from imageindex.notebook import HIT_COLUMNS, split_tags


def readme_notebook_block() -> str:
    """The python block of README's 'From Python and notebooks' section."""
    section = README.read_text(encoding="utf-8").split("### From Python and notebooks", 1)[1]
    match = re.search(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert match, "README.md: no python block under 'From Python and notebooks'"
    return match.group(1)


@pytest.fixture
def in_demo(demo_project, monkeypatch):  # noqa: F811
    """This process as a notebook started in the demo checkout: no IMAGEINDEX_* but the cache."""
    as_newcomer(monkeypatch, demo_project / "var" / "samples")  # a folder below the checkout
    return demo_project


def test_readme_notebook_example_runs(demo_project):  # noqa: F811
    script = demo_project / "readme_notebook.py"
    script.write_text(readme_notebook_block(), encoding="utf-8")
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), script.name],
        cwd=demo_project,
        env=newcomer_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"^\d\.\d{3}  coffee\.png  ", out, re.M), out  # the coffee photo is found
    assert re.search(r"chelsea\.png\s+1\.0", out), out  # nearest to itself in the feature table
    assert re.search(r"^offline\s+\d+", out, re.M) and re.search(r"^filename\s+\d+", out, re.M)
    summary = demo_project / "eval-out" / "summary.json"
    frame = imageindex.eval_summary(demo_project / "eval-out")
    report = json.loads(summary.read_text())
    assert list(frame.index) == list(report["models"])
    for k in report["ks"]:
        assert frame.loc["offline", f"P@{k}"] == report["models"]["offline"]["precision"][str(k)]


def test_pages_walk_every_match_once(in_demo):
    everything = imageindex.search("samples", tags_any="Animal", top_k=1000)
    assert everything.next_cursor is None and len(everything) >= 4
    first = imageindex.search("samples", tags_any=["Animal"], top_k=2)
    pages = list(first.pages())
    assert len(pages) >= 2 and all(len(p) <= 2 for p in pages)
    assert [h.uri for p in pages for h in p] == [h.uri for h in everything]
    assert pages[-1].next_page() is None
    assert all("Animal" in h.tags_ai for h in everything)


def test_to_pandas_is_one_row_per_hit(in_demo):
    res = imageindex.search("samples", text="a cup of coffee", top_k=5)
    df = res.to_pandas()
    assert list(df.columns) == HIT_COLUMNS and len(df) == len(res) == 5
    assert df["file_name"].tolist() == [h.file_name for h in res]
    assert df["score"].is_monotonic_decreasing and str(df["mtime"].dtype).endswith(", UTC]")
    assert df.loc[0, "tags_ai"] == res[0].tags_ai
    empty = imageindex.search("samples", dsl="width > 100000").to_pandas()
    assert empty.empty and list(empty.columns) == HIT_COLUMNS


def test_image_as_path_bytes_or_pil_is_one_query(in_demo):
    from PIL import Image

    path = in_demo / "var" / "samples" / "skimage" / "chelsea.png"
    by_path = imageindex.search("samples", image=str(path), top_k=3)
    by_bytes = imageindex.search("samples", image=path.read_bytes(), top_k=3)
    pil = Image.open(io.BytesIO(path.read_bytes()))
    by_pil = imageindex.search("samples", image=pil, top_k=3)
    assert by_path[0].file_name == "chelsea.png"
    assert [h.uri for h in by_bytes] == [h.uri for h in by_path] == [h.uri for h in by_pil]
    assert by_pil[0].score == pytest.approx(by_path[0].score, abs=1e-5)


def test_load_features_frame_and_matrix_line_up(in_demo):
    frame = imageindex.load_features("samples")
    count = len(imageindex.search("samples", top_k=1000))
    assert len(frame) == count and {"uri", "tags_ai", "embedding"} <= set(frame.columns)
    meta, matrix = imageindex.load_features(
        "samples", "v1", columns=["uri", "file_name"], return_embeddings=True
    )
    assert list(meta.columns) == ["uri", "file_name"] and matrix.dtype == np.float32
    assert matrix.shape == (len(frame), 384)
    np.testing.assert_array_equal(matrix, np.stack(frame["embedding"].to_numpy()))
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert meta["uri"].tolist() == frame["uri"].tolist()


def test_errors_name_what_to_fix(in_demo):
    with pytest.raises(RegistryError, match=r"no dataset 'nope' \(known datasets: samples\)"):
        imageindex.search("nope", text="x")
    with pytest.raises(ConfigError, match="image=: give a file path"):
        imageindex.search("samples", image=42)
    with pytest.raises(RegistryError, match="no version 'v9'"):
        imageindex.load_features("samples", "v9")
    with pytest.raises(ConfigError, match="--text is empty"):
        imageindex.search("samples", text="  ")


def test_split_tags_accepts_strings_lists_and_commas():
    assert split_tags("cat, dog") == ["cat", "dog"]
    assert split_tags(["cat,dog", " bird ", "a, ,b"]) == ["cat", "dog", "bird", "a", "b"]
    assert split_tags(None) == []


def test_import_imageindex_stays_cheap_and_search_stays_callable():
    code = (
        "import sys, imageindex\n"
        "heavy = {'numpy', 'pandas', 'pyarrow', 'lancedb', 'yaml'} & set(sys.modules)\n"
        "import imageindex.search\n"  # the submodule import must not shadow the function
        "from imageindex.search import SearchRequest\n"
        "print(sorted(heavy), callable(imageindex.search), imageindex.load_features.__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["[]", "True", "imageindex.notebook"]
