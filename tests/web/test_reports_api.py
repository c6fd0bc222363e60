"""The dashboard's report data sources: states, time per data source and domain, and the
enable action with the same checks as retry, against a real uvicorn server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from changefeed.pillow import Pillow
from changefeed.processors.reports import ReportTablesProcessor
from changefeed.processors.reports.states import BACKFILLING, LIVE, QUARANTINED
from tests.apps.report_pillow import PILLOW, make_app, run_with_a_broken_source
from tests.web.conftest import Site


@pytest.fixture
def ran(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch, start_site: Callable[..., Site]
) -> tuple[Site, Pillow]:
    """The dashboard of a report pillow that ran with a broken data source, and that
    pillow (its processor holds ``cases-b`` quarantined, as a running one would)."""
    monkeypatch.setenv("REPORT_APP_DIR", str(tmp_path))
    monkeypatch.setenv("REPORT_APP_DB", db_url)
    app = make_app()
    pillow = run_with_a_broken_source(app)
    return start_site(app=app), pillow


@pytest.fixture
def site(ran: tuple[Site, Pillow]) -> Site:
    return ran[0]


def test_api_reports_data_sources_and_the_slowest(site: Site) -> None:
    with httpx.Client(base_url=site.url, timeout=10) as client:
        data = client.get("/api/reports").json()
    assert data["errors"] == {}
    (report,) = data["reports"]
    assert report["pillow"] == PILLOW and report["processor"] == "reports"
    assert report["counts"][QUARANTINED] == 1 and report["counts"][LIVE] == 2
    sources = {s["name"]: s for s in report["data_sources"]}
    assert sources["cases-b"]["state"] == QUARANTINED
    assert "report_cases_b" in sources["cases-b"]["reason"]
    assert sources["cases-a"]["rows_written"] == 3 and sources["cases-a"]["seconds"] > 0
    assert sources["cases-b"]["failures"] == 3
    assert [d["domain"] for d in report["slowest_domains"]] in (["a", "b"], ["b", "a"])
    assert report["domains"] == 2


def test_enable_is_a_same_origin_json_request(ran: tuple[Site, Pillow]) -> None:
    site, pillow = ran
    body = {"pillow": PILLOW, "data_source": "cases-b"}
    same = {"Origin": site.url}
    with httpx.Client(base_url=site.url, timeout=10) as client:
        assert client.post("/api/reports/enable", json=body).status_code == 403  # no Origin
        evil = {"Origin": "http://evil.example"}
        assert client.post("/api/reports/enable", json=body, headers=evil).status_code == 403
        form = client.post("/api/reports/enable", data=body, headers=same)
        assert form.status_code == 415
        bad = client.post("/api/reports/enable", json=["cases-b"], headers=same)
        assert bad.status_code == 400
        missing = client.post("/api/reports/enable", json={"pillow": PILLOW}, headers=same)
        assert missing.status_code == 400
        other = {"pillow": "nope", "data_source": "cases-b"}
        assert client.post("/api/reports/enable", json=other, headers=same).status_code == 404
        unknown = {"pillow": PILLOW, "data_source": "cases-zz"}
        assert client.post("/api/reports/enable", json=unknown, headers=same).status_code == 404
        live = {"pillow": PILLOW, "data_source": "cases-a"}
        refused = client.post("/api/reports/enable", json=live, headers=same)
        assert refused.status_code == 409 and "not quarantined" in refused.json()["error"]
        done = client.post("/api/reports/enable", json=body, headers=same)
        assert done.status_code == 200 and done.json() == {"enabled": "cases-b", "pillow": PILLOW}
        assert client.post("/api/reports/enable", json=body, headers=same).status_code == 409
    # As `changefeed reports enable` leaves it: back-filling in the database and a reload
    # requested, which the running processor acts on at its next poll: it back-fills b.
    processor = pillow.processors[0]
    assert isinstance(processor, ReportTablesProcessor)
    assert processor.states.read()["cases-b"].state == BACKFILLING
    processor.refresh()  # what its next poll does (the test app polls hourly)
    states = {s.name: s.state for s in processor.data_source_states()}
    assert states["cases-b"] == BACKFILLING


def test_a_pillow_without_report_tables_has_none(start_site: Callable[..., Site]) -> None:
    site = start_site()
    with httpx.Client(base_url=site.url, timeout=10) as client:
        assert client.get("/api/reports").json() == {"reports": [], "errors": {}}


def test_an_unreachable_reports_database_is_reported_per_pillow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_site: Callable[..., Site]
) -> None:
    monkeypatch.setenv("REPORT_APP_DIR", str(tmp_path))
    monkeypatch.setenv("REPORT_APP_DB", "postgresql+psycopg://nobody:pw@127.0.0.1:1/reports")
    site = start_site(app=make_app())
    with httpx.Client(base_url=site.url, timeout=10) as client:
        data = client.get("/api/reports").json()
    assert data["reports"] == []
    assert "OperationalError" in data["errors"][PILLOW] and "pw@" not in data["errors"][PILLOW]
