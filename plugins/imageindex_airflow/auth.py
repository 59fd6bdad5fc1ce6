"""Who is calling, and may they read or edit this dataset: FastAPI dependencies for every route.

Authentication is Airflow's own: the caller is resolved with the core API's ``get_user``
dependency (``airflow.api_fastapi.core_api.security``), so a JWT from ``POST /auth/token`` in an
``Authorization: Bearer`` header works, and so does the ``_token`` cookie the Airflow UI logs in
with. Airflow does not protect plugin apps by itself. Each dataset is then checked against the
caller's access to its DAG ``imageindex_<dataset>`` with the configured auth manager: reading
and searching need read access, editing user tags needs edit access.

Airflow core and the library are imported inside the functions: the plugin loader imports this
module in every Airflow process, task runners included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

DAG_PREFIX = "imageindex_"
DATASET_ID = r"^[A-Za-z0-9_-]{1,64}$"
DOC_ID = r"^[0-9a-f]{32}$"

bearer = HTTPBearer(
    auto_error=False,
    description="A JWT from Airflow's POST /auth/token; the Airflow UI's _token cookie also works",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


async def airflow_user(request: Request, credentials: Credentials = None):
    """The caller, resolved exactly as the core API does (bearer header, else cookie)."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, _oauth_token=None, bearer_credentials=credentials)


async def page_user(request: Request, credentials) -> Any | None:
    """The caller, or None when nobody (valid) is logged in: the page then sends them to log in."""
    try:
        return await airflow_user(request, credentials)
    except HTTPException as exc:
        if exc.status_code in (401, 403):
            return None
        raise


User = Annotated[Any, Depends(airflow_user)]
DatasetId = Annotated[str, PathParam(pattern=DATASET_ID, description="dataset id")]
DocId = Annotated[str, PathParam(pattern=DOC_ID, description="document id")]


def dag_id_of(dataset_id: str) -> str:
    return f"{DAG_PREFIX}{dataset_id}"


def is_authorized(user, dataset_id: str, method: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.configuration import conf

    dag_id = dag_id_of(dataset_id)
    team_name = None
    # The core's requires_access_dag looks the team up in the metadata DB on every call; it
    # only matters in multi-team mode.
    if conf.getboolean("core", "multi_team", fallback=False):
        from airflow.models.dag import DagModel

        team_name = DagModel.get_team_name(dag_id)
    return get_auth_manager().is_authorized_dag(
        method=method, details=DagDetails(id=dag_id, team_name=team_name), user=user
    )


def _dataset_access(method: str) -> Callable:
    action = "read" if method == "GET" else "edit"

    # A plain def: auth managers may query a database, so FastAPI runs this in its threadpool.
    def check(dataset_id: DatasetId, user: User):
        if not is_authorized(user, dataset_id, method):
            raise HTTPException(
                403, f"you may not {action} dataset '{dataset_id}' (DAG {dag_id_of(dataset_id)})"
            )
        from imageindex.registry import load_registry

        ds = load_registry().datasets.get(dataset_id)
        if ds is None:
            raise HTTPException(404, f"no dataset '{dataset_id}' in the registry")
        return ds

    return check


#: The dataset of the path, from the registry, once the caller may read it.
ReadableDataset = Annotated[Any, Depends(_dataset_access("GET"))]
#: The dataset of the path, from the registry, once the caller may edit it.
EditableDataset = Annotated[Any, Depends(_dataset_access("PUT"))]
