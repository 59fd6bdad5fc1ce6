"""The View Data page in a real browser, inside the real Airflow UI: log in through Airflow's
login page, open the nav entry, search by text, by upload and by tag, shift-select a range, see
a query-language error next to its box, open the large view and add a user tag there.

Uses Debian's Chromium (``apt-get install chromium``) through Playwright's Python package
(``pip install playwright``, no browser download); skipped when either is missing. Screenshots
go to test-output/browser/.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from .test_api_server import api_server, login

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "browser"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)"
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
]


def our_frame(page):
    # The Airflow page mirrors the iframe's path in its own URL; ours is the one we serve.
    return page.frame(url=re.compile(r"^http://[^/]+/imageindex/ui/"))


def wait_for_thumbnails(page) -> None:
    # Locator polling, not wait_for_function: the page's CSP forbids the eval that uses.
    images = page.frame_locator("iframe[title='View Data']").locator(".card img")
    for i in range(images.count()):
        sync_api.expect(images.nth(i)).to_have_js_property("complete", True)
        assert images.nth(i).evaluate("img => img.naturalWidth") > 0


def log_in_to_view_data(page, airflow):
    """Airflow's login page, then back to the View Data entry; the page's frame locator."""
    page.goto(f"{airflow['base']}/plugin/image-search")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", airflow["password"])
    page.keyboard.press("Enter")
    page.wait_for_url("**/plugin/image-search")
    return page.frame_locator("iframe[title='View Data']")


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    var = tmp_path_factory.mktemp("browser")
    with api_server(var) as (base, passwords):
        token = login(base, "admin", passwords["admin"])
        api = httpx.Client(
            base_url=f"{base}/imageindex", headers={"Authorization": f"Bearer {token}"}
        )
        hits = api.post("/datasets/t/search", json={"top_k": 10}).json()["hits"]
        ids = {h["file_name"]: h["id"] for h in hits}
        for name in ("p0.jpg", "p2.jpg"):
            api.post(f"/datasets/t/files/{ids[name]}/tags", json={"tags": ["favourite"]})
        yield {"base": base, "password": passwords["admin"], "api": api, "ids": ids, "var": var}
        api.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def test_view_data_inside_the_airflow_ui(airflow, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    expect = sync_api.expect
    page = browser.new_page(viewport={"width": 1400, "height": 900}, color_scheme="light")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Not logged in: Airflow's login page, then back to the View Data entry.
    view = log_in_to_view_data(page, airflow)
    cards = view.locator(".card")
    expect(cards).to_have_count(3)
    expect(view.locator("#dataset-info")).to_contain_text("3 indexed")
    assert cards.first.locator("img").get_attribute("loading") == "lazy"
    wait_for_thumbnails(page)
    page.screenshot(path=SHOTS / "gallery-light.png")

    # Text search: ranked, a score on every card.
    view.locator("#text").fill("a colourful picture")
    view.locator("#go").click()
    # The server loads the model on its first text query.
    expect(view.locator("#status")).to_contain_text("ranked by similarity", timeout=90_000)
    expect(view.locator(".card .score")).to_have_count(3)

    # Search by an uploaded image: the same photo comes first.
    photo = airflow["var"] / "photos" / "b" / "p1.jpg"
    view.locator("#image").set_input_files(str(photo))
    expect(view.locator("#query-chip")).to_contain_text("Similar to p1.jpg")
    expect(cards.first.locator(".name")).to_have_text("p1.jpg")

    # Tag filter: only the two favourites.
    view.locator("#reset-form").click()
    expect(view.locator("#query-chip")).to_be_hidden()
    view.locator("#tags-any input").fill("favourite")
    view.locator("#tags-any input").press("Enter")
    view.locator("#go").click()
    expect(cards).to_have_count(2)
    assert sorted(cards.locator(".name").all_inner_texts()) == ["p0.jpg", "p2.jpg"]

    # Shift-click selects the range between two clicks.
    view.locator("#reset-form").click()
    expect(cards).to_have_count(3)
    cards.nth(0).locator(".pick").click()
    cards.nth(2).click(modifiers=["Shift"])
    expect(view.locator("#selection-count")).to_have_text("3 selected")
    expect(view.locator(".card[aria-selected='true']")).to_have_count(3)
    page.screenshot(path=SHOTS / "selection.png")
    view.locator("#select-none").click()
    expect(view.locator("#selection-bar")).to_be_hidden()

    # A query-language mistake is shown next to the box, with its column.
    view.locator("#dsl").fill("width >> 3")
    view.locator("#dsl").press("Enter")
    expect(view.locator("#dsl-error")).to_contain_text("column 8")
    page.screenshot(path=SHOTS / "dsl-error.png")
    view.locator("#dsl").fill("")
    view.locator("#go").click()
    expect(view.locator("#dsl-error")).to_be_hidden()

    # The large view: metadata, tags, and a user tag added there.
    cards.nth(1).locator("img").click()
    dialog = view.locator("#detail")
    expect(dialog).to_be_visible()
    expect(view.locator("#detail-title")).to_have_text("p1.jpg")
    expect(view.locator("#detail-meta")).to_contain_text("640 × 480")
    view.locator("#detail-tag").fill("checked")
    view.locator("#detail-tag-form button").click()
    expect(view.locator("#detail-user-tags")).to_contain_text("checked")
    page.screenshot(path=SHOTS / "large-view.png")
    doc = airflow["api"].get(f"/datasets/t/files/{airflow['ids']['p1.jpg']}").json()
    assert doc["tags"]["user"] == ["checked"]
    view.locator("#detail-close").click()
    expect(dialog).to_be_hidden()

    view.locator("#view-list").click()
    expect(view.locator("table.list tbody tr")).to_have_count(3)
    page.screenshot(path=SHOTS / "list-light.png")
    assert errors == []


LIGHT_BG, DARK_BG = "rgb(247, 248, 250)", "rgb(17, 20, 24)"  # --bg in app.css


def test_theme_follows_the_airflow_ui_not_the_os(airflow, browser):
    """The OS prefers dark, the Airflow UI is set to light: the page is light (app.css alone
    would make it dark). Switching the Airflow UI to dark turns the open page dark."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    expect = sync_api.expect
    context = browser.new_context(viewport={"width": 1400, "height": 900}, color_scheme="dark")
    # Airflow's UI keeps its colour mode in localStorage "theme" (next-themes) and puts it on
    # <html> as a class; set it before the UI's own scripts read it.
    context.add_init_script("if (window.top === window) localStorage.setItem('theme', 'light')")
    page = context.new_page()
    view = log_in_to_view_data(page, airflow)
    expect(view.locator(".card")).to_have_count(3)
    expect(page.locator("html")).to_have_class(re.compile(r"\blight\b"))
    assert our_frame(page).evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    expect(view.locator("body")).to_have_css("background-color", LIGHT_BG)

    # The UI's colour-mode switch changes the class on <html>; the page follows while open.
    page.evaluate(
        "() => { const root = document.documentElement;"
        " root.classList.replace('light', 'dark'); root.style.colorScheme = 'dark'; }"
    )
    expect(view.locator("body")).to_have_css("background-color", DARK_BG)
    wait_for_thumbnails(page)
    page.screenshot(path=SHOTS / "gallery-dark.png")
    context.close()


def test_a_run_in_flight_then_its_report_and_failed_files(airflow, browser, monkeypatch):
    """The run panel above the search form: files done per stage while the pipeline's stages
    run (called here one by one, as the DAG's tasks would), then the report, whose button
    filters the gallery to the run's failed file."""
    from imageindex import pipeline

    SHOTS.mkdir(parents=True, exist_ok=True)
    expect = sync_api.expect
    var = airflow["var"]
    monkeypatch.setenv("IMAGEINDEX_HOME", str(var))
    monkeypatch.setenv("IMAGEINDEX_REGISTRY", str(var / "registry.yaml"))
    monkeypatch.delenv("IMAGEINDEX_STAGING", raising=False)
    monkeypatch.delenv("IMAGEINDEX_STORE", raising=False)
    (var / "photos" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a JPEG after all")
    run_id = "manual__2026-12-05T12:00:00+00:00"
    plan = pipeline.plan("t", "v1", run_id, mode="full", shard_size=2)  # 4 files, 2 shards
    first, second = plan["shards"]
    pre = pipeline.preprocess("t", "v1", first, run_id=run_id)

    page = browser.new_page(viewport={"width": 1400, "height": 900}, color_scheme="light")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    view = log_in_to_view_data(page, airflow)
    panel = view.locator("#run")
    expect(view.locator("#run-state")).to_have_text("running")
    expect(view.locator("#run-link")).to_have_text(run_id)
    stage = lambda name: panel.locator(f".stage[data-stage={name}] .stage-count")  # noqa: E731
    expect(stage("preprocess")).to_have_text("2 / 4 files")
    expect(stage("tag_embed")).to_have_text("0 / 4 files")
    page.screenshot(path=SHOTS / "run-progress.png")

    # The page polls: the next stage shows up without a reload.
    emb = pipeline.tag_embed("t", "v1", pre["preprocessed"], run_id=run_id)
    expect(stage("tag_embed")).to_have_text("2 / 4 files", timeout=15_000)
    ups = pipeline.upsert("t", "v1", emb["features"], pre["preprocessed"], run_id=run_id)
    results = [pipeline.shard_summary(pre, emb, ups)]
    results.append(pipeline.run_shard("t", "v1", second, run_id=run_id))
    pipeline.finalize("t", "v1", plan, results)

    expect(view.locator("#run-state")).to_have_text("finished", timeout=15_000)
    expect(view.locator("#run-counts")).to_contain_text("4 processed")
    expect(view.locator("#run-counts")).to_contain_text("1 failed")
    expect(view.locator("#run-failures")).to_contain_text("not_an_image 1")
    expect(view.locator("#dataset-info")).to_contain_text("1 failed")  # counts refreshed
    view.locator("#run-show-failed").click()
    cards = view.locator(".card")
    expect(cards).to_have_count(1)
    expect(cards.first.locator(".name")).to_have_text("broken.jpg")
    assert view.locator("#dsl").input_value().startswith("status=failed AND indexed_at >= ")
    page.screenshot(path=SHOTS / "run-report.png")
    assert errors == []
