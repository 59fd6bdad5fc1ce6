"""The demo index the README examples run against: ``scripts/demo.py --project`` in a temporary
folder (the checkout's layout, samples indexed by ``imageindex index``, no Airflow), built once
per test session whichever test module asks first."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def load_demo_script():
    """scripts/demo.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("imageindex_demo", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Settings a newcomer has not set; tests that act as one delete them (the model cache stays).
SETTINGS = ("IMAGEINDEX_REGISTRY", "IMAGEINDEX_HOME", "IMAGEINDEX_STAGING", "IMAGEINDEX_STORE")


def as_newcomer(monkeypatch: pytest.MonkeyPatch, cwd: Path) -> None:
    """This process without :data:`SETTINGS`, working in ``cwd``."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(cwd)


def newcomer_env() -> dict[str, str]:
    """A shell with no ``IMAGEINDEX_*`` settings but the model cache, the venv first on PATH
    (as after ``. .venv/bin/activate``)."""
    env = load_demo_script().clean_env()
    env["PATH"] = os.pathsep.join([str(REPO / ".venv" / "bin"), env.get("PATH", "")])
    return env


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.getbasetemp() / "demo-project"
    done = root / ".built"
    if not done.exists():
        load_demo_script().build_project(root, env=newcomer_env())
        done.touch()
    return root


def run_in(project: Path, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``command`` through bash in ``project``, as pasted into a newcomer's shell."""
    return subprocess.run(
        ["bash", "-c", command],
        cwd=project,
        env=newcomer_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
