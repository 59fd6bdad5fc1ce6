"""The plugin inside a real ``airflow api-server`` on loopback: loaded from the plugins folder,
mounted at /imageindex, listed with its nav view, and guarded by the JWTs Airflow issues at
/auth/token (SimpleAuthManager, its generated admin password) and by the UI's login cookie."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from imagezoo import make_photo

from imageindex import pipeline

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from airflow_local import airflow_env, migrate  # noqa: E402

pytestmark = pytest.mark.slow

STARTUP_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it forks workers), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def api_server(var: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """An ``airflow api-server`` with the plugin over three indexed photos (dataset ``t``).

    Yields the base URL and the simple auth manager's generated passwords by user name.
    """
    src = var / "photos"
    for seed, rel in enumerate(["a/p0.jpg", "b/p1.jpg", "b/p2.jpg"]):
        make_photo(src / rel, seed=seed)
    registry = var / "registry.yaml"
    registry.write_text(
        f"datasets:\n  - id: t\n    versions: {{v1: {{source: {src}}}}}\n"
        f"    store: {{uri: {var / 'lancedb'}}}\n",
        encoding="utf-8",
    )
    env = airflow_env(
        var,
        IMAGEINDEX_REGISTRY=str(registry),
        AIRFLOW__CORE__AUTH_MANAGER=(
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,viewer:viewer",
        AIRFLOW__API_AUTH__JWT_SECRET="imageindex-api-server-test-" + "s" * 48,
        AIRFLOW__API__WORKERS="1",
    )
    env.pop("IMAGEINDEX_STAGING", None)
    env.pop("IMAGEINDEX_STORE", None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEINDEX_HOME", env["IMAGEINDEX_HOME"])
        mp.setenv("IMAGEINDEX_REGISTRY", str(registry))
        mp.delenv("IMAGEINDEX_STAGING", raising=False)
        mp.delenv("IMAGEINDEX_STORE", raising=False)
        assert pipeline.run_all("t")["indexed_ok"] == 3
    migrate(env)

    port = _free_port()
    log_path = var / "api-server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", "api-server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + STARTUP_S
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"api-server exited: {log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"api-server not up: {log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            generated = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
            yield base, json.loads(generated.read_text())
        finally:
            _stop(proc)


def login(base: str, user: str, password: str) -> str:
    """A JWT from Airflow's token endpoint, as API clients get one."""
    response = httpx.post(
        f"{base}/auth/token", json={"username": user, "password": password}, timeout=10
    )
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with api_server(tmp_path_factory.mktemp("api-server")) as (base, passwords):
        tokens = {user: login(base, user, passwords[user]) for user in ("admin", "viewer")}
        with httpx.Client(base_url=base, timeout=60) as client:
            yield client, tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_plugin_endpoints_need_a_token(server):
    client, tokens = server
    assert client.get("/imageindex/datasets").status_code == 401
    assert client.post("/imageindex/datasets/t/search", json={}).status_code == 401
    assert client.get("/imageindex/openapi.json").status_code == 401

    response = client.get("/imageindex/datasets", headers=bearer(tokens["admin"]))
    assert response.status_code == 200
    (dataset,) = response.json()["datasets"]
    assert dataset["id"] == "t" and dataset["versions"][0]["ok"] == 3


def test_search_thumbnail_and_errors_through_the_server(server):
    client, tokens = server
    admin = bearer(tokens["admin"])
    body = client.post("/imageindex/datasets/t/search", json={"top_k": 10}, headers=admin).json()
    assert sorted(h["file_name"] for h in body["hits"]) == ["p0.jpg", "p1.jpg", "p2.jpg"]
    # Links carry the mount point, so the page and API clients can follow them as given.
    url = body["hits"][0]["thumbnail_url"]
    assert url.startswith("/imageindex/datasets/t/files/")
    thumb = client.get(url, headers=admin)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"

    bad = client.post("/imageindex/datasets/t/search", json={"dsl": "width >> 3"}, headers=admin)
    assert bad.status_code == 400 and bad.json()["column"] == 8

    doc = body["hits"][0]["id"]
    denied = client.post(
        f"/imageindex/datasets/t/files/{doc}/tags",
        json={"tags": ["x"]},
        headers=bearer(tokens["viewer"]),
    )
    assert denied.status_code == 403


def test_the_ui_cookie_and_the_login_redirect(server):
    client, tokens = server
    page = client.get("/imageindex/ui/")
    assert page.status_code == 307
    assert page.headers["location"].startswith("/auth/login?next=")
    assert "%2Fimageindex%2Fui%2F" in page.headers["location"]

    client.cookies.set("_token", tokens["viewer"])
    try:
        page = client.get("/imageindex/ui/")
        datasets = client.get("/imageindex/datasets")
    finally:
        client.cookies.clear()
    assert page.status_code == 200 and "View Data" in page.text
    assert datasets.status_code == 200


def test_airflow_lists_the_plugin_with_its_nav_view(server):
    client, tokens = server
    plugins = client.get("/api/v2/plugins", headers=bearer(tokens["admin"])).json()["plugins"]
    (plugin,) = [p for p in plugins if p["name"] == "imageindex"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/imageindex"
    (view,) = plugin["external_views"]
    assert view["href"] == "/imageindex/ui/" and view["url_route"] == "image-search"
    errors = client.get("/api/v2/plugins/importErrors", headers=bearer(tokens["admin"])).json()
    assert errors["total_entries"] == 0, errors


def test_the_run_report_through_the_server(server):
    """The server reads the run that the fixture's pipeline wrote to staging in another
    process: every stage done for all three files, then the report."""
    client, tokens = server
    url = "/imageindex/datasets/t/versions/v1/runs"
    assert client.get(url).status_code == 401
    (run,) = client.get(url, headers=bearer(tokens["viewer"])).json()["runs"]
    assert run["state"] == "finished" and run["files"] == 3
    assert {s["stage"]: (s["done"], s["total"]) for s in run["stages"]} == {
        "preprocess": (3, 3),
        "tag_embed": (3, 3),
        "upsert": (3, 3),
    }
    assert run["report"]["indexed_ok"] == 3 and run["failed_filter"] is None
    one = client.get(f"{url}/{run['run']}", headers=bearer(tokens["viewer"]))
    assert one.status_code == 200 and one.json() == run
