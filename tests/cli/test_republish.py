"""``changefeed republish``: fresh stubs from a document store, on the embedded log and on
Kafka (noida-db), read back from the log."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from changefeed.app import App
from changefeed.backends import open_backend
from changefeed.change import ChangeMeta
from changefeed.stores.sql import SQLDocumentStore
from tests._cli import cf_in_process

APP = "tests.cli.test_republish:make_app"


def make_app() -> App:
    """Two stores named ``cases`` (types ``sql`` and ``legacy``) and one ``forms``."""
    base = Path(os.environ["REPUBLISH_TEST_DIR"])
    app = App(os.environ["REPUBLISH_TEST_LOG"], f"sqlite:///{base / 'state.db'}")
    url = f"sqlite:///{base / 'docs.db'}"
    for table, kind, name in (
        ("cases", "sql", "cases"),
        ("old", "legacy", "cases"),
        ("forms", "sql", "forms"),
    ):
        store = SQLDocumentStore(url, table, data_source_name=name, data_source_type=kind)
        store.create()
        app.document_stores.register(store)
    return app


@pytest.fixture
def app(tmp_path: Path, log_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setenv("REPUBLISH_TEST_DIR", str(tmp_path))
    monkeypatch.setenv("REPUBLISH_TEST_LOG", log_url)
    app = make_app()
    cases = app.document_stores.get("sql", "cases")
    assert isinstance(cases, SQLDocumentStore)
    cases.save("a", {"doc_type": "case", "domain": "north", "n": 1})
    cases.save("a", {"doc_type": "case", "domain": "north", "n": 2})
    cases.save("b", {"doc_type": "case", "n": 1})
    cases.save("c", {"doc_type": "case", "n": 1})
    cases.delete("c")
    forms = app.document_stores.get("sql", "forms")
    assert isinstance(forms, SQLDocumentStore)
    for i in range(2500):
        forms.save(f"f{i:04d}", {"doc_type": "form"})
    yield app
    app.close()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return cf_in_process(capsys, *args, app=APP)


def log_contents(log_url: str, *topics: str) -> dict[str, list[ChangeMeta]]:
    backend = open_backend(log_url)
    out: dict[str, list[ChangeMeta]] = {}
    try:
        for topic in topics:
            feed = backend.change_feed([topic], idle_timeout=0.2)
            since = {tp: 0 for tp in feed.latest_offsets()}
            out[topic] = [c.metadata for c in feed.iter_changes(since) if c and c.metadata]
            feed.close()
    finally:
        backend.close()
    return out


def test_ids_publish_fresh_stubs_and_deletions_unknown_exit_2(
    app: App, log_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(
        capsys, "republish", "--store", "sql/cases", "--id", "a", "--id", "c", "--id", "zz"
    )
    assert code == 2
    assert "published 2 stubs from sql/cases (1 deletion) to case (1), meta (1)" in out
    assert "1 deletion went to meta" in out
    assert err.strip().splitlines()[-1] == "changefeed: error: 1 id unknown to the store: zz"
    found = log_contents(log_url, "case", "meta")
    (a,) = found["case"]
    assert (a.document_id, a.version, a.domain, a.document_type) == ("a", 2, "north", "case")
    assert (a.data_source_type, a.data_source_name, a.is_deletion) == ("sql", "cases", False)
    (c,) = found["meta"]  # a deleted document has no type: the router's default topic
    assert c.document_id == "c" and c.is_deletion


def test_ids_file_and_topic(
    app: App, log_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("# to replay\nb\n\na\nb\n")
    code, out, _ = cli(
        capsys, "republish", "--store", "sql/cases", "--ids-file", str(ids), "--topic", "replay"
    )
    assert code == 0 and "published 2 stubs" in out and "to replay" in out
    assert [m.document_id for m in log_contents(log_url, "replay")["replay"]] == ["b", "a"]


def test_all_streams_the_store(app: App, log_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "republish", "--store", "forms", "--all")
    assert code == 0 and "published 2500 stubs from sql/forms (0 deletions) to form (2500)" in out
    forms = log_contents(log_url, "form")["form"]
    assert len(forms) == 2500 and {m.version for m in forms} == {1}


def test_bad_input(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "republish", "--store", "cases", "--all")
    assert code == 2 and "ambiguous" in err and "legacy/cases" in err
    code, _, err = cli(capsys, "republish", "--store", "nope", "--all")
    assert code == 2 and "unknown document store 'nope'" in err
    code, _, err = cli(capsys, "republish", "--store", "forms", "--all", "--id", "x")
    assert code == 2 and "exactly one of" in err
    code, _, err = cli(capsys, "republish", "--store", "forms", "--all", "--topic", "bad topic")
    assert code == 2 and "invalid topic name" in err
    for e in (err,):
        assert e.count("\n") == 1
