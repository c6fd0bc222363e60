"""``changefeed verify``: drift made behind a pillow's back (a deleted report row, edited
Elasticsearch documents, output for a document deleted while the pillow was stopped) is found,
and ``--repair`` fixes it without moving the checkpoint. Document store and report table on
PostgreSQL, the index on the Elasticsearch API (noida-db); the log (which the pillow making
the outputs reads) embedded or Kafka, each test on a topic of its own."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from elasticsearch import Elasticsearch

from changefeed.app import App
from changefeed.change import ChangeMeta
from changefeed.processors.base import NoopProcessor
from changefeed.processors.elastic import ElasticProcessor
from changefeed.processors.reports import ReportTableProcessor
from changefeed.stores.memory import MemoryDocumentStore
from changefeed.stores.sql import SQLDocumentStore
from changefeed.verify import _SortedIds, verify_pillow
from tests._cli import cf_in_process

APP = "tests.test_verify:make_app"
REPORT = {
    "name": "cases",
    "table": "report_cases",
    "filter": {"type": "equals", "property_name": "type", "value": "case"},
    "columns": [{"name": "owner"}, {"name": "age", "type": "integer"}],
}


def make_app() -> App:
    """One pillow: a PostgreSQL report table, an Elasticsearch index and a processor that
    keeps no output (it cannot be verified)."""
    base = Path(os.environ["VERIFY_TEST_DIR"])
    pg, es, alias, log, topic = (
        os.environ[k]
        for k in ("VERIFY_PG", "VERIFY_ES", "VERIFY_ALIAS", "VERIFY_LOG", "VERIFY_TOPIC")
    )
    app = App(log, f"sqlite:///{base / 'state.db'}")
    store = SQLDocumentStore(pg, "case_docs", data_source_name="cases")
    store.create()
    app.document_stores.register(store)
    app.add_pillow(
        "cases",
        lambda a: a.constructed_pillow(
            "cases",
            [topic],
            [
                ReportTableProcessor(REPORT, pg),
                ElasticProcessor(es, alias, transform=lambda d: {"owner": d["owner"]}),
                NoopProcessor(),
            ],
            max_wait=0.05,
        ),
    )
    return app


class World:
    def __init__(self, pg_url: str, es_url: str, alias: str) -> None:
        self.app = make_app()
        self.topic = os.environ["VERIFY_TOPIC"]
        self.store = next(iter(self.app.document_stores))
        assert isinstance(self.store, SQLDocumentStore)
        self.engine = sa.create_engine(pg_url)
        self.es = Elasticsearch(es_url)
        self.alias = alias
        self.app.checkpoints.create()
        self.app.error_queue.create()

    def save(self, doc_id: str, doc: dict[str, Any], publish: bool = True) -> int:
        version = self.store.save(doc_id, doc)
        if publish:
            self.app.publish(
                ChangeMeta(doc_id, "sql", "cases", "case", version=version), topic=self.topic
            )
        return version

    def delete(self, doc_id: str, publish: bool = True) -> None:
        version = self.store.delete(doc_id)
        if publish:
            meta = ChangeMeta(doc_id, "sql", "cases", "case", is_deletion=True, version=version)
            self.app.publish(meta, topic=self.topic)

    def run_pillow(self) -> int:
        """Read the log to its head; returns the changes read."""
        pillow = self.app.get_pillow("cases")
        pillow.bootstrap()
        try:
            return pillow.run(forever=False)
        finally:
            for processor in pillow.processors:
                processor.close()
            pillow.change_feed.close()

    def rows(self) -> dict[str, tuple[str, int]]:
        with self.engine.connect() as conn:
            result = conn.execute(sa.text("SELECT doc_id, owner, age FROM report_cases"))
            return {r[0]: (r[1], r[2]) for r in result}

    def es_doc(self, doc_id: str) -> dict[str, Any] | None:
        found = self.es.options(ignore_status=404).get(index=self.alias, id=doc_id)
        return dict(found) if found.get("found") else None

    def close(self) -> None:
        self.app.close()
        self.engine.dispose()
        self.es.close()


@pytest.fixture
def world(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pg_url: str,
    elasticsearch_url: str,
    es_alias: str,
    log_url: str,
) -> Iterator[World]:
    monkeypatch.setenv("VERIFY_TEST_DIR", str(tmp_path))
    monkeypatch.setenv("VERIFY_LOG", log_url)
    monkeypatch.setenv("VERIFY_TOPIC", f"case-{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("VERIFY_PG", pg_url)
    monkeypatch.setenv("VERIFY_ES", elasticsearch_url)
    monkeypatch.setenv("VERIFY_ALIAS", es_alias)
    w = World(pg_url, elasticsearch_url, es_alias)
    for i in range(12):
        w.save(f"c{i:02d}", {"type": "case" if i != 11 else "other", "owner": f"o{i}", "age": i})
    assert w.run_pillow() == 12
    yield w
    w.close()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return cf_in_process(capsys, *args, app=APP)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["processor"]: p for p in report["processors"]}


def test_in_sync_is_exit_0(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "verify", "cases")
    assert code == 0, out
    assert "12 documents checked" in out and "no drift" in out
    assert "NoopProcessor: cannot be verified" in out


def test_drift_behind_the_pillows_back_is_found_and_repaired(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = world.app.checkpoints.get("cases")
    assert sum(checkpoint.values()) == 12  # the pillow read the log's 12 changes
    # a report row deleted by hand
    with world.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM report_cases WHERE doc_id = 'c01'"))
    # a change that never reached the log: the store is at version 2, the index at 1
    world.save("c02", {"type": "case", "owner": "new-owner", "age": 2}, publish=False)
    # an index document edited by hand (an unversioned write bumps its version past the store's)
    world.es.index(index=world.alias, id="c03", document={"owner": "vandal"}, refresh=True)
    # an index document deleted by hand
    world.es.delete(index=world.alias, id="c05", refresh=True)
    # a document deleted while the pillow was stopped (its change is gone from the log)
    world.delete("c04", publish=False)

    code, out, err = cli(capsys, "verify", "cases", "--json")
    assert code == 1, (out, err)
    report = json.loads(out)
    procs = by_name(report)
    rep, es = procs["report:cases"], procs[f"elastic:{world.alias}"]
    assert (rep["missing"], rep["extra"], rep["stale"], rep["different"]) == (1, 1, 0, 1)
    assert rep["examples"] == {"missing": ["c01"], "extra": ["c04"], "different": ["c02"]}
    assert (es["missing"], es["extra"], es["stale"], es["different"]) == (1, 1, 1, 1)
    assert es["examples"] == {
        "missing": ["c05"],
        "extra": ["c04"],
        "stale": ["c02"],
        "different": ["c03"],
    }
    assert procs["NoopProcessor"]["verifiable"] is False
    assert report["unrepaired"] == 7

    code, out, err = cli(capsys, "verify", "cases", "--repair")
    assert code == 0, (out, err)
    assert "repaired 3" in out and "repaired 4" in out
    assert "repaired: all 7 drifted documents now match" in out

    rows = world.rows()
    assert rows["c01"] == ("o1", 1) and rows["c02"] == ("new-owner", 2) and "c04" not in rows
    c02 = world.es_doc("c02")
    assert c02 is not None and c02["_version"] == 2 and c02["_source"] == {"owner": "new-owner"}
    c03 = world.es_doc("c03")
    assert c03 is not None and c03["_source"] == {"owner": "o3"}
    assert world.es_doc("c04") is None and world.es_doc("c05") is not None
    # the repair went around the log: no checkpoint moved, nothing queued
    assert world.app.checkpoints.get("cases") == checkpoint
    assert world.app.error_queue.counts() == {"pending": 0, "parked": 0}

    code, out, _ = cli(capsys, "verify", "cases")
    assert code == 0 and "no drift" in out
    # later changes still apply: the repaired version is the store's, not a higher one
    world.save("c03", {"type": "case", "owner": "after", "age": 3})
    assert world.run_pillow() == 1
    c03 = world.es_doc("c03")
    assert c03 is not None and c03["_source"] == {"owner": "after"}


def test_filtered_out_document_with_rows_is_extra(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    # c11 is not a case: the filter gives it no rows; a row inserted by hand is extra
    with world.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO report_cases (doc_id, row_num, owner, age) VALUES ('c11', 0, 'x', 1)"
            )
        )
    code, out, _ = cli(capsys, "verify", "cases", "--json")
    assert code == 1
    assert by_name(json.loads(out))["report:cases"]["examples"] == {"extra": ["c11"]}
    code, _, _ = cli(capsys, "verify", "cases", "--repair")
    assert code == 0 and "c11" not in world.rows()


def test_sample_checks_that_many(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    with world.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM report_cases"))
    code, out, _ = cli(capsys, "verify", "cases", "--sample", "4", "--json")
    report = json.loads(out)
    assert code == 1 and report["documents"] == 4 and report["sample"] == 4
    cases = by_name(report)["report:cases"]
    # c11 is no case (no rows expected): 3 or 4 of the sampled documents miss their row
    assert cases["checked"] == 4 and cases["missing"] in (3, 4)


def test_bad_input_is_one_line_exit_2(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "verify", "nope")
    assert code == 2 and err.count("\n") == 1 and "unknown pillow 'nope'" in err
    code, _, err = cli(capsys, "verify", "cases", "--sample", "3", "--all")
    assert code == 2 and "exclude each other" in err


def test_api_reports_in_chunks(world: World) -> None:
    """Small chunks give the same answer (the comparison is chunk by chunk)."""
    world.delete("c00", publish=False)
    pillow = world.app.get_pillow("cases")
    try:
        result = verify_pillow(pillow, chunk_size=3)
    finally:
        pillow.change_feed.close()
        for processor in pillow.processors:
            processor.close()
    reports = {r.processor: r for r in result.processors}
    assert result.documents == 11
    assert reports["report:cases"].extra == 1 and reports[f"elastic:{world.alias}"].extra == 1
    assert reports["report:cases"].checked == 12


def test_live_id_walk_answers_only_what_the_listings_show() -> None:
    """The output scan skips ids the stores list (a merge walk, no set of every id); an id
    asked out of order is answered "unknown" so the caller looks it up."""
    a, b = MemoryDocumentStore("a"), MemoryDocumentStore("b")
    for i in (1, 3, 5):
        a.save(f"d{i}", {})
    for i in (2, 4):
        b.save(f"d{i}", {})
    b.save("d6", {})
    b.delete("d6")
    live = _SortedIds([a, b])
    assert [live.contains(f"d{i}") for i in (0, 1, 2, 4, 6)] == [False, True, True, True, False]
    live = _SortedIds([a])
    assert live.contains("d3") and not live.contains("d1") and not live.contains("d5")
