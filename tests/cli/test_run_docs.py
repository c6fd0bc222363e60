"""``changefeed run PILLOW --docs F``: exactly those documents, through the pillow's fetch,
dedupe, processors and error queue, now; no log read, no checkpoint written. On the embedded
log and on Kafka (each test on a topic of its own: the broker is shared by the session)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from changefeed.app import App
from changefeed.change import Change, ChangeMeta
from changefeed.processors.base import FunctionProcessor, Processor
from changefeed.processors.reports import ReportTableProcessor
from changefeed.stores.sql import SQLDocumentStore
from tests._cli import cf_in_process

APP = "tests.cli.test_run_docs:make_app"
REPORT = {"name": "cases", "table": "report_cases", "columns": [{"name": "owner"}]}
SEEN: list[tuple[str, bool]] = []


def make_app() -> App:
    """Pillow ``docs`` reads one store (``reindex_stores``); ``both`` every registered one."""
    base = Path(os.environ["RUN_DOCS_DIR"])
    topic = os.environ["RUN_DOCS_TOPIC"]
    app = App(os.environ["RUN_DOCS_LOG"], f"sqlite:///{base / 'state.db'}")
    url = f"sqlite:///{base / 'docs.db'}"
    cases = SQLDocumentStore(url, "cases")
    forms = SQLDocumentStore(url, "forms")
    for store in (cases, forms):
        store.create()
        app.document_stores.register(store)

    def seen(change: Change) -> None:
        SEEN.append((change.id, change.deleted))

    def processors() -> list[Processor]:
        return [
            ReportTableProcessor(REPORT, f"sqlite:///{base / 'reports.db'}"),
            FunctionProcessor(seen),
        ]

    app.add_pillow(
        "docs",
        lambda a: a.constructed_pillow("docs", [topic], processors(), reindex_stores=[cases]),
    )
    app.add_pillow("both", lambda a: a.constructed_pillow("both", [topic], processors()))
    return app


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_url: str) -> Iterator[App]:
    monkeypatch.setenv("RUN_DOCS_DIR", str(tmp_path))
    monkeypatch.setenv("RUN_DOCS_LOG", log_url)
    monkeypatch.setenv("RUN_DOCS_TOPIC", f"case-{uuid.uuid4().hex[:10]}")
    SEEN.clear()
    app = make_app()
    app.checkpoints.create()
    app.error_queue.create()
    cases = app.document_stores.get("sql", "cases")
    assert isinstance(cases, SQLDocumentStore)
    for doc_id in ("a", "b", "c"):
        cases.save(doc_id, {"owner": f"owner-{doc_id}"})
    yield app
    app.close()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return cf_in_process(capsys, *args, app=APP)


def rows(tmp_path: Path) -> dict[str, str]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'reports.db'}")
    with engine.connect() as conn:
        out = {r[0]: r[1] for r in conn.execute(sa.text("SELECT doc_id, owner FROM report_cases"))}
    engine.dispose()
    return out


def test_ids_are_fetched_deduplicated_and_processed(
    app: App, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A change of c in the log: --docs does not read the log, so c is not processed.
    app.publish(ChangeMeta("c", "sql", "cases", "case"), topic=os.environ["RUN_DOCS_TOPIC"])
    docs = tmp_path / "ids.txt"
    docs.write_text("a\nb\n\n# c is not wanted\na\n")
    code, _, err = cli(capsys, "run", "docs", "--docs", str(docs))
    assert code == 0 and "docs: 2 documents processed" in err
    assert SEEN == [("b", False), ("a", False)]  # a once, in the place of its latest
    assert rows(tmp_path) == {"a": "owner-a", "b": "owner-b"}
    assert app.checkpoints.get("docs") == {}
    # The log's change is still there for the pillow itself, which reads it from the start.
    pillow = app.get_pillow("docs")
    try:
        assert pillow.run(forever=False) == 1
    finally:
        pillow.change_feed.close()
    assert SEEN[-1] == ("c", False) and "c" in rows(tmp_path)


def test_json_stubs_and_deletions(
    app: App, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ids.txt").write_text("c\n")
    assert cli(capsys, "run", "docs", "--docs", str(tmp_path / "ids.txt"))[0] == 0
    cases = app.document_stores.get("sql", "cases")
    assert isinstance(cases, SQLDocumentStore)
    version = cases.delete("c")
    stubs = tmp_path / "stubs.jsonl"
    stubs.write_text(
        '{"document_id": "c", "data_source_type": "sql", "data_source_name": "cases", '
        f'"is_deletion": true, "version": {version}}}\n'
        '{"document_id": "x", "data_source_type": "sql", "data_source_name": "forms"}\n'
    )
    forms = app.document_stores.get("sql", "forms")
    assert isinstance(forms, SQLDocumentStore)
    forms.save("x", {"owner": "form-owner"})
    SEEN.clear()
    code, _, err = cli(capsys, "run", "both", "--docs", str(stubs))
    assert code == 0, err
    assert SEEN == [("c", True), ("x", False)]
    assert rows(tmp_path) == {"x": "form-owner"}


def test_failures_go_to_the_error_queue(
    app: App, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "ids.txt"
    docs.write_text("a\nnot-there\n")
    code, _, err = cli(capsys, "run", "docs", "--docs", str(docs))
    assert code == 1 and "1 documents processed" not in err and "1 failed" in err
    assert app.error_queue.counts()["pending"] == 1
    assert rows(tmp_path) == {"a": "owner-a"}


def test_bad_input(app: App, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("a\n")
    code, _, err = cli(capsys, "run", "both", "--docs", str(ids))
    assert code == 2 and "2 document stores" in err and "JSON lines of stubs" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"document_id": "a"}\n')
    code, _, err = cli(capsys, "run", "docs", "--docs", str(bad))
    assert code == 2 and f"{bad}:1: not a valid stub" in err
    code, _, err = cli(capsys, "run", "docs", "--docs", str(tmp_path / "missing.txt"))
    assert code == 2 and "cannot read" in err
    code, _, err = cli(capsys, "run", "--all", "--docs", str(ids))
    assert code == 2 and "exactly one pillow" in err
    assert err.count("\n") == 1
    assert SEEN == []
