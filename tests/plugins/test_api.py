"""The plugin's REST API in-process (FastAPI TestClient) on a small real index: offline models,
LanceDB, staging thumbnails, and Airflow's SimpleAuthManager issuing and checking the JWTs."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from imagezoo import make_photo
from PIL import Image

from imageindex import pipeline
from imageindex.search import MAX_UPLOAD_BYTES

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
PHOTOS = ["a/p0.jpg", "a/p1.jpg", "b/p2.png", "b/p3.jpg", "b/c/p4.jpg"]
SIMPLE_AUTH = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


@dataclass
class Env:
    tmp: Path
    src: Path
    registry: Path
    client: object
    tokens: dict[str, str]

    def auth(self, who: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def get(self, path: str, who: str = "admin", headers: dict | None = None, **kw):
        return self.client.get(path, headers={**self.auth(who), **(headers or {})}, **kw)

    def post(self, path: str, who: str = "admin", **kw):
        return self.client.post(path, headers=self.auth(who), **kw)

    def delete(self, path: str, who: str = "admin", **kw):
        return self.client.request("DELETE", path, headers=self.auth(who), **kw)

    def search(self, who: str = "admin", dataset: str = "t", **body):
        return self.post(f"/datasets/{dataset}/search", who, json=body)

    def ids(self) -> dict[str, str]:
        """file name -> document id."""
        hits = self.search(top_k=100).json()["hits"]
        return {h["file_name"]: h["id"] for h in hits}


def _registry(tmp: Path, src: Path) -> str:
    tags = REPO / "config" / "tags" / "samples.json"
    return f"""
datasets:
  - id: t
    description: generated photos
    versions:
      v1: {{source: {src}}}
    store: {{uri: {tmp / "store"}}}
    tagger: {{type: offline, definitions: {tags}}}
  - id: empty
    versions:
      v1: {{source: {tmp / "empty-src"}}}
    store: {{uri: {tmp / "store"}}}
  - id: runs
    versions:
      v1: {{source: {tmp / "runs-src"}}}
    store: {{uri: {tmp / "store"}}}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Five photos indexed into dataset ``t``; ``empty`` is registered but never indexed;
    ``runs`` (four photos and a broken file) is indexed stage by stage by the run tests."""
    tmp = tmp_path_factory.mktemp("plugin-api")
    src = tmp / "src"
    for seed, rel in enumerate(PHOTOS):
        make_photo(src / rel, seed=seed, fmt="PNG" if rel.endswith(".png") else "JPEG")
    make_photo(tmp / "empty-src" / "x.jpg")
    for seed in range(4):
        make_photo(tmp / "runs-src" / f"r{seed}.jpg", seed=10 + seed)
    (tmp / "runs-src" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a JPEG after all")
    registry = tmp / "registry.yaml"
    registry.write_text(_registry(tmp, src), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEINDEX_HOME", str(tmp / "home"))
        mp.setenv("IMAGEINDEX_REGISTRY", str(registry))
        mp.delenv("IMAGEINDEX_STAGING", raising=False)
        mp.delenv("IMAGEINDEX_STORE", raising=False)
        mp.setenv("AIRFLOW__CORE__AUTH_MANAGER", SIMPLE_AUTH)
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,viewer:viewer")
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(tmp / "passwords.json"))
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "imageindex-plugin-tests-" + "s" * 48)
        mp.syspath_prepend(str(PLUGINS))

        from airflow.api_fastapi.app import init_auth_manager, purge_cached_app
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
        from airflow.models.revoked_token import RevokedToken
        from fastapi.testclient import TestClient

        # Revocation is looked up in the metadata DB, which these tests do not create;
        # test_api_server.py covers the real path.
        mp.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, session=None: False))

        report = pipeline.run_all("t", shard_size=2)
        assert report["indexed_ok"] == len(PHOTOS), report

        purge_cached_app()
        manager = init_auth_manager()
        tokens = {
            role: manager.generate_jwt(SimpleAuthManagerUser(username=role, role=role))
            for role in ("admin", "viewer")
        }
        tokens["nobody"] = manager.generate_jwt(SimpleAuthManagerUser(username="x", role=None))
        from imageindex_airflow.app import app

        with TestClient(app) as client:
            yield Env(tmp, src, registry, client, tokens)
        purge_cached_app()


def _png(size=(64, 48), colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# authentication and access


ROUTES = [
    ("GET", "/datasets"),
    ("GET", "/datasets/t"),
    ("POST", "/datasets/t/search"),
    ("POST", "/datasets/t/search/image"),
    ("GET", "/datasets/t/files/" + "0" * 32),
    ("GET", "/datasets/t/files/" + "0" * 32 + "/thumbnail"),
    ("GET", "/datasets/t/files/" + "0" * 32 + "/original"),
    ("POST", "/datasets/t/files/" + "0" * 32 + "/tags"),
    ("DELETE", "/datasets/t/files/" + "0" * 32 + "/tags"),
    ("POST", "/datasets/t/tags"),
    ("DELETE", "/datasets/t/tags"),
    ("POST", "/datasets/t/export"),
    ("GET", "/datasets/t/versions/v1/runs"),
    ("GET", "/datasets/t/versions/v1/runs/x"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/ui/app.js"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_an_airflow_token(env, method, path):
    response = env.client.request(method, path, json={"tags": ["x"]})
    assert response.status_code == 401, response.text
    # Airflow answers an invalid token with 403; the page's files simply ask for a login.
    forged = {"Authorization": "Bearer not.a.jwt"}
    expected = 401 if path.startswith("/ui/") else 403
    assert env.client.request(method, path, headers=forged).status_code == expected


def test_the_page_sends_strangers_to_the_airflow_login(env):
    response = env.client.get("/ui/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"].startswith("/auth/login?next=")

    page = env.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'self'" in page.headers["content-security-policy"]
    assert env.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert env.get("/ui/app.css").status_code == 200
    assert env.get("/ui/registry.yaml").status_code == 404
    assert env.get("/ui/..%2Fapi.py").status_code == 404


def test_the_ui_login_cookie_works_like_a_bearer_token(env):
    env.client.cookies.set("_token", env.tokens["viewer"])
    try:
        response = env.client.get("/datasets")
    finally:
        env.client.cookies.clear()
    assert response.status_code == 200
    assert [d["id"] for d in response.json()["datasets"]] == ["t", "empty", "runs"]


def test_access_follows_the_dataset_dag_permissions(env):
    # No role: no DAG may be read, so no dataset either.
    assert env.get("/datasets", "nobody").json() == {"datasets": []}
    assert env.search("nobody", text="x").status_code == 403
    # Viewers read and search but may not edit user tags.
    viewer = env.get("/datasets", "viewer").json()["datasets"]
    assert [d["can_edit"] for d in viewer] == [False, False, False]
    doc = next(iter(env.ids().values()))
    denied = env.post(f"/datasets/t/files/{doc}/tags", "viewer", json={"tags": ["x"]})
    assert denied.status_code == 403 and "imageindex_t" in denied.json()["detail"]


# --------------------------------------------------------------------------------------------
# datasets and search


def test_datasets_list_counts_and_the_last_run(env):
    datasets = {d["id"]: d for d in env.get("/datasets").json()["datasets"]}
    t = datasets["t"]
    assert t["dag_id"] == "imageindex_t" and t["can_edit"] is True
    (v1,) = t["versions"]
    assert (v1["indexed"], v1["ok"], v1["failed"], v1["current"]) == (5, 5, 0, True)
    assert v1["source"] == env.src.as_uri()
    assert v1["last_run"]["listed"] == 5 and v1["last_run"]["finished_at"]
    assert "Animal" in t["tag_names"]
    assert datasets["empty"]["versions"][0]["indexed"] == 0
    assert datasets["empty"]["versions"][0]["last_run"] is None
    assert env.get("/datasets/t").json()["versions"][0]["ok"] == 5


def test_text_search_ranks_hits_with_scores_tags_and_links(env):
    body = env.search(text="a photo", top_k=3).json()
    assert body["ranked"] is True and body["version"] == "v1"
    hits = body["hits"]
    assert len(hits) == 3 and body["next_cursor"]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert set(hits[0]["tags"]) == {"ai", "user"}
    assert hits[0]["thumbnail_url"] == f"/datasets/t/files/{hits[0]['id']}/thumbnail"
    more = env.search(text="a photo", top_k=3, cursor=body["next_cursor"]).json()
    assert {h["id"] for h in more["hits"]}.isdisjoint(h["id"] for h in hits)
    assert len(hits) + len(more["hits"]) == 5


def test_filter_only_search_pages_through_everything_in_order(env):
    seen, cursor = [], None
    for _ in range(5):
        body = env.search(top_k=2, cursor=cursor, sort="file_name").json()
        assert body["ranked"] is False
        seen += [h["file_name"] for h in body["hits"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(Path(p).name for p in PHOTOS)


def test_metadata_filters(env):
    names = lambda **b: sorted(h["file_name"] for h in env.search(top_k=50, **b).json()["hits"])  # noqa: E731
    assert names(path_prefix=(env.src / "b").as_uri() + "/") == ["p2.png", "p3.jpg", "p4.jpg"]
    assert names(file_name="P1") == ["p1.jpg"]
    assert names(dsl="format=PNG") == ["p2.png"]
    assert len(names(mtime_from="2000-01-01", mtime_to="2999-12-31")) == 5
    assert names(mtime_to="2000-01-01") == []


def test_query_language_errors_are_400_with_the_column(env):
    response = env.search(dsl="tags:cat AND heigth > 3")
    assert response.status_code == 400
    body = response.json()
    assert body["column"] == 14 and body["line"] == 1
    assert "unknown field 'heigth'" in body["detail"] and "height" in body["detail"]

    response = env.search(dsl="tags:cat AND (width > 3")
    assert response.status_code == 400 and response.json()["column"] is not None


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"top_k": 0}, 400, "top_k must be between 1 and 1000"),
        ({"text": "x", "score_threshold": 2}, 400, "score_threshold must be between"),
        ({"version": "v9"}, 400, "no version 'v9'"),
        ({"text": "x", "image_uri": "file:///x.jpg"}, 400, "give one query"),
        ({"image_uri": "file:///etc/passwd"}, 400, "is not an indexed image"),
        ({"cursor": "garbage"}, 400, "cursor"),
        ({"sort": "color"}, 400, "sort"),
        ({"mtime_from": "yesterday"}, 400, "mtime"),
        ({"unknown": 1}, 422, "unknown"),
    ],
)
def test_bad_requests_say_what_to_fix(env, body, status, message):
    response = env.search(**body)
    assert response.status_code == status, response.text
    assert message in str(response.json()["detail"])


def test_unknown_dataset_and_document_are_404(env):
    assert env.search(dataset="nope").status_code == 404
    assert env.get("/datasets/nope").status_code == 404
    assert env.get("/datasets/t/files/" + "f" * 32).status_code == 404
    assert env.get("/datasets/t/files/not-an-id").status_code == 422
    assert env.get("/datasets/..%2Fx/files/" + "f" * 32).status_code in (404, 422)


def test_a_dataset_not_indexed_yet_says_how_to_index_it(env):
    response = env.search(dataset="empty", text="x")
    assert response.status_code == 404
    assert "trigger the imageindex_empty DAG" in response.json()["detail"]


def test_find_similar_to_an_indexed_image(env):
    uri = (env.src / "b" / "p3.jpg").as_uri()
    hits = env.search(image_uri=uri, top_k=2).json()["hits"]
    assert hits[0]["uri"] == uri and hits[0]["score"] > 0.99


# --------------------------------------------------------------------------------------------
# upload


def _upload(env, data: bytes, name="q.png", request: str | None = None, **kw):
    files = {"file": (name, data, "application/octet-stream")}
    form = {"request": request} if request is not None else None
    return env.post("/datasets/t/search/image", files=files, data=form, **kw)


def test_search_by_an_uploaded_image(env):
    data = (env.src / "b" / "p2.png").read_bytes()
    request = json.dumps({"top_k": 2, "path_prefix": env.src.as_uri()})
    response = _upload(env, data, request=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ranked"] is True and len(body["hits"]) == 2
    assert body["hits"][0]["file_name"] == "p2.png" and body["hits"][0]["score"] > 0.99


@pytest.mark.parametrize(
    ("data", "request_field", "status", "message"),
    [
        (b"GIF89a" + b"\0" * (20 * 2**20), None, 413, "larger than 20 MiB"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None, 415, "not a supported image"),
        (b"%PDF-1.7 ...", None, 415, "JPEG, PNG, WebP, GIF, BMP or TIFF"),
        (b"\x89PNG\r\n\x1a\n broken", None, 400, "cannot be used as a query image"),
        (_png(), "[1, 2]", 400, "JSON object"),
        (_png(), '{"text": "a cat"}', 400, "give one query"),
        (_png(), '{"top_k": "many"}', 422, "top_k"),
    ],
)
def test_uploads_are_limited_in_size_and_type(env, data, request_field, status, message):
    response = _upload(env, data, request=request_field)
    assert response.status_code == status, response.text
    assert message in str(response.json()["detail"])


def test_an_upload_needs_a_file_field(env):
    response = env.post("/datasets/t/search/image", files={"other": ("a", b"x")})
    assert response.status_code == 400 and "'file'" in response.json()["detail"]
    response = env.post("/datasets/t/search/image", json={"text": "x"})
    assert response.status_code == 415


def test_oversized_uploads_are_refused_without_reading_them_whole(env):
    multipart = {**env.auth(), "Content-Type": "multipart/form-data; boundary=x"}
    declared = {**multipart, "Content-Length": str(50 * 2**20)}
    response = env.client.post("/datasets/t/search/image", headers=declared, content=b"--x--")
    assert response.status_code == 413

    def chunked():  # no Content-Length: the stream itself is cut off
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.gif"\r\n\r\nGIF89a'
        for _ in range(30):
            yield b"\0" * 2**20
        yield b"\r\n--x--\r\n"

    response = env.client.post("/datasets/t/search/image", headers=multipart, content=chunked())
    assert response.status_code == 413


# --------------------------------------------------------------------------------------------
# files


def test_document_thumbnail_and_original(env):
    doc_id = env.ids()["p2.png"]
    doc = env.get(f"/datasets/t/files/{doc_id}").json()
    assert doc["uri"] == (env.src / "b" / "p2.png").as_uri()
    assert doc["status"] == "ok" and doc["format"] == "PNG" and "vector" not in doc
    assert isinstance(doc["mtime"], float) and isinstance(doc["tags_detail"], list)

    thumb = env.get(doc["thumbnail_url"])
    assert thumb.status_code == 200
    assert thumb.headers["content-type"] == "image/jpeg"
    assert thumb.headers["x-content-type-options"] == "nosniff"
    assert Image.open(io.BytesIO(thumb.content)).format == "JPEG"
    cached = env.get(doc["thumbnail_url"], headers={"If-None-Match": thumb.headers["etag"]})
    assert cached.status_code == 304 and not cached.content

    original = env.get(doc["original_url"])
    assert original.status_code == 200
    assert original.headers["content-type"] == "image/png"
    assert original.content == (env.src / "b" / "p2.png").read_bytes()


def test_an_original_that_is_not_an_image_is_only_downloaded(env, tmp_path):
    path = env.src / "a" / "p0.jpg"
    saved = path.read_bytes()
    try:
        path.write_bytes(b"<html><script>alert(1)</script></html>")
        response = env.get(f"/datasets/t/files/{env.ids()['p0.jpg']}/original")
    finally:
        path.write_bytes(saved)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith("attachment")


def test_files_outside_the_source_or_staging_are_refused(env, monkeypatch, tmp_path):
    doc_id = env.ids()["p1.jpg"]
    # The registry now points v1 elsewhere: the indexed uri is outside the version's source.
    moved = tmp_path / "registry.yaml"
    moved.write_text(_registry(env.tmp, tmp_path / "elsewhere"), encoding="utf-8")
    monkeypatch.setenv("IMAGEINDEX_REGISTRY", str(moved))
    response = env.get(f"/datasets/t/files/{doc_id}/original")
    assert response.status_code == 403 and "outside the source" in response.json()["detail"]
    monkeypatch.setenv("IMAGEINDEX_REGISTRY", str(env.registry))
    # Another staging root: the stored thumbnail uri is outside this dataset's thumbnails.
    monkeypatch.setenv("IMAGEINDEX_STAGING", str(tmp_path / "other-staging"))
    response = env.get(f"/datasets/t/files/{doc_id}/thumbnail")
    assert response.status_code == 403 and "outside" in response.json()["detail"]


# --------------------------------------------------------------------------------------------
# user tags


def test_user_tags_are_added_removed_and_kept_apart_from_ai_tags(env):
    ids = env.ids()
    one = ids["p1.jpg"]
    ai_before = env.get(f"/datasets/t/files/{one}").json()["tags"]["ai"]
    response = env.post(f"/datasets/t/files/{one}/tags", json={"tags": ["keep", " keep ", ""]})
    assert response.status_code == 200 and response.json()["changed"] == 1
    tags = env.get(f"/datasets/t/files/{one}").json()["tags"]
    assert tags == {"ai": ai_before, "user": ["keep"]}
    hits = env.search(tags_any=["keep"]).json()["hits"]
    assert [h["id"] for h in hits] == [one]
    assert env.search(dsl="tags.user:keep").json()["hits"][0]["id"] == one

    both = [ids["p3.jpg"], ids["p4.jpg"]]
    response = env.post("/datasets/t/tags", json={"ids": both, "tags": ["pair"]})
    assert response.json()["changed"] == 2
    found = env.search(tags_all=["pair"], tags_exclude=["keep"], top_k=10).json()["hits"]
    assert sorted(h["id"] for h in found) == sorted(both)
    response = env.delete("/datasets/t/tags", json={"ids": both, "tags": ["pair"]})
    assert response.json()["changed"] == 2
    assert env.search(tags_any=["pair"]).json()["hits"] == []

    response = env.delete(f"/datasets/t/files/{one}/tags", json={"tags": ["keep"]})
    assert response.json()["documents"][0]["tags"]["user"] == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"tags": []}, 400),
        ({"tags": ["x" * 101]}, 400),
        ({"tags": ["bad\nline"]}, 400),
        ({"tags": [str(i) for i in range(51)]}, 400),
        ({"tag": "x"}, 422),
    ],
)
def test_bad_tag_edits_are_refused(env, body, status):
    doc = next(iter(env.ids().values()))
    assert env.post(f"/datasets/t/files/{doc}/tags", json=body).status_code == status


def test_bulk_tag_edits_check_every_id(env):
    doc = next(iter(env.ids().values()))
    response = env.post("/datasets/t/tags", json={"ids": [doc, "f" * 32], "tags": ["x"]})
    assert response.status_code == 404
    assert "x" not in env.get(f"/datasets/t/files/{doc}").json()["tags"]["user"]
    response = env.post("/datasets/t/tags", json={"ids": ["../x"], "tags": ["x"]})
    assert response.status_code == 400


def test_user_tags_survive_a_full_reindex(env):
    doc = env.ids()["p0.jpg"]
    env.post(f"/datasets/t/files/{doc}/tags", json={"tags": ["reviewed"]})
    report = pipeline.run_all("t", mode="full")
    assert report["processed"] == len(PHOTOS)
    assert env.get(f"/datasets/t/files/{doc}").json()["tags"]["user"] == ["reviewed"]
    env.delete(f"/datasets/t/files/{doc}/tags", json={"tags": ["reviewed"]})


# --------------------------------------------------------------------------------------------
# the rest


def test_export_to_a_file_and_download_it(env):
    res = env.post("/datasets/t/export", json={"dsl": "format = PNG OR width > 0", "name": "all"})
    assert res.status_code == 200, res.text
    out = res.json()
    assert out["count"] == len(PHOTOS) and out["format"] == "jsonl"
    assert out["uri"] == str(env.tmp / "home" / "staging" / "exports" / "t" / "all.jsonl")
    got = env.get(out["download"])
    assert got.status_code == 200 and "attachment" in got.headers["content-disposition"]
    assert hashlib.sha256(got.content).hexdigest() == out["sha256"]
    rows = [json.loads(line) for line in got.content.decode().splitlines()]
    assert sorted(r["file_name"] for r in rows) == sorted(p.rsplit("/", 1)[-1] for p in PHOTOS)
    check = env.get("/datasets/t/exports/all.jsonl.sha256")
    assert check.text == f"{out['sha256']}  all.jsonl\n"
    csv_out = env.post("/datasets/t/export", json={"text": "a photo", "limit": 2, "format": "csv"})
    assert csv_out.json()["count"] == 2 and csv_out.json()["uri"].endswith(".csv")


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"format": "xlsx"}, 400, "format must be one of"),
        ({"name": "../../etc/x"}, 400, "name may hold"),
        ({"limit": 0}, 400, "limit must be at least 1"),
        ({"dsl": "width >>= 3"}, 400, "column"),
    ],
)
def test_bad_exports_are_400(env, body, status, words):
    res = env.post("/datasets/t/export", json=body)
    assert res.status_code == status and words in res.text


def test_download_refuses_other_names(env):
    assert env.get("/datasets/t/exports/..%2Fregistry.yaml").status_code == 404
    assert env.get("/datasets/t/exports/nothing.jsonl").status_code == 404


def test_export_to_a_logical_version_needs_edit_permission(env):
    body = {"path_prefix": (env.src / "a").as_uri() + "/", "to_version": "only-a"}
    assert env.post("/datasets/t/export", "viewer", json=body).status_code == 403
    res = env.post("/datasets/t/export", json=body)
    assert res.status_code == 200 and res.json()["version"] == "only-a"
    assert res.json()["count"] == 2
    report = pipeline.run_all("t", "only-a")
    assert report["reused"] == 2 and report["indexed_ok"] == 2
    versions = {v["name"]: v for v in env.get("/datasets/t").json()["versions"]}
    assert versions["only-a"]["kind"] == "logical" and versions["only-a"]["ok"] == 2
    assert versions["v1"]["kind"] == "prefix"
    hits = env.search(version="only-a", top_k=10).json()["hits"]
    assert sorted(h["file_name"] for h in hits) == ["p0.jpg", "p1.jpg"]
    original = env.get(hits[0]["original_url"])
    assert original.status_code == 200
    assert original.content == (env.src / "a" / hits[0]["file_name"]).read_bytes()


# --------------------------------------------------------------------------------------------
# runs: files done per stage while in flight, the report afterwards


def _progress(run: dict) -> dict[str, tuple[int, int]]:
    return {s["stage"]: (s["done"], s["total"]) for s in run["stages"]}


def test_a_finished_run_and_its_report(env):
    body = env.get("/datasets/t/versions/v1/runs").json()
    assert body["dataset_id"] == "t" and body["version"] == "v1"
    # Newest first; the oldest is the fixture's (other tests index "t" again).
    run = body["runs"][-1]
    assert [r["state"] for r in body["runs"]] == ["finished"] * len(body["runs"])
    assert run["mode"] == "incremental" and run["run_id"].startswith("manual__")
    assert run["files"] == 5 and run["shards"] == 3  # shard_size=2: 2, 2 and 1 files
    assert _progress(run) == {"preprocess": (5, 5), "tag_embed": (5, 5), "upsert": (5, 5)}
    assert [s["shards_done"] for s in run["stages"]] == [3, 3, 3]
    assert run["report"]["processed"] == 5 and run["report"]["failed"] == 0
    assert run["report"]["indexed_ok"] == 5 and run["failed_filter"] is None
    assert run["started_at"] < run["finished_at"]
    assert env.get(f"/datasets/t/versions/v1/runs/{run['run']}").json() == run


def test_run_routes_refuse_unknown_versions_and_runs(env):
    missing = env.get("/datasets/t/versions/v9/runs")
    assert missing.status_code == 404 and "no version 'v9'" in missing.json()["detail"]
    nope = env.get("/datasets/t/versions/v1/runs/manual__nope")
    assert nope.status_code == 404 and "no run 'manual__nope'" in nope.json()["detail"]
    assert env.get("/datasets/t/versions/v1/runs/..").status_code in (404, 422)
    assert env.get("/datasets/t/versions/v1/runs?limit=0").status_code == 422
    assert env.get("/datasets/t/versions/v1/runs", "nobody").status_code == 403
    assert env.get("/datasets/empty/versions/v1/runs").json()["runs"] == []


def test_a_run_in_flight_shows_files_done_per_stage_then_its_report(env):
    """The pipeline's stages called one by one, as the DAG's tasks would; the API is asked
    between them. Five files in shards of 2: 2, 2 and 1."""
    url = "/datasets/runs/versions/v1/runs"
    run_id = "manual__2026-12-05T10:00:00+00:00"
    plan = pipeline.plan("runs", "v1", run_id, shard_size=2)
    name = env.get(url).json()["runs"][0]["run"]

    def progress():
        run = env.get(f"{url}/{name}").json()
        return run["state"], _progress(run)

    zero = {"preprocess": (0, 5), "tag_embed": (0, 5), "upsert": (0, 5)}
    assert progress() == ("running", zero)
    first, *rest = plan["shards"]
    last = rest[-1]
    pre = pipeline.preprocess("runs", "v1", last, run_id=run_id)  # the 1-file shard first
    assert progress() == ("running", {**zero, "preprocess": (1, 5)})
    pre0 = pipeline.preprocess("runs", "v1", first, run_id=run_id)
    assert progress() == ("running", {**zero, "preprocess": (3, 5)})
    emb = pipeline.tag_embed("runs", "v1", pre0["preprocessed"], run_id=run_id)
    assert progress()[1]["tag_embed"] == (2, 5)
    ups = pipeline.upsert("runs", "v1", emb["features"], pre0["preprocessed"], run_id=run_id)
    assert progress() == (
        "running",
        {"preprocess": (3, 5), "tag_embed": (2, 5), "upsert": (2, 5)},
    )
    results = [pipeline.shard_summary(pre0, emb, ups)]
    emb = pipeline.tag_embed("runs", "v1", pre["preprocessed"], run_id=run_id)
    ups = pipeline.upsert("runs", "v1", emb["features"], pre["preprocessed"], run_id=run_id)
    results.append(pipeline.shard_summary(pre, emb, ups))
    results += [pipeline.run_shard("runs", "v1", s, run_id=run_id) for s in rest[:-1]]
    state, done = progress()
    assert state == "running" and set(done.values()) == {(5, 5)}  # all shards, no report yet

    pipeline.finalize("runs", "v1", plan, results)
    run = env.get(f"{url}/{name}").json()
    assert run["state"] == "finished" and run["run_id"] == run_id
    assert run["report"]["failed"] == 1 and run["report"]["indexed_ok"] == 4
    (reason,) = run["report"]["failed_by_reason"]
    # The gallery filter finds exactly the broken file, in that version.
    flt = run["failed_filter"]
    assert flt["version"] == "v1" and flt["dsl"].startswith("status=failed AND indexed_at >= ")
    hits = env.search(dataset="runs", version=flt["version"], dsl=flt["dsl"]).json()["hits"]
    assert [h["file_name"] for h in hits] == ["broken.jpg"]
    doc = env.get(f"/datasets/runs/files/{hits[0]['id']}").json()
    assert doc["status"] == "failed" and doc["error"].startswith(reason)

    # A second run that plans and then dies (its teardown gives the lease back): stopped,
    # listed first as the newest; the finished one stays as it was.
    later = "manual__2026-12-05T11:00:00+00:00"
    pipeline.plan("runs", "v1", later, shard_size=2)
    assert env.get(url).json()["runs"][0]["state"] == "running"
    pipeline.release_lease("runs", "v1", later)
    runs = env.get(url).json()["runs"]
    assert [(r["run_id"], r["state"]) for r in runs] == [(later, "stopped"), (run_id, "finished")]
    assert env.get(f"{url}?limit=1").json()["runs"] == runs[:1]


#: Every operation of the API with its operationId: generated clients name their methods after
#: these, so renaming a route function (the id starts with its name) breaks them.
OPERATIONS = {
    ("GET", "/datasets"): "list_datasets_datasets_get",
    ("GET", "/datasets/{dataset_id}"): "get_dataset_datasets__dataset_id__get",
    ("GET", "/datasets/{dataset_id}/versions/{version}/runs"):
        "list_runs_datasets__dataset_id__versions__version__runs_get",
    ("GET", "/datasets/{dataset_id}/versions/{version}/runs/{run}"):
        "get_run_datasets__dataset_id__versions__version__runs__run__get",
    ("POST", "/datasets/{dataset_id}/search"): "search_datasets__dataset_id__search_post",
    ("POST", "/datasets/{dataset_id}/search/image"):
        "search_by_image_datasets__dataset_id__search_image_post",
    ("GET", "/datasets/{dataset_id}/files/{doc_id}"):
        "get_file_datasets__dataset_id__files__doc_id__get",
    ("GET", "/datasets/{dataset_id}/files/{doc_id}/thumbnail"):
        "get_thumbnail_datasets__dataset_id__files__doc_id__thumbnail_get",
    ("GET", "/datasets/{dataset_id}/files/{doc_id}/original"):
        "get_original_datasets__dataset_id__files__doc_id__original_get",
    ("POST", "/datasets/{dataset_id}/files/{doc_id}/tags"):
        "add_tags_datasets__dataset_id__files__doc_id__tags_post",
    ("DELETE", "/datasets/{dataset_id}/files/{doc_id}/tags"):
        "remove_tags_datasets__dataset_id__files__doc_id__tags_delete",
    ("POST", "/datasets/{dataset_id}/tags"): "add_tags_bulk_datasets__dataset_id__tags_post",
    ("DELETE", "/datasets/{dataset_id}/tags"): "remove_tags_bulk_datasets__dataset_id__tags_delete",
    ("POST", "/datasets/{dataset_id}/export"): "export_datasets__dataset_id__export_post",
    ("GET", "/datasets/{dataset_id}/exports/{name}"):
        "download_export_datasets__dataset_id__exports__name__get",
}  # fmt: skip


def test_openapi_schema_lists_every_operation_under_its_id(env):
    schema = env.get("/openapi.json").json()
    operations = {
        (method.upper(), path): op["operationId"]
        for path, methods in schema["paths"].items()
        for method, op in methods.items()
    }
    assert operations == OPERATIONS
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    for (method, path), _ in OPERATIONS.items():
        op = schema["paths"][path][method.lower()]
        assert op["security"] == [{"HTTPBearer": []}], (method, path)
        assert "401" in op["responses"], (method, path)
    upload = schema["paths"]["/datasets/{dataset_id}/search/image"]["post"]["requestBody"]
    assert "multipart/form-data" in upload["content"]


def test_plugin_registers_the_app_and_a_nav_view():
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    spec = importlib.util.spec_from_file_location(
        "imageindex_plugin_probe", PLUGINS / "imageindex_airflow" / "plugin.py"
    )
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(PLUGINS))
        spec.loader.exec_module(module)
    plugin = module.ImageIndexPlugin
    (app,) = plugin.fastapi_apps
    assert app["url_prefix"] == "/imageindex" and app["name"] == "imageindex"
    (view,) = plugin.external_views
    ExternalViewResponse.model_validate(view)
    assert view["href"] == "/imageindex/ui/" and view["destination"] == "nav"
    assert sys.modules["imageindex_airflow.schemas"].MAX_UPLOAD_BYTES == MAX_UPLOAD_BYTES
