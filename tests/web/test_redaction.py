"""No credential reaches a dashboard field (issue 12): error-queue entries, their detail,
the status the monitor samples, the live stream and the log/state URLs; orphaned entries
are reported. Everything else in the JSON is exact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from changefeed.change import Change, ChangeMeta
from changefeed.errors import ErrorQueue
from changefeed.web import live, monitor
from tests.web.conftest import Site, make_app

SECRET = "s3cr3t-pw"
URL = f"http://elastic:{SECRET}@127.0.0.1:9200/cases"


def test_api_fields_never_carry_a_password(start_site: Callable[..., Site]) -> None:
    site = start_site()
    site.broken.add(URL)
    site.publish(URL, "good-1")
    site.run_pillow()
    ErrorQueue(site.app.state_url).add(
        "retired", Change("case", 0, 9, ChangeMeta("x", "sql", "db")), "p", ValueError("gone")
    )
    # What the dashboard says of the log and state (a Kafka URL may carry a password): the
    # app is already open, so only what is shown changes.
    site.app.log_url = f"kafka://ops:{SECRET}@broker:9092"
    with httpx.Client(base_url=site.url, timeout=10) as client:
        pillows = client.get("/api/pillows")
        errors = client.get("/api/errors")
        (entry,) = [e for e in errors.json()["errors"] if e["pillow"] == "cases"]
        detail = client.get(f"/api/errors/{entry['id']}")
    for response in (pillows, errors, detail):
        assert SECRET not in response.text, response.text
    shown = "http://***@127.0.0.1:9200/cases"
    assert pillows.json()["log"] == "kafka://***@broker:9092"
    assert pillows.json()["state"] == site.app.state_url  # no credential: exact
    assert entry["message"] == f"search index refused {shown}"
    assert entry["document_id"] == shown
    assert f"RuntimeError: search index refused {shown}" in detail.json()["traceback"]
    assert shown in detail.json()["stub"]
    assert errors.json()["orphaned"] == {"retired": 1}
    assert errors.json()["counts"]["cases"]["pending"] == 1


def test_monitor_error_is_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(tmp_path, set())

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError(f"cannot connect to postgresql://cf:{SECRET}@db:5432/state")

    monkeypatch.setattr(monitor, "pillow_status", unreachable)
    try:
        watcher = monitor.PillowMonitor(app)
        watcher.sample()
        (entry,) = watcher.snapshot()
    finally:
        app.close()
    assert entry["error"] == "ConnectionError: cannot connect to postgresql://***@db:5432/state"


def test_live_event_is_redacted_and_otherwise_exact() -> None:
    meta = ChangeMeta(URL, "sql", "db", document_type="case")
    event = live.change_event(Change("case", 1, 7, meta))
    assert SECRET not in repr(event)
    assert event["document_id"] == "http://***@127.0.0.1:9200/cases"
    plain = live.change_event(Change("case", 1, 8, ChangeMeta("doc-1", "sql", "db")))
    assert plain["document_id"] == "doc-1" and plain["offset"] == 8
    assert plain["stub"]["data_source_name"] == "db"
