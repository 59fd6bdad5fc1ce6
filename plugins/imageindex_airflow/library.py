"""What the routes need from the imageindex library for one dataset: its store, a document by
id, its S3 connection and its staging locations (whole staging, thumbnails, exports).

The routes ask this module, and it asks :mod:`imageindex.layout` (the library's one owner of
staging paths and connection ids), so neither builds a staging path or picks a connection. The library is imported inside the functions: the
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
    from imageindex.layout import s3_conn_id as conn_of

    return conn_of(ds)


def staging_of(ds):
    """The staging location (runs, leases, exports), opened with the dataset's S3 connection."""
    from imageindex.layout import open_dataset_staging

    return open_dataset_staging(ds)


def thumbnails_of(ds):
    """The dataset's thumbnails in staging; reading a uri outside them is refused."""
    from imageindex.layout import StagingLayout, open_dataset_staging

    return open_dataset_staging(ds, StagingLayout.current().thumbnails(ds.id))


def exports_dir(ds) -> str:
    """Where the dataset's export files go: ``<staging>/exports/<dataset>``."""
    from imageindex.layout import StagingLayout

    return StagingLayout.current().exports(ds.id)
