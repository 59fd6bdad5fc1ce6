from pathlib import Path

import pytest

from imageindex.errors import RegistryError
from imageindex.registry import load_registry

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "registry.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_repo_registry_loads():
    reg = load_registry(REPO / "config" / "registry.yaml")
    ds = reg.get("samples")
    assert ds.current_version == "v1"
    assert Path(ds.version().source).is_absolute()
    assert ds.tagger["definitions"].endswith("config/tags/samples.json")


def test_relative_paths_resolve_against_registry_folder(tmp_path):
    p = write(
        tmp_path,
        """
datasets:
  - id: cats
    versions:
      v1: {source: ./photos}
      v2: s3://bucket/cats/v2/
    store: {uri: ./store}
    schedule: "0 3 * * *"
""",
    )
    ds = load_registry(p).get("cats")
    assert ds.versions["v1"].source == str(tmp_path / "photos")
    assert ds.versions["v2"].source == "s3://bucket/cats/v2/"
    assert ds.versions["v2"].is_s3
    assert ds.current_version == "v2"  # the last declared version when not named
    assert ds.store_uri == str(tmp_path / "store")
    assert ds.embedder == {"type": "offline"}
    assert ds.schedule == "0 3 * * *"


def test_file_uri_source(tmp_path):
    p = write(tmp_path, f"datasets:\n  - id: a\n    versions: {{v1: 'file://{tmp_path}/x'}}\n")
    assert load_registry(p).get("a").version("v1").source == f"{tmp_path}/x"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("datasets:\n  - id: 'bad id!'\n    versions: {v1: /x}\n", "field 'id'"),
        ("datasets:\n  - id: a\n", "dataset 'a': field 'versions'"),
        ("datasets:\n  - id: a\n    versions: {v1: 'ftp://x/y'}\n", "field 'versions.v1.source'"),
        ("datasets:\n  - id: a\n    versions: {v1: 's3://'}\n", "has no bucket"),
        (
            "datasets:\n  - id: a\n    versions: {v1: /x}\n    current_version: v9\n",
            "field 'current_version'",
        ),
        ("datasets:\n  - id: a\n    versions: {v1: /x}\n    schedule: every day\n", "'schedule'"),
        ("datasets:\n  - id: a\n    versions: {v1: /x}\n    shedule: '@daily'\n", "'shedule'"),
        ("datasets:\n  - id: a\n    versions: {v1: /x}\n    fingerprint: md5\n", "'fingerprint'"),
        (
            "datasets:\n  - id: a\n    versions: {v1: /x}\n  - id: a\n    versions: {v1: /y}\n",
            "declared twice",
        ),
        (
            "datasets:\n  - id: a\n    versions: {v1: {source: /x, manifest: /m.csv}}\n",
            "either 'source' (a prefix) or 'manifest'",
        ),
        (
            "datasets:\n  - id: a\n    versions: {v1: {manifest: 'ftp://m'}}\n",
            "versions.v1.manifest",
        ),
        ("datasets:\n  - id: a\n    versions: {v1: {sorce: /x}}\n", "unknown field(s) ['sorce']"),
        ("datasets:\n  - id: a\n    versions: {v1: /x}\n    feature_table: 3\n", "feature_table"),
        (
            "datasets:\n  - id: a\n    versions: {v1: /x}\n    schedule: {assets: [nouri]}\n",
            "schedule.assets",
        ),
        ("datasets:\n  - id: a\n    versions: {v1: /x}\n    schedule: {cron: x}\n", "{assets:"),
        ("datasets: [\n", "not valid YAML"),
        ("datasets: {a: 1}\n", "must be a list"),
    ],
)
def test_errors_name_file_dataset_and_field(tmp_path, body, expected):
    p = write(tmp_path, body)
    with pytest.raises(RegistryError) as exc:
        load_registry(p)
    assert expected in str(exc.value)
    assert str(p) in str(exc.value)


def test_missing_file_and_unknown_dataset(tmp_path):
    with pytest.raises(RegistryError, match="registry not found"):
        load_registry(tmp_path / "nope.yaml")
    p = write(tmp_path, "datasets:\n  - id: a\n    versions: {v1: /x}\n")
    with pytest.raises(RegistryError, match=r"no dataset 'b' \(known datasets: a\)"):
        load_registry(p).get("b")
    with pytest.raises(RegistryError, match=r"no version 'v2' \(known versions: v1, plus logical"):
        load_registry(p).get("a").version("v2")


def test_manifest_versions_and_feature_table(tmp_path):
    p = write(
        tmp_path,
        "defaults: {feature_table: s3://b/features}\n"
        "datasets:\n  - id: a\n    versions:\n      v1: /x\n      pick: {manifest: lists/p.jsonl}\n"
        "  - id: b\n    versions: {v1: /y}\n    feature_table: false\n",
    )
    reg = load_registry(p)
    a = reg.get("a")
    assert a.version("pick").manifest and a.version("pick").source == str(
        tmp_path / "lists/p.jsonl"
    )
    assert not a.version("v1").manifest
    assert a.feature_table == "s3://b/features" and reg.get("b").feature_table == ""


def test_task_settings_per_stage(tmp_path):
    p = write(
        tmp_path,
        """
datasets:
  - id: a
    versions: {v1: /x}
    tasks:
      tag_embed: {pool: dashscope, queue: gpu, retries: 5}
      upsert: {pool: imageindex_upsert, execution_timeout_s: 600}
""",
    )
    ds = load_registry(p).get("a")
    assert ds.tasks["tag_embed"] == {"pool": "dashscope", "queue": "gpu", "retries": 5}
    for body, field in [
        ("    tasks: {embed: {pool: x}}\n", "tasks.embed"),
        ("    tasks: {upsert: {priority: 3}}\n", "tasks.upsert"),
        ("    tasks: {upsert: {retries: -1}}\n", "tasks.upsert.retries"),
    ]:
        bad = write(tmp_path, "datasets:\n  - id: a\n    versions: {v1: /x}\n" + body)
        with pytest.raises(RegistryError, match=field.replace(".", r"\.")):
            load_registry(bad)


def test_catchup_is_off_unless_asked_and_needs_a_time_schedule(tmp_path):
    base = "datasets:\n  - id: a\n    versions: {v1: /x}\n"
    assert load_registry(write(tmp_path, base)).get("a").catchup is False
    daily = base + "    schedule: '@daily'\n    catchup: true\n"
    assert load_registry(write(tmp_path, daily)).get("a").catchup is True
    for body, message in (
        (base + "    catchup: true\n", "needs a time schedule"),
        (base + "    schedule: '@daily'\n    catchup: 'yes'\n", "must be true or false"),
    ):
        with pytest.raises(RegistryError, match=f"field 'catchup': {message}"):
            load_registry(write(tmp_path, body))
