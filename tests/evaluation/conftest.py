"""The built-in evaluation set, built once for the tests of this package."""

from __future__ import annotations

import pytest

from imageindex import evaluation as ev


@pytest.fixture(scope="package")
def built(tmp_path_factory):
    if not ev.sample_labels():
        pytest.skip("no sample photos installed (see requirements.txt)")
    dest = tmp_path_factory.mktemp("evalset")
    return dest, ev.build_eval_set(dest)
