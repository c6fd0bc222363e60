"""``changefeed status`` of a report pillow: each data source's state (a quarantined one
among them), read from the reports database by the CLI's own process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._cli import cf_in_process
from tests.apps.report_pillow import PILLOW, make_app, run_with_a_broken_source

APP = "tests.apps.report_pillow:make_app"


@pytest.fixture
def ran(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPORT_APP_DIR", str(tmp_path))
    monkeypatch.setenv("REPORT_APP_DB", db_url)
    app = make_app()
    run_with_a_broken_source(app)
    app.close()


@pytest.mark.usefixtures("ran")
def test_status_json_has_every_data_source(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cf_in_process(capsys, "status", "--json", app=APP)
    assert code == 0
    (pillow,) = json.loads(out)
    assert pillow["pillow"] == PILLOW and pillow["lag"] == 0
    (report,) = pillow["reports"]
    assert report["counts"] == {"live": 2, "back-filling": 0, "quarantined": 1, "removed": 0}
    sources = {s["name"]: s for s in report["data_sources"]}
    assert sources["cases-b"]["state"] == "quarantined"
    assert "report_cases_b" in sources["cases-b"]["reason"]
    assert sources["cases-b"]["failures"] == 3
    assert sources["cases-a"]["rows_written"] == 3
    assert {d["domain"] for d in report["slowest_domains"]} == {"a", "b"}


@pytest.mark.usefixtures("ran")
def test_status_human_summarises(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cf_in_process(capsys, "status", app=APP)
    assert code == 0
    assert "report data sources (reports): 3: 2 live, 1 quarantined" in out
    assert "QUARANTINED cases-b (table report_cases_b):" in out
    assert "changefeed reports enable cases-b" in out
    assert "cases-a (table" not in out  # live ones are counted, not listed
    assert "slowest domains: " in out and "(of 2 domains)" in out


def test_an_unreachable_reports_database_is_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REPORT_APP_DIR", str(tmp_path))
    monkeypatch.setenv("REPORT_APP_DB", "postgresql+psycopg://nobody:pw@127.0.0.1:1/reports")
    code, out, err = cf_in_process(capsys, "status", app=APP)
    assert code == 0 and "Traceback" not in err  # the pillow's lag is still shown
    assert "reports: lag 0" in out
    (note,) = [line for line in out.splitlines() if "report data sources unavailable" in line]
    assert "OperationalError" in note and "pw@" not in out
    code, out, _ = cf_in_process(capsys, "status", "--json", app=APP)
    (pillow,) = json.loads(out)
    assert "OperationalError" in pillow["reports_error"] and "reports" not in pillow
