"""`ReportUsageRecorder`: what a running processor counted reaches the reports database in
deltas, and a database that cannot be written loses nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from changefeed.app import App
from changefeed.pillow import Pillow
from changefeed.processors.reports import ReportTablesProcessor
from changefeed.processors.reports.usage import UsageStore
from changefeed.report_usage import ReportUsageRecorder
from tests.apps.report_pillow import PILLOW, make_app, publish


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setenv("REPORT_APP_DIR", str(tmp_path))
    monkeypatch.setenv("REPORT_APP_DB", f"sqlite:///{tmp_path / 'reports.db'}")
    a = make_app()
    yield a
    a.close()


@dataclass
class Rig:
    """The test app's report pillow, its processor, a recorder (flushed by hand) and the
    usage table it writes to."""

    pillow: Pillow
    processor: ReportTablesProcessor
    recorder: ReportUsageRecorder
    store: UsageStore

    def written(self) -> dict[str, int]:
        usage = self.store.read(PILLOW, "reports")
        return {n: c.rows_written for n, c in usage.sources.items()}


@pytest.fixture
def rig(app: App) -> Rig:
    pillow = app.get_pillow(PILLOW)
    processor = pillow.processors[0]
    assert isinstance(processor, ReportTablesProcessor)
    recorder = ReportUsageRecorder(pillow, interval=3600)
    return Rig(pillow, processor, recorder, UsageStore(processor.engine))


def test_flushes_store_what_changed_since_the_last(app: App, rig: Rig) -> None:
    publish(app, "a1", "a")
    rig.pillow.run(forever=False)
    rig.recorder.flush()
    rig.recorder.flush()  # nothing new: nothing added twice
    assert rig.written() == {"cases-a": 1}
    publish(app, "a2", "a")
    publish(app, "b1", "b")
    rig.pillow.run(forever=False)
    rig.recorder.flush()
    assert rig.written() == {"cases-a": 2, "cases-b": 1}
    assert set(rig.store.read(PILLOW, "reports").domain_seconds) == {"a", "b"}


def test_an_unwritable_database_is_logged_and_caught_up_later(
    app: App, rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    publish(app, "a1", "a")
    rig.pillow.run(forever=False)
    rig.recorder.flush()
    with rig.processor.engine.begin() as conn:  # the table is gone: the next flush fails
        conn.execute(sa.text("DROP TABLE changefeed_report_usage"))
    publish(app, "a2", "a")
    rig.pillow.run(forever=False)
    with caplog.at_level(logging.WARNING, "changefeed.reports"):
        rig.recorder.flush()
    assert "cannot record usage" in caplog.text
    assert "[SQL:" not in caplog.text  # one line, not the statement and its values
    UsageStore(rig.processor.engine).create()
    rig.recorder.flush()
    # a1 went with the dropped table; a2, whose flush failed, was kept for the next one.
    assert rig.written() == {"cases-a": 1}


def test_a_pillow_without_report_tables_starts_no_thread(tmp_path: Path) -> None:
    from changefeed.processors.base import FunctionProcessor

    app = App(f"sqlite:///{tmp_path}/log.db", f"sqlite:///{tmp_path}/state.db")
    pillow = app.constructed_pillow("p", ["t"], FunctionProcessor(lambda c: None, "f"))
    with ReportUsageRecorder(pillow) as recorder:
        assert recorder._thread is None
    app.close()
