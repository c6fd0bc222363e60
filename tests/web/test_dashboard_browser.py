"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright):
the page loads, a published change appears live, an error shows its detail and a click on
retry resolves it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness._util import unavailable
from tests.web.conftest import Site

pytestmark = pytest.mark.slow  # server-heavy end to end; `pytest -m "not slow"` skips it

CHROMIUM = os.environ.get("CHANGEFEED_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-test-token-0123456789"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        unavailable(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: object, tmp_path: Path) -> Iterator[object]:
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)  # a loaded 2-core CI machine is slow, not broken
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], errors


def test_live_changes_error_detail_and_retry(start_site: Callable[..., Site], page: object) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    site = start_site()
    site.broken.add("bad-1")
    site.publish("good-1", "bad-1")
    site.run_pillow()

    page.goto(site.url + "/")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "connected")

    # Pillows with lag per partition.
    pillow = page.locator('.pillow[data-pillow="cases"]')
    expect(pillow.locator('tr[data-partition="case[0]"]')).to_be_visible()

    # A change published now appears in the live stream.
    site.publish("live-doc-42")
    live_row = page.locator('#live tbody tr[data-document-id="live-doc-42"]')
    expect(live_row).to_be_visible()
    expect(live_row).to_contain_text("case[0]@2")
    expect(live_row).to_contain_text("sql/db")
    expect(pillow.locator(".lag-total")).to_have_text("lag 1")

    # The error queue shows the failure; details show the traceback.
    error_row = page.locator('#errors tbody tr[data-document-id="bad-1"]')
    expect(error_row).to_contain_text("search index refused bad-1")
    error_row.locator("button.details").click()
    expect(page.locator("#error-detail-trace")).to_contain_text("RuntimeError")
    expect(page.locator("#error-detail-stub")).to_contain_text('"document_id":"bad-1"')

    # Retry while still broken: it stays; fixed: one click resolves it.
    error_row.locator("button.retry").click()
    expect(page.locator("#retry-result")).to_contain_text("0 resolved, 1 still failing")
    expect(error_row).to_be_visible()
    site.broken.clear()
    error_row.locator("button.retry").click()
    expect(page.locator("#retry-result")).to_contain_text("1 resolved")
    expect(error_row).to_have_count(0)
    expect(page.locator("#errors-empty")).to_be_visible()


def test_token_in_url_becomes_a_cookie_for_the_stream(
    start_site: Callable[..., Site], page: object
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    site = start_site(token=TOKEN)
    response = page.goto(site.url + "/")
    assert response is not None and response.status == 401
    page.goto(f"{site.url}/?token={TOKEN}")
    assert "token" not in page.url
    expect(page.locator("#live-status")).to_have_attribute("data-state", "connected")
    site.publish("secured-doc")
    expect(page.locator('#live tbody tr[data-document-id="secured-doc"]')).to_be_visible()


def test_report_data_sources_quarantined_flagged_and_enabled(
    start_site: Callable[..., Site],
    page: object,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from playwright.sync_api import Page, expect

    from tests.apps.report_pillow import make_app, run_with_a_broken_source

    assert isinstance(page, Page)
    monkeypatch.setenv("REPORT_APP_DIR", str(tmp_path))
    monkeypatch.setenv("REPORT_APP_DB", f"sqlite:///{tmp_path / 'reports.db'}")
    app = make_app()
    run_with_a_broken_source(app)
    site = start_site(app=app)

    page.goto(site.url + "/")
    section = page.locator("#reports-section")
    expect(section).to_be_visible()
    row = section.locator('tr[data-data-source="cases-b"]')
    expect(row).to_have_attribute("data-state", "quarantined")
    expect(row.locator(".state-quarantined")).to_have_text("QUARANTINED")
    expect(row).to_contain_text("changefeed reports enable cases-b")
    expect(section.locator('tr[data-data-source="cases-a"]')).to_have_count(0)  # live
    expect(section).to_contain_text("slowest domains (of 2)")

    row.locator("button.enable").click()
    expect(page.locator("#enable-result")).to_have_text(
        "enabled cases-b: it is back-filled, then written again"
    )
    # enabled: marked back-filling (filled by the pillow when it runs), no longer quarantined
    expect(section.locator('tr[data-data-source="cases-b"]')).to_have_attribute(
        "data-state", "back-filling"
    )
