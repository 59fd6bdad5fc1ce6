"""Fixtures for the DAG tests: a DAG file loaded in-process, its tasks callable without a
scheduler."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_dag_file(name: str):
    """``dags/<name>.py`` as a fresh module (the registry is read when it is loaded)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "dags" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def index_dag(monkeypatch, tmp_path):
    """The index DAG of dataset ``t``: an empty local source, a LanceDB store, staging under
    ``tmp_path/home``."""
    src = tmp_path / "src"
    src.mkdir()
    reg = tmp_path / "registry.yaml"
    reg.write_text(
        f"datasets:\n  - id: t\n    versions: {{v1: {src}}}\n"
        f"    store: {{uri: {tmp_path / 'store'}}}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("IMAGEINDEX_REGISTRY", str(reg))
    monkeypatch.setenv("IMAGEINDEX_HOME", str(tmp_path / "home"))
    return load_dag_file("imageindex_index").DAGS["t"]


@pytest.fixture
def load_dag():
    """:func:`load_dag_file`, for tests that load a DAG file themselves."""
    return load_dag_file
