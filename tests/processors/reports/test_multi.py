"""ReportTablesProcessor against real databases (SQLite and PostgreSQL): routing, one
transaction per batch, isolation, quarantine, live refresh of the data sources."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from changefeed.change import Change, ChangeMeta
from changefeed.processors.reports import (
    DataSourceConfig,
    ReportTablesProcessor,
    SQLDataSourceProvider,
    StateStore,
    build_table,
)
from changefeed.processors.reports.states import BACKFILLING, LIVE, QUARANTINED, REMOVED


def source(domain: str, **extra: Any) -> dict[str, Any]:
    """A data source of one domain's cases, like CommCare HQ's."""
    return {
        "name": f"cases-{domain}",
        "table": f"report_cases_{domain}",
        "filter": {
            "type": "and",
            "filters": [
                {"type": "equals", "property_name": "domain", "value": domain},
                {"type": "equals", "property_name": "doc_type", "value": "case"},
            ],
        },
        "columns": [{"name": "owner"}, {"name": "age", "type": "integer"}],
        **extra,
    }


def change(
    doc_id: str, doc: dict[str, Any] | None, domain: str | None = None, offset: int = 0
) -> Change:
    meta = ChangeMeta(
        doc_id,
        "memory",
        "docs",
        is_deletion=doc is None,
        domain=domain or (doc or {}).get("domain"),
        document_type="case",
    )
    c = Change("case", 0, offset, meta)
    c.set_document(doc)
    return c


def case(domain: str, owner: str = "ann", age: Any = 30) -> dict[str, Any]:
    return {"domain": domain, "doc_type": "case", "owner": owner, "age": age}


def table_rows(engine: sa.Engine, table: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(sa.text(f"SELECT doc_id, owner, age FROM {table} ORDER BY 1"))
        ]


def drop(engine: sa.Engine, *tables: str) -> None:
    """Drop tables behind the processor's back."""
    with engine.begin() as conn:
        for table in tables:
            conn.execute(sa.text(f"DROP TABLE {table}"))


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    from changefeed.db import make_engine

    eng = make_engine(db_url)
    yield eng
    eng.dispose()


DOMAINS = ["a", "b", "c"]


@pytest.fixture
def proc(engine: sa.Engine) -> Iterator[ReportTablesProcessor]:
    p = ReportTablesProcessor([source(d) for d in DOMAINS], engine, poll_interval=3600)
    p.bootstrap()
    yield p
    p.close()


def test_documents_reach_exactly_the_matching_data_sources(
    proc: ReportTablesProcessor, engine: sa.Engine
) -> None:
    failures = proc.process_changes(
        [
            change("1", case("a", "ann")),
            change("2", case("b", "bob")),
            change("3", {**case("a"), "doc_type": "form"}),  # a's domain, not a case
            change("4", case("zz")),  # no data source
        ]
    )
    assert failures == []
    assert table_rows(engine, "report_cases_a") == [("1", "ann", 30)]
    assert table_rows(engine, "report_cases_b") == [("2", "bob", 30)]
    assert table_rows(engine, "report_cases_c") == []
    stats = proc.stats()
    assert stats.sources["cases-a"].rows_written == 1
    assert stats.sources["cases-c"].rows_written == 0
    assert set(stats.domain_seconds) == {"a", "b"}  # zz reached no data source


def test_deleted_and_no_longer_matching_documents_lose_their_rows(
    proc: ReportTablesProcessor, engine: sa.Engine
) -> None:
    proc.process_changes([change("1", case("a")), change("2", case("b")), change("3", case("c"))])
    proc.process_changes(
        [
            change("1", None, domain="a"),  # deleted: routed by the stub's domain
            change("2", {**case("b"), "doc_type": "closed"}),  # still b's, no longer matching
            change("3", None),  # deleted, no domain in the stub: every table
        ]
    )
    for domain in DOMAINS:
        assert table_rows(engine, f"report_cases_{domain}") == []


def test_one_transaction_per_batch_and_none_for_untouched_tables(
    proc: ReportTablesProcessor, engine: sa.Engine
) -> None:
    proc.process_changes([change("0", case("a"))])  # warm up: staging, prepared statements
    begins: list[object] = []
    statements: list[str] = []
    event.listen(engine, "begin", lambda conn: begins.append(conn))
    event.listen(
        engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *args: statements.append(statement),
    )
    proc.process_changes([change("1", case("a")), change("2", case("b"))])
    assert len(begins) == 1
    assert not [s for s in statements if "report_cases_c" in s]
    begins.clear()
    proc.process_changes([change("3", case("nobody"))])  # no table touched: no transaction
    assert begins == []
    assert table_rows(engine, "report_cases_a") == [("0", "ann", 30), ("1", "ann", 30)]


def test_a_broken_table_fails_alone_then_is_quarantined_until_enabled(
    proc: ReportTablesProcessor, engine: sa.Engine
) -> None:
    drop(engine, "report_cases_b")
    for batch in range(3):
        failures = proc.process_changes(
            [change(f"a{batch}", case("a")), change(f"b{batch}", case("b"))]
        )
        assert [(f.change.id, f.where) for f in failures] == [(f"b{batch}", "report:cases-b")]
        assert failures[0].retryable
    assert [r[0] for r in table_rows(engine, "report_cases_a")] == ["a0", "a1", "a2"]
    states = {s.name: s for s in proc.data_source_states()}
    assert states["cases-b"].state == QUARANTINED
    assert "report_cases_b" in states["cases-b"].reason
    assert proc.stats().sources["cases-b"].failures == 3
    # Quarantined: skipped, no failure; the state is in the database for the CLI.
    assert proc.process_changes([change("b9", case("b"))]) == []
    assert StateStore(engine).read()["cases-b"].state == QUARANTINED
    # enable (from another process): the table comes back and is to be back-filled.
    other = StateStore(engine)
    other.set_state("cases-b", LIVE)
    other.request_reload()
    proc.refresh()
    assert {s.name: s.state for s in proc.data_source_states()}["cases-b"] == BACKFILLING
    member = proc.pending_backfill()
    assert member is not None and member.target.name == "cases-b"
    assert proc.pending_backfill() is None  # claimed
    proc.backfill_done(member, finished=True)
    assert StateStore(engine).read()["cases-b"].state == LIVE
    # `changefeed reports rebuild cases-a` (from another process): back-filled again
    other.set_state("cases-a", BACKFILLING)
    other.request_reload()
    proc.refresh()
    again = proc.pending_backfill()
    assert again is not None and again.target.name == "cases-a"


def test_a_value_the_column_cannot_hold_fails_that_data_source_only(
    engine: sa.Engine,
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite stores any value in any column")
    p = ReportTablesProcessor([source(d) for d in DOMAINS], engine, poll_interval=3600)
    p.bootstrap()
    with engine.begin() as conn:  # the column narrowed behind the processor's back
        conn.execute(sa.text("ALTER TABLE report_cases_c ALTER COLUMN age TYPE smallint"))
    failures = p.process_changes(
        [change("1", case("a", age=10**9)), change("2", case("c", age=10**9))]
    )
    assert [(f.change.id, f.where) for f in failures] == [("2", "report:cases-c")]
    assert table_rows(engine, "report_cases_a") == [("1", "ann", 10**9)]
    p.close()


def test_multi_row_data_sources_shrink_with_their_documents(engine: sa.Engine) -> None:
    visits = {
        "name": "visits",
        "table": "report_visits",
        "filter": {"type": "in", "property_name": "domain", "values": ["a", "b"]},
        "base_item_expression": {"type": "property_name", "property_name": "visits"},
        "columns": [{"name": "owner"}, {"name": "age", "type": "integer"}],
    }
    p = ReportTablesProcessor([visits, source("a")], engine, poll_interval=3600)
    p.bootstrap()
    two = [{"owner": "x", "age": 1}, {"owner": "y", "age": 2}]
    assert p.process_changes([change("1", {**case("b"), "visits": two})]) == []
    assert p.process_changes([change("1", {**case("b"), "visits": two[:1]})]) == []
    assert table_rows(engine, "report_visits") == [("1", "x", 1)]
    assert table_rows(engine, "report_cases_a") == []
    p.close()


def test_retrying_an_entry_writes_its_data_source_only(
    proc: ReportTablesProcessor, engine: sa.Engine
) -> None:
    retry = proc.for_failure("report:cases-b")
    assert retry is not None and retry.name == "report:cases-b"
    assert proc.for_failure("report:nothing") is None
    # A document of domain a, retried for b: b's filter decides (no row), a is not written.
    assert retry.process_change(change("1", case("b"))) is None
    assert table_rows(engine, "report_cases_b") == [("1", "ann", 30)]
    assert table_rows(engine, "report_cases_a") == []


def test_live_add_change_and_remove(tmp_path: Path, engine: sa.Engine) -> None:
    provider = SQLDataSourceProvider(engine)
    provider.add(source("a"))
    p = ReportTablesProcessor(provider, engine, poll_interval=0, refresh_interval=3600)
    p.bootstrap()
    assert {s.name: s.state for s in p.data_source_states()} == {"cases-a": LIVE}
    provider.add(source("b"))
    StateStore(engine).request_reload()
    p.process_changes([change("1", case("b"))])  # polls, sees the reload, adds b
    states = {s.name: s.state for s in p.data_source_states()}
    assert states == {"cases-a": LIVE, "cases-b": BACKFILLING}
    assert table_rows(engine, "report_cases_b") == [("1", "ann", 30)]
    # a changed definition: rebuilt (written with the old one until the swap)
    changed = source("a")
    changed["columns"].append({"name": "closed", "type": "boolean"})
    provider.add(changed)
    assert provider.remove("cases-b")
    assert not provider.remove("cases-b")
    StateStore(engine).request_reload()
    p.poll()
    states = {s.name: s.state for s in p.data_source_states()}
    assert states == {"cases-a": BACKFILLING, "cases-b": REMOVED}
    p.process_changes([change("2", case("a")), change("3", case("b"))])
    assert table_rows(engine, "report_cases_b") == [("1", "ann", 30)]  # kept, not written
    assert [r[0] for r in table_rows(engine, "report_cases_a")] == ["2"]
    p.close()


def test_drop_removed(engine: sa.Engine) -> None:
    provider = SQLDataSourceProvider(engine)
    provider.add(source("a"))
    p = ReportTablesProcessor(provider, engine, poll_interval=3600, drop_removed=True)
    p.bootstrap()
    provider.remove("cases-a")
    assert p.refresh() == ["cases-a: removed, table report_cases_a dropped"]
    assert not sa.inspect(engine).has_table("report_cases_a")
    p.close()


def test_every_column_type_is_written_as_the_single_table_processor_writes_it(
    engine: sa.Engine,
) -> None:
    from changefeed.processors.reports import ReportTableProcessor

    spec = {
        "name": "typed",
        "table": "report_typed",
        "filter": {"type": "equals", "property_name": "domain", "value": "a"},
        "columns": [
            {"name": "owner"},
            {"name": "age", "type": "integer"},
            {"name": "opened", "type": "date"},
            {"name": "seen", "type": "datetime"},
            {"name": "score", "type": "decimal"},
            {"name": "ratio", "type": "float"},
            {"name": "closed", "type": "boolean"},
            {"name": "meta", "type": "json"},
        ],
    }
    doc = {
        **case("a", 'it\'s \\ "quoted"'),
        "opened": "2024-01-02",
        "seen": "2024-01-02T03:04:05",
        "score": "1.25",
        "ratio": 0.5,
        "closed": True,
        "meta": {"k": [1, "two", None]},
    }
    multi = ReportTablesProcessor([spec], engine, poll_interval=3600)
    multi.bootstrap()
    assert multi.process_changes([change("1", doc), change("2", {**doc, "meta": None})]) == []
    single = ReportTableProcessor({**spec, "table": "report_typed_single"}, engine)
    single.bootstrap()
    assert single.process_changes([change("1", doc), change("2", {**doc, "meta": None})]) == []
    with engine.connect() as conn:
        got = conn.execute(sa.text("SELECT * FROM report_typed ORDER BY doc_id")).all()
        want = conn.execute(sa.text("SELECT * FROM report_typed_single ORDER BY doc_id")).all()
    assert got == want
    assert got[0][2] == 'it\'s \\ "quoted"'
    multi.close()
    single.close()


def test_a_queued_entry_is_retried_into_its_data_source_only(
    tmp_path: Path, engine: sa.Engine
) -> None:
    from changefeed.app import App
    from changefeed.stores.memory import MemoryDocumentStore

    app = App(f"sqlite:///{tmp_path / 'log.db'}", f"sqlite:///{tmp_path / 'state.db'}")
    store = MemoryDocumentStore("docs")
    app.document_stores.register(store)
    proc = ReportTablesProcessor([source("a"), source("b")], engine, poll_interval=3600)
    pillow = app.constructed_pillow("reports", ["case"], [proc])
    pillow.bootstrap()
    drop(engine, "report_cases_b")
    store.save("1", case("b", "bob"))
    store.save("2", case("a", "ann"))
    app.publish(ChangeMeta("1", "memory", "docs", domain="b"), "case")
    app.publish(ChangeMeta("2", "memory", "docs", domain="a"), "case")
    pillow.run(forever=False)
    entries = app.error_queue.list(pillow="reports")
    assert [(e.document_id, e.processor) for e in entries] == [("1", "report:cases-b")]
    assert table_rows(engine, "report_cases_a") == [("2", "ann", 30)]
    build_table(DataSourceConfig.from_dict(source("b"))).create(engine)  # put back
    store.save("2", case("a", "changed"))  # a retry of b's entry must not touch a
    assert pillow.runner.retry_errors(ids=[entries[0].id]) == (1, 0)
    assert table_rows(engine, "report_cases_b") == [("1", "bob", 30)]
    assert table_rows(engine, "report_cases_a") == [("2", "ann", 30)]
    proc.close()
    app.close()


def test_a_broken_table_alone_in_its_batch_is_its_failure_not_a_server_down(
    proc: ReportTablesProcessor, engine: sa.Engine
) -> None:
    drop(engine, "report_cases_a")
    failures = proc.process_changes([change("1", case("a"))])
    assert [(f.change.id, f.where) for f in failures] == [("1", "report:cases-a")]
    assert "report_cases_a" in str(failures[0].exception)


def test_a_bad_definition_is_skipped_and_holds_no_other_back(
    tmp_path: Path, engine: sa.Engine
) -> None:
    import json

    folder = tmp_path / "sources"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(source("a")))
    p = ReportTablesProcessor(folder, engine, poll_interval=3600)
    p.bootstrap()
    (folder / "b.json").write_text(json.dumps({**source("b"), "colour": "red"}))
    assert p.refresh() == []  # b skipped, a unchanged
    assert "b.json: colour: unknown field" in p.invalid_data_sources()["b.json"]
    assert p.process_changes([change("1", case("a"))]) == []
    assert table_rows(engine, "report_cases_a") == [("1", "ann", 30)]
    fresh = ReportTablesProcessor(folder, engine)  # a start is not refused either
    fresh.bootstrap()
    assert [s.name for s in fresh.data_source_states()] == ["cases-a"]
    fresh.close()
    p.close()


def test_every_table_failing_like_a_server_down_is_the_database_s_trouble(
    proc: ReportTablesProcessor, engine: sa.Engine
) -> None:
    from changefeed.failures import is_dependency_failure

    drop(engine, "report_cases_a", "report_cases_b")
    batch = [change("1", case("a")), change("2", case("b"))]
    if engine.dialect.name == "sqlite":
        # SQLite says OperationalError for a missing table, as for a database it cannot
        # use: with every table failing so, the pillow backs off rather than quarantining.
        with pytest.raises(sa.exc.OperationalError) as info:
            proc.process_changes(batch)
        assert is_dependency_failure(info.value)
    else:  # PostgreSQL tells a missing table apart: each fails alone
        failures = proc.process_changes(batch)
        assert sorted(f.where for f in failures) == ["report:cases-a", "report:cases-b"]


def test_the_batch_size_it_asks_for_grows_with_its_data_sources(engine: sa.Engine) -> None:
    from changefeed.processors.reports.multi import CHANGES_PER_SOURCE, MAX_BATCH_HINT

    few = ReportTablesProcessor([source(d) for d in DOMAINS], engine)
    assert few.batch_size_hint == CHANGES_PER_SOURCE * len(DOMAINS)  # below the default
    many = ReportTablesProcessor([source(f"d{i}") for i in range(3000)], engine)
    assert many.batch_size_hint == MAX_BATCH_HINT
    few.close()
    many.close()


def test_documents_its_expressions_refuse_do_not_quarantine_a_data_source(
    proc: ReportTablesProcessor, engine: sa.Engine
) -> None:
    config = proc._sources["cases-a"].member.config
    for method in ("rows", "row_tuples"):
        real = getattr(config, method)

        def refusing(doc_id: str, document: dict[str, Any], real: Any = real) -> Any:
            if doc_id.startswith("bad"):
                raise ValueError("this document's values cannot make a row")
            return real(doc_id, document)

        object.__setattr__(config, method, refusing)
    for batch in range(proc.quarantine_after + 1):  # one bad document among good ones
        failures = proc.process_changes(
            [change(f"bad{batch}", case("a")), change(f"good{batch}", case("a"))]
        )
        assert [f.change.id for f in failures] == [f"bad{batch}"]
        assert not failures[0].retryable and failures[0].where == "report:cases-a"
    states = {s.name: s.state for s in proc.data_source_states()}
    assert states["cases-a"] == "live"
    for batch in range(proc.quarantine_after):  # every document it gets fails
        proc.process_changes([change(f"bad-only{batch}", case("a"))])
    states = {s.name: s.state for s in proc.data_source_states()}
    assert states["cases-a"] == "quarantined"
