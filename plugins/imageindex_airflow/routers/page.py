"""The "View Data" page at ``/ui/`` and the API's own description (``/openapi.json``, ``/docs``),
all behind Airflow's login; none of them is part of the OpenAPI schema."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from imageindex_airflow.auth import Credentials, User, page_user
from imageindex_airflow.responses import root_of

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
#: The page's files; nothing else under static/ is served.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# The page is shown in the Airflow origin (inside the UI's iframe).
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
)


@router.get("/openapi.json")
def openapi(request: Request, user: User) -> dict:
    return request.app.openapi()


@router.get("/docs")
def docs(request: Request, user: User) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=f"{root_of(request)}/openapi.json", title="imageindex API"
    )


@router.get("/ui")
async def page_redirect(request: Request) -> RedirectResponse:
    return RedirectResponse(f"{root_of(request)}/ui/")


@router.get("/ui/")
@router.get("/ui/{name}")
async def page(
    request: Request, name: str = "index.html", credentials: Credentials = None
) -> Response:
    """The "View Data" page; someone not logged in is sent to Airflow's login and back."""
    if name not in STATIC_FILES:
        raise HTTPException(404, "no such page")
    if await page_user(request, credentials) is None:
        if name != "index.html":
            raise HTTPException(401, "Not authenticated")
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)))
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if name == "index.html":
        headers["Content-Security-Policy"] = _PAGE_CSP
    return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name], headers=headers)
