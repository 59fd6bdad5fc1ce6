"""Fixtures of the store tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def own_node(tmp_path):
    """A private node (restarted and stopped by the test, so the shared one is untouched)."""
    import opensearch_node

    reason = opensearch_node.missing_tools()
    if reason:
        pytest.skip(reason)
    node = opensearch_node.start(tmp_path / "node")
    try:
        yield node
    finally:
        node.stop()
