"""What the routes need from the imageindex library for one dataset: its store, a document by
id, its S3 connection and its staging locations (whole staging, thumbnails, exports).

The one place in the plugin that knows where these live, so the routes never build a staging
path or pick a connection themselves. The library is imported inside the functions: the
plugin loader imports this module in every Airflow process.
"""

from __future__ import annotations

from fastapi import HTTPException


def store_of(ds):
    from imageindex.stores import open_store

    return open_store(ds.store_uri, spec=ds.store)


def get_document(ds, doc_id: str) -> dict:
    """The stored document, or a 404 naming the dataset and the id."""
    docs = store_of(ds).get(ds.id, [doc_id])
    if not docs:
        raise HTTPException(404, f"dataset '{ds.id}' has no document {doc_id}")
    return docs[0]


def s3_conn_id(ds) -> str:
    from imageindex.config import settings

    return ds.s3_conn_id or settings().s3_conn_id


def staging_of(ds):
    """The staging location (runs, leases, exports), opened with the dataset's S3 connection."""
    from imageindex.config import settings
    from imageindex.staging import open_staging

    return open_staging(settings().staging_root, s3_conn_id=s3_conn_id(ds))


def thumbnails_of(ds):
    """The dataset's thumbnails in staging; reading a uri outside them is refused."""
    from imageindex.pipeline import thumbnails_root
    from imageindex.staging import open_staging

    return open_staging(thumbnails_root(ds.id), s3_conn_id=s3_conn_id(ds))


def exports_dir(ds) -> str:
    """Where the dataset's export files go: ``<staging>/exports/<dataset>``."""
    from imageindex.config import settings

    return f"{settings().staging_root.rstrip('/')}/exports/{ds.id}"
