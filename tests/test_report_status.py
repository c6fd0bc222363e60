"""`reports_status` and `enable_data_source` on a report pillow that ran with a broken data
source, on SQLite and PostgreSQL: states from the reports database, usage totals recorded
next to the pillow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from changefeed.app import App
from changefeed.processors.reports import ReportTablesProcessor, SourceState
from changefeed.processors.reports.states import BACKFILLING, LIVE, QUARANTINED
from changefeed.report_status import (
    NotQuarantinedError,
    enable_data_source,
    reports_status,
)
from changefeed.report_usage import ReportUsageRecorder
from tests.apps.report_pillow import PILLOW, make_app, publish, run_with_a_broken_source


@pytest.fixture
def app(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setenv("REPORT_APP_DIR", str(tmp_path))
    monkeypatch.setenv("REPORT_APP_DB", db_url)
    a = make_app()
    yield a
    a.close()


def test_states_and_usage_are_read_from_the_reports_database(app: App) -> None:
    run_with_a_broken_source(app)
    # A pillow built afresh (as the CLI or the dashboard build it) knows it all.
    (status,) = reports_status(app.get_pillow(PILLOW))
    assert status.pillow == PILLOW and status.processor == "reports"
    by_name = {s.name: s for s in status.data_sources}
    assert {n: s.state for n, s in by_name.items()} == {
        "cases-a": LIVE,
        "cases-b": QUARANTINED,
        "cases-c": LIVE,
    }
    assert "report_cases_b" in by_name["cases-b"].reason
    assert by_name["cases-a"].counters.rows_written == 3
    assert by_name["cases-b"].counters.failures == 3
    assert by_name["cases-b"].counters.rows_written == 0
    assert by_name["cases-c"].counters.rows_written == 0
    assert status.counts() == {LIVE: 2, BACKFILLING: 0, QUARANTINED: 1, "removed": 0}
    assert {d for d, _ in status.slowest_domains} == {"a", "b"} and status.domains == 2
    slowest = status.slowest_sources(5)  # c wrote nothing: not among them
    assert {s.name for s in slowest} <= {"cases-a", "cases-b"} and slowest
    assert [s.counters.seconds for s in slowest] == sorted(
        (s.counters.seconds for s in slowest), reverse=True
    )
    as_json = status.to_dict()
    assert {d["name"] for d in as_json["data_sources"]} == set(by_name)
    assert as_json["counts"][QUARANTINED] == 1


def test_a_second_run_adds_to_the_totals(app: App) -> None:
    run_with_a_broken_source(app)
    publish(app, "a9", "a")
    pillow = app.get_pillow(PILLOW)
    with ReportUsageRecorder(pillow, interval=3600):
        pillow.run(forever=False)
    (status,) = reports_status(app.get_pillow(PILLOW))
    assert {s.name: s.counters.rows_written for s in status.data_sources}["cases-a"] == 4


def test_a_selection_shows_its_own_data_sources_only(app: App, db_url: str) -> None:
    run_with_a_broken_source(app)
    only_a = ReportTablesProcessor([], db_url, include=["cases-a"])
    pillow = app.constructed_pillow(PILLOW, ["cases"], [only_a])
    (status,) = reports_status(pillow)
    assert [s.name for s in status.data_sources] == ["cases-a"]
    only_a.close()
    pillow.change_feed.close()


def test_enable_lifts_a_quarantine_only(app: App) -> None:
    run_with_a_broken_source(app)
    pillow = app.get_pillow(PILLOW)
    with pytest.raises(NotQuarantinedError, match="'cases-a' is live, not quarantined"):
        enable_data_source(pillow, "cases-a")
    with pytest.raises(KeyError):
        enable_data_source(pillow, "cases-zz")
    processor = pillow.processors[0]
    assert isinstance(processor, ReportTablesProcessor)
    generation = processor.states.generation()
    enable_data_source(pillow, "cases-b")
    stored: SourceState = processor.states.read()["cases-b"]
    assert stored.state == BACKFILLING and processor.states.generation() == generation + 1
