"""ReportTableProcessor against real databases: SQLite and our own PostgreSQL cluster."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
import sqlalchemy as sa

from changefeed.change import Change, ChangeMeta
from changefeed.processors.reports import ReportSchemaError, ReportTableProcessor

SPEC: dict[str, Any] = {
    "name": "cases",
    "table": "report_cases",
    "filter": {"type": "equals", "property_name": "type", "value": "case"},
    "columns": [
        {"name": "owner", "index": True},
        {"name": "age", "type": "integer"},
        {"name": "opened", "type": "date"},
        {"name": "score", "type": "decimal"},
        {"name": "closed", "type": "boolean"},
        {
            "name": "extra",
            "type": "json",
            "expression": {"type": "property_name", "property_name": "meta"},
        },
    ],
}

VISITS: dict[str, Any] = {
    "name": "visits",
    "table": "report_visits",
    "base_item_expression": {"type": "property_name", "property_name": "visits"},
    "columns": [
        {
            "name": "owner",
            "expression": {
                "type": "root_doc",
                "expression": {"type": "property_name", "property_name": "owner"},
            },
        },
        {
            "name": "visited",
            "type": "date",
            "expression": {"type": "property_name", "property_name": "on"},
        },
    ],
}


def change(doc_id: str, doc: dict[str, Any] | None, offset: int = 0) -> Change:
    meta = ChangeMeta(doc_id, "memory", "docs", is_deletion=doc is None)
    c = Change("case", 0, offset, meta)
    c.set_document(doc)
    return c


def rows(proc: ReportTableProcessor, order: str = "doc_id, row_num") -> list[dict[str, Any]]:
    t = proc.table
    with proc.engine.connect() as conn:
        result = conn.execute(sa.select(t).order_by(t.c.doc_id, t.c.row_num))
        return [dict(r._mapping) for r in result]


def case(owner: str, age: Any = 30, **extra: Any) -> dict[str, Any]:
    return {"type": "case", "owner": owner, "age": age, **extra}


def test_upsert_delete_and_filter(db_url: str) -> None:
    proc = ReportTableProcessor(SPEC, db_url)
    proc.bootstrap()
    failures = proc.process_changes(
        [
            change(
                "a",
                case("ann", "41", opened="2024-01-02", score="1.5", closed=False, meta={"k": [1]}),
            ),
            change("b", case("bob")),
            change("c", {"type": "form", "owner": "carl"}),  # does not match the filter
        ]
    )
    assert failures == []
    got = rows(proc)
    assert [r["doc_id"] for r in got] == ["a", "b"]
    a = got[0]
    assert (a["owner"], a["age"], a["opened"], float(a["score"]), a["closed"], a["extra"]) == (
        "ann",
        41,
        dt.date(2024, 1, 2),
        1.5,
        False,
        {"k": [1]},
    )
    assert got[1]["opened"] is None and got[1]["extra"] is None
    # update a, delete b, c starts matching; the same id twice in a batch keeps the last one
    proc.process_changes(
        [
            change("a", case("ann", 40)),
            change("a", case("anna", 42)),
            change("b", None),
            change("c", case("carl")),
        ]
    )
    assert [(r["doc_id"], r["owner"], r["age"]) for r in rows(proc)] == [
        ("a", "anna", 42),
        ("c", "carl", 30),
    ]
    # a stops matching the filter: its row goes; replaying the batch changes nothing
    batch = [change("a", {"type": "closed-case", "owner": "anna"})]
    proc.process_changes(batch)
    proc.process_changes(batch)
    assert [r["doc_id"] for r in rows(proc)] == ["c"]
    proc.close()


def test_multi_row_documents_drop_stale_rows(db_url: str) -> None:
    proc = ReportTableProcessor(VISITS, db_url)
    proc.bootstrap()
    three = {
        "owner": "ann",
        "visits": [{"on": "2024-01-01"}, {"on": "2024-01-02"}, {"on": "2024-01-03"}],
    }
    proc.process_changes(
        [change("a", three), change("b", {"owner": "bob", "visits": [{"on": "2024-02-01"}]})]
    )
    assert [(r["doc_id"], r["row_num"]) for r in rows(proc)] == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
    ]
    proc.process_changes(
        [
            change("a", {"owner": "ann", "visits": [{"on": "2024-03-01"}]}),
            change("b", {"owner": "bob", "visits": []}),
        ]
    )
    assert [(r["doc_id"], r["row_num"], r["visited"]) for r in rows(proc)] == [
        ("a", 0, dt.date(2024, 3, 1))
    ]
    proc.close()


def test_value_the_database_rejects_fails_the_batch_then_only_itself(db_url: str) -> None:
    spec = dict(SPEC, columns=[{"name": "n", "type": "integer"}])
    proc = ReportTableProcessor(spec, db_url)
    proc.bootstrap()
    good = change("a", {"type": "case", "n": "7"})
    huge = change("b", {"type": "case", "n": str(10**30)})  # beyond BIGINT
    # the batch raises as a whole; the pillow then retries change by change
    with pytest.raises(Exception):  # noqa: B017 - the driver's overflow error
        proc.process_changes([good, huge])
    assert rows(proc) == []
    proc.process_change(good)
    with pytest.raises(Exception):  # noqa: B017
        proc.process_change(huge)
    assert [(r["doc_id"], r["n"]) for r in rows(proc)] == [("a", 7)]
    proc.close()


def test_a_changed_definition_is_written_with_the_old_one_until_rebuilt(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = ReportTableProcessor(SPEC, db_url)
    first.bootstrap()
    first.process_changes([change("a", case("ann"))])
    first.close()
    spec = dict(
        SPEC,
        columns=[c for c in SPEC["columns"] if c["name"] != "score"]
        + [{"name": "region"}, {"name": "visits", "type": "integer"}],
    )
    second = ReportTableProcessor(spec, db_url)
    with caplog.at_level(logging.INFO, logger="changefeed.reports"):
        [action] = second.migrate()
    assert "columns added: region (string), visits (integer)" in action
    assert "columns removed: score" in action
    assert str(second.rebuild_needed) in action and second.config is not second.target
    # the live table is untouched and still written, with the definition it was built with
    names = {c["name"] for c in sa.inspect(second.engine).get_columns("report_cases")}
    assert "score" in names and "region" not in names
    second.process_changes([change("b", case("bob", region="north"))])
    assert [r["doc_id"] for r in rows(second)] == ["a", "b"]
    # a reset starts over with exactly the configured columns and records them
    second.reset()
    names = {c["name"] for c in sa.inspect(second.engine).get_columns("report_cases")}
    assert "score" not in names and "region" in names and second.count_rows() == 0
    assert second.rebuild_needed is None and second.migrate() == []
    second.close()


def test_rows_prepared_ahead_are_written_or_computed_again_after_a_swap(db_url: str) -> None:
    """A pipelined pillow prepares a batch's rows on its reader thread; they are written as
    prepared unless the table was swapped for another definition in between."""
    first = ReportTableProcessor(SPEC, db_url)
    first.bootstrap()
    first.close()
    spec = dict(SPEC, columns=[*SPEC["columns"], {"name": "region"}])
    proc = ReportTableProcessor(spec, db_url)
    proc.migrate()  # still written with the definition it was built with (no region)
    batch = [change("a", case("ann", region="north")), change("f", {"type": "form"})]
    prepared = proc.prepare_changes(batch)
    assert proc.process_prepared(batch, prepared) == []
    assert [r["doc_id"] for r in rows(proc)] == ["a"] and "region" not in rows(proc)[0]

    batch = [change("b", case("bob", region="south"))]
    prepared = proc.prepare_changes(batch)  # rows without a region
    proc.reset()  # now the table of the configured definition, with region
    assert proc.process_prepared(batch, prepared) == []
    assert [(r["doc_id"], r["region"]) for r in rows(proc)] == [("b", "south")]
    proc.close()


def test_an_index_change_is_made_in_place(db_url: str) -> None:
    first = ReportTableProcessor(SPEC, db_url)
    first.bootstrap()
    first.process_changes([change("a", case("ann"))])
    first.close()
    columns = [dict(c, index=c["name"] == "age") for c in SPEC["columns"]]
    second = ReportTableProcessor(dict(SPEC, columns=columns), db_url)
    actions = second.migrate()
    assert actions == [
        "created index ix_report_cases_age",
        "dropped index ix_report_cases_owner",
        "recorded the table's definition",
    ]
    assert second.rebuild_needed is None and second.count_rows() == 1
    indexes = sa.inspect(second.engine).get_indexes("report_cases")
    assert [i["column_names"] for i in indexes if not i.get("unique")] == [["age"]]
    assert second.migrate() == []
    second.close()


def test_bootstrap_refuses_a_table_that_is_not_a_report(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE report_cases (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    proc = ReportTableProcessor(SPEC, db_url)
    with pytest.raises(ReportSchemaError, match="has no doc_id, row_num column"):
        proc.bootstrap()
    proc.close()
