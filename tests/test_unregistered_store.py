"""Stubs naming a document store no one registered (issue 20 item 7): one error line per batch,
not one per change; the changes are queued (nothing is lost) and not counted as processed;
``changefeed status`` warns; once the store is registered, a retry processes them."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from changefeed.app import App
from changefeed.change import ChangeMeta
from changefeed.errors import PENDING
from changefeed.failures import FETCH
from changefeed.processors.base import FunctionProcessor
from changefeed.status import pillow_status
from changefeed.stores.sql import SQLDocumentStore
from tests._cli import cf_in_process

APP = "tests.test_unregistered_store:make_app"
SEEN: list[str] = []


def make_app() -> App:
    """Pillow ``cases`` with store sql/cases; sql/forms only when ``UNREGISTERED_FORMS`` is
    set (the operator registered it)."""
    base = Path(os.environ["UNREGISTERED_DIR"])
    app = App(f"sqlite:///{base / 'log.db'}", f"sqlite:///{base / 'state.db'}")
    names = ["cases", "forms"] if os.environ.get("UNREGISTERED_FORMS") else ["cases"]
    for name in names:
        store = SQLDocumentStore(f"sqlite:///{base / 'docs.db'}", name)
        store.create()
        app.document_stores.register(store)
    app.add_pillow(
        "cases",
        lambda a: a.constructed_pillow(
            "cases", ["case"], FunctionProcessor(lambda c: SEEN.append(c.id), "seen")
        ),
    )
    return app


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setenv("UNREGISTERED_DIR", str(tmp_path))
    monkeypatch.delenv("UNREGISTERED_FORMS", raising=False)
    SEEN.clear()
    app = make_app()
    app.backend.admin().create_topic("case", 1)
    cases = app.document_stores.get("sql", "cases")
    assert isinstance(cases, SQLDocumentStore)
    cases.save("c1", {"owner": "ann"})
    app.publish(ChangeMeta("c1", "sql", "cases", "case"), topic="case")
    forms = SQLDocumentStore(f"sqlite:///{tmp_path / 'docs.db'}", "forms")
    forms.create()
    for i in range(3):
        forms.save(f"f{i}", {"n": i})  # in a database the app does not know (yet)
        app.publish(ChangeMeta(f"f{i}", "sql", "forms", "form"), topic="case")
    forms.close()
    yield app
    app.close()


def test_one_error_line_per_batch_and_the_changes_queued_not_processed(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    pillow = app.get_pillow("cases")
    with caplog.at_level(logging.INFO, logger="changefeed"):
        assert pillow.run(forever=False) == 4
    pillow.change_feed.close()
    about_forms = [r for r in caplog.records if "forms" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in about_forms] == [
        (
            logging.ERROR,
            "pillow cases: no document store for data_source_type='sql' "
            "data_source_name='forms'; 3 changes queued until it is registered",
        )
    ]
    assert SEEN == ["c1"]
    assert pillow.health().processed == 1
    entries = app.error_queue.list()
    assert sorted(e.document_id for e in entries) == ["f0", "f1", "f2"]
    assert {(e.processor, e.status) for e in entries} == {(FETCH, PENDING)}
    assert sum(app.checkpoints.get("cases").values()) == 4  # the log moved on past them


def test_status_warns_and_a_retry_once_registered_processes_them(
    app: App, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pillow = app.get_pillow("cases")
    pillow.run(forever=False)
    (note,) = pillow_status(app, pillow).notes
    assert note == (
        "3 changes wait in the error queue: no document store for data_source_type='sql' "
        "data_source_name='forms'; once it is registered: changefeed errors retry --pillow cases"
    )
    code, out, err = cf_in_process(capsys, "status", app=APP)
    assert code == 0, err
    assert "data_source_name='forms'" in out and "errors retry --pillow cases" in out

    # Retried before the store is registered: still queued, still retryable.
    code, out, _ = cf_in_process(capsys, "errors", "retry", "--pillow", "cases", app=APP)
    assert code == 0 and "cases: 0 succeeded, 3 failed again" in out
    assert {e.status for e in app.error_queue.list()} == {PENDING}

    monkeypatch.setenv("UNREGISTERED_FORMS", "1")
    code, out, _ = cf_in_process(capsys, "errors", "retry", "--pillow", "cases", app=APP)
    assert code == 0 and "cases: 3 succeeded, 0 failed again" in out
    assert sorted(SEEN[1:]) == ["f0", "f1", "f2"]
    assert app.error_queue.list() == [] and pillow_status(app, pillow).notes == []
    pillow.change_feed.close()
