"""CLI errors are one line on stderr with exit code 2; results go to stdout."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from demo_project import as_newcomer, demo_project, newcomer_env  # noqa: F401
from imagezoo import make_photo
from test_export import indexed  # noqa: F401  (fixture)

from imageindex.cli import main


@pytest.fixture
def registry(tmp_path, monkeypatch):
    reg = tmp_path / "registry.yaml"
    reg.write_text(
        f"datasets:\n  - id: empty\n    versions: {{v1: {tmp_path / 'src'}}}\n"
        f"    store: {{uri: {tmp_path / 'store'}}}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("IMAGEINDEX_REGISTRY", str(reg))
    monkeypatch.setenv("IMAGEINDEX_HOME", str(tmp_path / "home"))
    return reg


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_empty_index_is_a_one_line_error(registry, capsys):
    code, out, err = run(capsys, "search", "--dataset", "empty", "--text", "a cat")
    assert code == 2 and out == ""
    assert "has no indexed images yet" in err and "imageindex_empty" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_registry_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGEINDEX_REGISTRY", str(tmp_path / "none.yaml"))
    code, _, err = run(capsys, "search", "--dataset", "x", "--text", "y")
    assert code == 2 and "registry not found" in err


def test_bad_arguments_exit_2(registry, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["search", "--dataset", "empty", "--text", "a", "--image", "b.png"])
    assert exc.value.code == 2
    code, _, err = run(capsys, "search", "--dataset", "empty", "--score-threshold", "3")
    assert code == 2 and "--score-threshold" in err


def test_tag_flags_accept_commas_and_repeats():
    from imageindex.cli import _tags

    assert _tags(["cat,dog", " bird ", "a, ,b"]) == ["cat", "dog", "bird", "a", "b"]


def test_samples_command_collects_wheel_photos(tmp_path, capsys):
    code, out, _ = run(capsys, "samples", str(tmp_path / "s"))
    assert code == 0
    files = json.loads(out)["files"]
    assert files["skimage"] >= 10 and files["foolbox"] == 20 and files["interior"] >= 30
    assert (tmp_path / "s" / "skimage" / "chelsea.png").is_file()
    # Collecting again keeps modification times, so an incremental index sees no change.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "s").rglob("*") if p.is_file()}
    run(capsys, "samples", str(tmp_path / "s"))
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert before == after


def test_export_and_logical_version_from_the_cli(indexed, capsys):  # noqa: F811
    out = indexed["tmp"] / "cli.jsonl"
    code, stdout, _ = run(
        capsys, "export", "--dataset", "t", "--tags-exclude", "x", "--to", str(out)
    )
    assert code == 0
    res = json.loads(stdout)
    assert res["count"] == 8 and res["uri"] == str(out) and len(out.read_text().splitlines()) == 8
    code, stdout, _ = run(
        capsys, "export", "--dataset", "t", "--text", "a dog", "--limit", "2", "--to", str(out)
    )
    assert json.loads(stdout)["count"] == 2
    prefix = (indexed["src"] / "sub").as_uri() + "/"
    code, stdout, _ = run(
        capsys, "export", "--dataset", "t", "--path-prefix", prefix, "--to-version", "picked"
    )
    assert json.loads(stdout)["version"] == "picked"
    code, stdout, _ = run(capsys, "index", "--dataset", "t", "--version", "picked")
    assert json.loads(stdout)["reused"] == 4
    (indexed["tmp"] / "copy").mkdir()
    make_photo(indexed["tmp"] / "copy" / "c.jpg", seed=3)
    code, stdout, _ = run(
        capsys, "index", "--dataset", "t", "--version", "copy", "--version", "picked"
    )
    reports = [json.loads(d) for d in stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert [(r["dataset_version"], r["new"]) for r in reports] == [("copy", 1), ("picked", 0)]
    code, stdout, _ = run(capsys, "datasets")
    lines = [ln.split("\t") for ln in stdout.splitlines()]
    assert lines[0][:3] == ["t", "picked ", "4"] and lines[0][3].startswith("manifest:")
    code, _, err = run(capsys, "export", "--dataset", "t", "--to", str(indexed["tmp"] / "x.txt"))
    assert code == 2 and "cannot tell the manifest format" in err


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A project folder with config/registry.yaml naming its state folder; no settings set."""
    as_newcomer(monkeypatch, tmp_path)
    (tmp_path / "config").mkdir()
    reg = tmp_path / "config" / "registry.yaml"
    reg.write_text("home: ../state\ndatasets: []\n", encoding="utf-8")
    (tmp_path / "a" / "b").mkdir(parents=True)
    return tmp_path


def test_registry_and_home_found_from_the_checkout_or_below(checkout, monkeypatch):
    from imageindex.config import settings

    for cwd in (checkout, checkout / "a" / "b"):
        monkeypatch.chdir(cwd)
        s = settings()
        assert s.registry_path == checkout / "config" / "registry.yaml"
        assert s.home == checkout / "state" and s.staging_root == str(checkout / "state/staging")


def test_set_variables_win_over_discovery(checkout, monkeypatch, tmp_path_factory):
    from imageindex.config import settings

    monkeypatch.chdir(checkout / "a")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.setenv("IMAGEINDEX_HOME", str(elsewhere))
    # HOME set, no registry in it: the checkout's registry, state in HOME
    assert settings().registry_path == checkout / "config" / "registry.yaml"
    assert settings().home == elsewhere
    (elsewhere / "registry.yaml").write_text("datasets: []\n", encoding="utf-8")
    assert settings().registry_path == elsewhere / "registry.yaml"
    monkeypatch.setenv("IMAGEINDEX_REGISTRY", str(elsewhere / "other.yaml"))
    assert settings().registry_path == elsewhere / "other.yaml"


def test_no_registry_anywhere_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    as_newcomer(monkeypatch, tmp_path)
    code, _, err = run(capsys, "datasets")
    assert code == 2 and f"{tmp_path}/.imageindex/registry.yaml" in err
    assert "config/registry.yaml" in err and len(err.strip().splitlines()) == 1


def test_registry_home_must_be_a_path(checkout, monkeypatch, capsys):
    (checkout / "config" / "registry.yaml").write_text("home: [1]\ndatasets: []\n")
    monkeypatch.chdir(checkout)
    code, _, err = run(capsys, "datasets")
    assert code == 2 and "field 'home' must be a path" in err


CHILD = """
import json, sys
from imageindex.cli import main
code = main(sys.argv[2:])
from lance_namespace_urllib3_client.models.create_table_request import CreateTableRequest
from pydantic._internal._config import config_defaults
json.dump({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules}),
           "lancedb_client_deferred": not CreateTableRequest.__pydantic_complete__,
           "pydantic_default_restored": config_defaults["defer_build"] is False},
          open(sys.argv[1], "w"))
"""


@pytest.mark.parametrize(
    "query, uses",
    [
        (["--text", "a cup of coffee"], {"onnxruntime", "tokenizers"}),
        (["--image", "var/samples/skimage/chelsea.png"], {"onnxruntime", "PIL"}),
        (["--tags-any", "Animal", "--dsl", "width >= 256"], set()),
    ],
    ids=["text", "image", "filter"],
)
def test_search_imports_only_what_it_uses(demo_project, tmp_path, query, uses):  # noqa: F811
    """A cold ``imageindex search`` never loads the indexing side (torch, transformers), S3
    clients or Airflow, nor a model or PIL it does not need; lancedb's REST client is imported
    with pydantic's deferred build (it is never called for a local table)."""
    report = tmp_path / "modules.json"
    argv = ["search", "--dataset", "samples", "--top-k", "3", *query]
    subprocess.run(
        [sys.executable, "-c", CHILD, str(report), *argv],
        cwd=demo_project,
        env=newcomer_env(),
        check=True,
        capture_output=True,
    )
    got = json.loads(report.read_text())
    modules = set(got["modules"])
    assert got["code"] == 0
    unwanted = {"torch", "transformers", "sentence_transformers", "boto3", "botocore", "airflow"}
    assert not modules & unwanted
    assert uses <= modules and not ({"onnxruntime", "PIL", "tokenizers"} - uses) & modules
    assert got["lancedb_client_deferred"] and got["pydantic_default_restored"]
