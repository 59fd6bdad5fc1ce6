"""imageindex: turn buckets and folders of images into tagged, embedded, searchable datasets.

The library is importable without Airflow. Each pipeline stage (plan, preprocess, tag, embed,
upsert, finalize) is a plain function in :mod:`imageindex.pipeline` that takes and returns plain
values, so Airflow tasks, the CLI, tests and notebooks all call the same code.

For notebooks (:mod:`imageindex.notebook`)::

    imageindex.search("samples", text="a cat", tags_any=["Animal"], top_k=5).to_pandas()
    imageindex.load_features("samples")          # the feature table as a DataFrame
    imageindex.eval_summary("eval-out")          # an evaluation's summary.json as a DataFrame

Importing ``imageindex`` imports nothing else: each name loads its module on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

__all__ = ["eval_summary", "load_features", "load_version", "search"]

# name -> (module, attribute); ``search`` is the module imageindex.search, which is callable
# (its keyword_search): a function of that name would be replaced by the submodule as soon as
# anything imported it.
_LAZY = {
    "search": ("imageindex.search", None),
    "load_features": ("imageindex.notebook", "load_features"),
    "eval_summary": ("imageindex.evaluation.report", "summary_frame"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'imageindex' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attr is None else getattr(module, attr)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


def load_version(*args, **kwargs):
    """Iterate ``(PIL image, metadata)`` of a dataset version or manifest; see
    :func:`imageindex.loader.load_version`."""
    from imageindex.loader import load_version as _load_version

    return _load_version(*args, **kwargs)
