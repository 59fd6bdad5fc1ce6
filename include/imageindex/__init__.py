"""imageindex: turn buckets and folders of images into tagged, embedded, searchable datasets.

The library is importable without Airflow. Each pipeline stage (plan, preprocess, tag, embed,
upsert, finalize) is a plain function in :mod:`imageindex.pipeline` that takes and returns plain
values, so Airflow tasks, the CLI, tests and notebooks all call the same code.
"""

__version__ = "0.1.0"
