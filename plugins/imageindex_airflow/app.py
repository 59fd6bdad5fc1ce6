"""The imageindex REST API and the "View Data" page as one FastAPI app, assembled from the
routers in :mod:`imageindex_airflow.routers` (one per resource), with the library's typed errors
turned into status codes.

``plugin.py`` mounts :data:`app` at ``/imageindex`` in the Airflow API server. Airflow core and
the library are imported inside the route functions (only the dependency-free
``imageindex.errors`` at the top), so loading the plugin costs an Airflow process (task runners
included) little more than importing FastAPI.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from imageindex.errors import (
    ConfigError,
    EmptyIndexError,
    ImageIndexError,
    ModelMismatchError,
    ProviderError,
    SourceError,
    StoreError,
)
from imageindex_airflow.routers import datasets, exports, files, page, runs, search, tags

DESCRIPTION = """The imageindex REST API and the "View Data" page, served inside the Airflow API
server at ``/imageindex``; the page is at ``/imageindex/ui/``.

Authentication is Airflow's own: a JWT from ``POST /auth/token`` in an ``Authorization: Bearer``
header works, and so does the ``_token`` cookie the Airflow UI logs in with (that is how the
page, embedded in the UI, calls this API). Each dataset is then checked against the caller's
access to its DAG ``imageindex_<dataset>`` with the configured auth manager: reading and
searching need read access, editing user tags needs edit access.
"""

#: The library's typed errors as status codes, first match wins (their message is the detail).
STATUS_OF_ERROR: list[tuple[type[ImageIndexError], int]] = [
    (ConfigError, 400),  # QueryError included: it is a ConfigError with a column
    (EmptyIndexError, 404),
    (ModelMismatchError, 409),
    (SourceError, 502),
    (ProviderError, 502),
    (StoreError, 503),
    (ImageIndexError, 500),
]


def library_error(request: Request, exc: Exception) -> JSONResponse:
    status = next(code for typ, code in STATUS_OF_ERROR if isinstance(exc, typ))
    if hasattr(exc, "column"):  # a QueryError: the message without the caret drawing
        body = {"detail": exc.message, "column": exc.column, "line": exc.line}
        return JSONResponse(status_code=status, content={**body, "position": exc.position})
    return JSONResponse(status_code=status, content={"detail": str(exc)})


def create_app() -> FastAPI:
    api = FastAPI(
        title="imageindex",
        version="1",
        description=DESCRIPTION,
        # The defaults would be public; the page router serves them behind authentication.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    for exc_type, _ in STATUS_OF_ERROR:
        api.add_exception_handler(exc_type, library_error)
    for module in (datasets, runs, search, files, tags, exports, page):
        api.include_router(module.router)
    return api


app = create_app()
