"""imageindex: turn buckets and folders of images into tagged, embedded, searchable datasets.

The library is importable without Airflow. Each pipeline stage (plan, preprocess, tag, embed,
upsert, finalize) is a plain function in :mod:`imageindex.pipeline` that takes and returns plain
values, so Airflow tasks, the CLI, tests and notebooks all call the same code.
"""

__version__ = "0.1.0"

__all__ = ["load_version"]


def load_version(*args, **kwargs):
    """Iterate ``(PIL image, metadata)`` of a dataset version or manifest; see
    :func:`imageindex.loader.load_version`."""
    from imageindex.loader import load_version as _load_version

    return _load_version(*args, **kwargs)
