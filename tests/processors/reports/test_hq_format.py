"""CommCare HQ's data source JSON, loaded as it is: the rows HQ's own tests expect for such
documents, the implicit domain/doc_type clauses, table names, and one clear error for what
changefeed does not compute. The fixtures in tests/data/hq are our own, in HQ's shapes."""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from changefeed.change import Change, ChangeMeta
from changefeed.identifiers import object_name, sql_identifier
from changefeed.processors.reports import (
    DataSourceConfig,
    ReportConfigError,
    ReportTableProcessor,
    definition_hash,
    load_data_source,
)
from changefeed.processors.reports.hq import data_source_name, table_name

DATA = Path(__file__).resolve().parents[2] / "data" / "hq"


def hq(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return data


REFERRAL: dict[str, Any] = {
    "_id": "r1",
    "doc_type": "CommCareCase",
    "domain": "ward-clinic",
    "type": "referral",
    "referred_on": "2024-05-02T10:00:00.000000Z",
    "owner_id": "user-1",
    "urgency": "high",
    "needs": "transport translator",
    "flagged": "yes",
    "age": "30",
    "distance_km": 2.5,
    "priority": "4",
    "address": {"district": "north"},
}

HOUSEHOLD: dict[str, Any] = {
    "doc_type": "CommCareCase",
    "domain": "river-district",
    "type": "household",
    "closed": False,
    "village": "north-hill",
    "members": [{"name": "Amina"}, {"name": "Juma"}],
    "size": "2",
    "services": "water latrine",
    "phone": "555-0101",
    "counts": "4,3,1",
}


def referral(**extra: Any) -> dict[str, Any]:
    return {**REFERRAL, **extra}


def household(**extra: Any) -> dict[str, Any]:
    return {**HOUSEHOLD, **extra}


# -- loading and the shape of the translated spec ----------------------------------------


def test_loads_as_it_is_with_hq_names() -> None:
    config = load_data_source(DATA / "referrals.json")
    assert config.name == "ward-clinic.referrals"
    assert config.table == "config_report_ward_clinic_referrals_63790a02"
    assert config.description == "Referrals"
    assert [(c.name, c.type) for c in config.columns] == [
        ("referred_on", "date"),
        ("owner", "string"),
        ("count", "integer"),
        ("urgency_low", "integer"),
        ("urgency_medium", "integer"),
        ("urgency_high", "integer"),
        ("needs_transport", "integer"),
        ("needs_follow_up", "integer"),  # "follow-up" made an identifier
        ("needs_translator", "integer"),
        ("is_flagged", "integer"),
        ("is_adult", "integer"),
        ("distance_km", "decimal"),
        ("priority", "integer"),
        ("district", "string"),
    ]
    assert [c.name for c in config.columns if c.index] == ["owner"]
    # from a dict too, and the spec kept (stored with the table) is ours, loadable again
    again = DataSourceConfig.from_dict(hq("referrals"))
    assert definition_hash(again) == definition_hash(config)
    ours = DataSourceConfig.from_dict(copy.deepcopy(dict(config.spec)))
    assert definition_hash(ours) == definition_hash(config)


def test_the_implicit_filters_are_top_level_equals_clauses() -> None:
    """The contract with the routing index of the many-data-source processor."""
    spec = load_data_source(DATA / "referrals.json").spec["filter"]
    assert spec["type"] == "and"
    assert spec["filters"][:2] == [
        {"type": "equals", "property_name": "domain", "value": "ward-clinic"},
        {"type": "equals", "property_name": "doc_type", "value": "CommCareCase"},
    ]
    assert spec["filters"][2] == {"type": "equals", "property_name": "type", "value": "referral"}
    # no configured filter: only the implicit clauses
    visits = load_data_source(DATA / "feeding_visits.json").spec["filter"]
    assert visits["filters"] == [
        {"type": "equals", "property_name": "domain", "value": "ward-clinic"},
        {"type": "equals", "property_name": "doc_type", "value": "XFormInstance"},
    ]


def test_null_or_empty_sections_mean_none() -> None:
    spec = hq("feeding_visits")
    spec.update(
        configured_filter=None, named_filters=None, validations=None, sql_column_indexes=None
    )
    assert (
        DataSourceConfig.from_dict(spec).spec == load_data_source(DATA / "feeding_visits.json").spec
    )
    spec.update(base_item_expression={})
    assert not DataSourceConfig.from_dict(spec).multi_row
    ours = {"doc_type": ["not", "hq"], "name": "n", "table": "t", "columns": [{"name": "a"}]}
    with pytest.raises(ReportConfigError, match="doc_type: unknown field"):
        DataSourceConfig.from_dict(ours)  # our format (an odd doc_type is no HQ marker)


def test_table_and_data_source_names_are_valid_identifiers() -> None:
    long = table_name("a-very-long-project-space-name-of-a-ministry", "immunisation-followups-v2")
    assert len(long) <= 63 and sql_identifier(long) == long
    assert long.startswith("config_report_a_very_long_project")
    assert table_name("x.y", "t") != table_name("x-y", "t")  # HQ's hash keeps them apart
    assert table_name("2020-pilot", "t").startswith("config_report_2020_pilot_t_")
    assert data_source_name("ward-clinic", "sample-repeat") == "ward-clinic.sample-repeat"
    odd = data_source_name("ward clinic", "t:1")
    assert object_name(odd) == odd and odd != data_source_name("ward_clinic", "t:1")


# -- rows, as HQ's tests expect them -------------------------------------------------------


def test_the_sample_document_gives_hq_s_values() -> None:
    config = load_data_source(DATA / "referrals.json")
    [row] = config.rows("r1", referral())
    assert row == {
        "doc_id": "r1",
        "row_num": 0,
        "referred_on": dt.date(2024, 5, 2),
        "owner": "user-1",
        "count": 1,
        "urgency_low": 0,
        "urgency_medium": 0,
        "urgency_high": 1,
        "needs_transport": 1,
        "needs_follow_up": 0,
        "needs_translator": 1,
        "is_flagged": 1,
        "is_adult": 1,
        "distance_km": decimal.Decimal("2.5"),
        "priority": 4,
        "district": "north",
    }
    assert config.row_tuples("r1", referral()) == [tuple(row.values())]
    [other] = config.rows("r2", referral(flagged="no", age=12, needs=None, urgency="low"))
    assert (other["is_flagged"], other["is_adult"], other["urgency_low"]) == (0, 0, 1)
    assert (other["needs_transport"], other["needs_follow_up"], other["needs_translator"]) == (
        0,
        0,
        0,
    )


@pytest.mark.parametrize(
    "doc",
    [
        referral(doc_type="NotCommCareCase"),
        referral(doc_type="CommCareCase-Deleted"),
        referral(domain="other-clinic"),
        referral(type="not-referral"),
    ],
    ids=["doc_type", "deleted", "domain", "configured"],
)
def test_documents_outside_the_filter_give_no_rows(doc: dict[str, Any]) -> None:
    config = load_data_source(DATA / "referrals.json")
    assert config.rows("r1", doc) == [] and not config.matches(doc)


def test_a_repeat_data_source_gives_one_row_per_item() -> None:
    config = load_data_source(DATA / "feeding_visits.json")
    form = {"domain": "ward-clinic", "doc_type": "XFormInstance"}
    visits = [
        {"visited_at": "2024-06-01T08:00:00", "weight_kg": "3.2"},
        {"visited_at": "2024-06-08T08:30:00", "weight_kg": "3.4"},
        {"visited_at": "2024-06-15T09:00:00", "weight_kg": "3.5"},
    ]
    doc = {**form, "form": {"visits": visits, "meta": {"username": "nurse-a"}}}
    got = config.rows("f1", doc)
    assert [(r["row_num"], r["visited_at"], r["weight_kg"], r["worker"]) for r in got] == [
        (0, dt.datetime(2024, 6, 1, 8, 0), decimal.Decimal("3.2"), "nurse-a"),
        (1, dt.datetime(2024, 6, 8, 8, 30), decimal.Decimal("3.4"), "nurse-a"),
        (2, dt.datetime(2024, 6, 15, 9, 0), decimal.Decimal("3.5"), "nurse-a"),
    ]
    # one object is one row; missing, null or empty gives none
    one = {**form, "form": {"visits": visits[0], "meta": {"username": "nurse-b"}}}
    assert [(r["row_num"], r["worker"]) for r in config.rows("f2", one)] == [(0, "nurse-b")]
    for empty in ({}, {"visits": None}, {"visits": []}):
        assert config.rows("f3", {**form, "form": empty}) == []


def test_hq_expressions_filters_and_named_ones() -> None:
    config = load_data_source(DATA / "households.json")
    [row] = config.rows("h1", household())
    assert row == {
        "doc_id": "h1",
        "row_num": 0,
        "head_name": "Amina",
        "size_band": "couple",
        "village": "north-hill",
        "label": "north-hill / Amina",
        "phones": ["555-0101"],
        "has_water": 1,
        "members": 3,
    }
    [row] = config.rows(
        "h2", household(village="", members=[], size="7", phone2="555-0202", counts="")
    )
    assert (row["head_name"], row["size_band"], row["village"], row["label"]) == (
        None,
        "family",
        "unknown",
        "",
    )
    assert (row["phones"], row["members"]) == (["555-0101", "555-0202"], None)


@pytest.mark.parametrize(
    ("extra", "matches"),
    [
        ({}, True),
        ({"type": "household-v2"}, True),  # in
        ({"type": "person"}, False),
        ({"closed": True}, False),  # not / eq
        ({"village": "south-bank"}, True),  # regex fails, any_in_multi holds
        ({"village": "south-bank", "services": "clinic"}, False),
        ({"village": "south-bank", "services": None}, False),
        ({"village": "south-bank", "services": ["water"]}, False),  # not a multi-select text
        ({"village": 7, "services": "latrine"}, True),
    ],
)
def test_hq_operators(extra: dict[str, Any], matches: bool) -> None:
    config = load_data_source(DATA / "households.json")
    assert config.matches(household(**extra)) is matches


@pytest.mark.parametrize(
    ("operator", "value", "doc_value", "expected"),
    [
        ("eq", 3, 3, True),
        ("not_eq", 3, 3, False),
        ("not_eq", 3, None, True),
        ("in", [1, 2], 2, True),
        ("in_multi", "b", "a b c", True),
        ("in_multi", "b", "abc", False),
        ("any_in_multi", ["x", "c"], "a b c", True),
        ("regex", "^[0-9]+$", "123", True),
        ("regex", "^[0-9]+$", 123, False),
        ("lt", 5, 4, True),
        ("lte", 5, 5, True),
        ("gt", 5, 5, False),
        ("gte", 5, 5, True),
        ("gt", 5, None, False),  # not comparable: false, as in HQ
        ("LT", 5, "x", False),
    ],
)
def test_each_boolean_expression_operator(
    operator: str, value: Any, doc_value: Any, expected: bool
) -> None:
    spec = hq("households")
    spec["configured_filter"] = {
        "type": "boolean_expression",
        "expression": {"type": "property_name", "property_name": "v"},
        "operator": operator,
        "property_value": {"type": "constant", "constant": value},
    }
    config = DataSourceConfig.from_dict(spec)
    assert config.matches(household(v=doc_value)) is expected


def _filtered(configured_filter: dict[str, Any]) -> DataSourceConfig:
    return DataSourceConfig.from_dict(_with({"configured_filter": configured_filter}))


def test_date_strings_compare_as_dates_as_in_hq() -> None:
    """HQ reads a constant that looks like a date as a date: compared with a date-typed
    expression it orders as one; with a plain string it is never equal nor ordered."""
    typed = _filtered(
        {
            "type": "boolean_expression",
            "expression": {"type": "property_name", "property_name": "seen", "datatype": "date"},
            "operator": "gt",
            "property_value": "2015-05-05",
        }
    )
    assert typed.matches(referral(seen="2015-06-01T10:00:00Z"))
    assert not typed.matches(referral(seen="2015-01-01"))
    assert not typed.matches(referral(seen=None))
    untyped = _filtered(
        {
            "type": "property_match",
            "property_name": "seen",
            "property_value": "2015-05-05",
        }
    )
    assert not untyped.matches(referral(seen="2015-05-05"))
    stamps = _filtered(
        {
            "type": "boolean_expression",
            "expression": {"type": "property_name", "property_name": "at", "datatype": "datetime"},
            "operator": "in",
            "property_value": ["2015-05-05T10:00:00.000000Z", "2016-01-01T00:00:00Z"],
        }
    )
    assert stamps.matches(referral(at="2016-01-01T00:00:00"))
    assert not stamps.matches(referral(at="2016-01-02T00:00:00"))
    spec = _indicator(
        {
            "type": "expression",
            "datatype": "string",
            "expression": {"type": "constant", "constant": "2015-02-04"},
        }
    )
    [row] = DataSourceConfig.from_dict(spec).rows("r1", referral())
    assert row["c"] == "2015-02-04"


def test_a_property_value_may_be_an_expression() -> None:
    same = _filtered(
        {
            "type": "boolean_expression",
            "expression": {"type": "property_name", "property_name": "owner_id"},
            "operator": "not_eq",
            "property_value": {"type": "property_name", "property_name": "creator_id"},
        }
    )
    assert same.matches(referral(creator_id="user-9"))
    assert not same.matches(referral(creator_id="user-1"))
    with pytest.raises(ReportConfigError, match="needs a constant") as info:
        _filtered(
            {
                "type": "boolean_expression",
                "expression": {"type": "property_name", "property_name": "v"},
                "operator": "regex",
                "property_value": {"type": "property_name", "property_name": "p"},
            }
        )
    assert info.value.path == "configured_filter.property_value"


# -- what changefeed does not compute: one clear error ------------------------------------


def _with(change: dict[str, Any], base: str = "referrals") -> dict[str, Any]:
    spec = hq(base)
    spec.update(change)
    return spec


def _indicator(extra: dict[str, Any]) -> dict[str, Any]:
    return _with({"configured_indicators": [{"column_id": "c", "display_name": "c", **extra}]})


@pytest.mark.parametrize(
    ("spec", "path", "needle"),
    [
        (
            hq("parent_lookup"),
            "named_expressions.parent_village.type",
            "unsupported CommCare HQ expression type 'related_doc'",
        ),
        (
            _indicator({"type": "ledger_balances", "ledger_section": "stock"}),
            "configured_indicators[0].type",
            "unsupported CommCare HQ indicator type 'ledger_balances'",
        ),
        (
            _indicator(
                {
                    "type": "expression",
                    "datatype": "integer",
                    "expression": {"type": "evaluator", "statement": "a + 1"},
                }
            ),
            "configured_indicators[0].expression.type",
            "unsupported CommCare HQ expression type 'evaluator'",
        ),
        (
            _with({"configured_filter": {"type": "location_filter"}}),
            "configured_filter.type",
            "unsupported CommCare HQ filter type 'location_filter'",
        ),
        (
            _indicator(
                {
                    "type": "expression",
                    "datatype": "string",
                    "expression": "x",
                    "transform": {"type": "translation"},
                }
            ),
            "configured_indicators[0].transform",
            "unsupported CommCare HQ transform 'translation'",
        ),
        (
            _indicator({"type": "raw", "datatype": "bigint", "property_name": "p"}),
            "configured_indicators[0].datatype",
            "unknown datatype",
        ),
        (
            _indicator(
                {"type": "raw", "datatype": "string", "property_name": "p", "is_primary_key": True}
            ),
            "configured_indicators[0].is_primary_key",
            "custom primary keys",
        ),
        (
            _with({"doc_type": "RegistryDataSourceConfiguration", "registry_slug": "r"}),
            "doc_type",
            "unsupported CommCare HQ data source type",
        ),
        (_with({"is_deactivated": True}), "is_deactivated", "deactivated"),
        (
            _with({"configured_filter": {"type": "named", "name": "nope"}}),
            "configured_filter.name",
            "no 'nope' in named_filters",
        ),
        (
            _with(
                {
                    "named_expressions": {
                        **hq("referrals")["named_expressions"],
                        "a": {"type": "named", "name": "b"},
                        "b": {"type": "named", "name": "a"},
                    }
                }
            ),
            "named_expressions.b.name",
            "refers to itself",
        ),
        (
            _with(
                {
                    "configured_filter": {
                        "type": "boolean_expression",
                        "expression": {"type": "property_name", "property_name": "p"},
                        "operator": "between",
                        "property_value": 1,
                    }
                }
            ),
            "configured_filter.operator",
            "unknown operator 'between'",
        ),
        (
            _with({"sql_column_indexes": [{"column_ids": ["owner", "priority"]}]}),
            "sql_column_indexes[0].column_ids",
            "several columns",
        ),
        (_with({"base_doc_expression": {}}), "base_doc_expression", "unknown field"),
        (_with({"configured_indicators": []}), "configured_indicators", "at least one"),
    ],
    ids=lambda v: v if isinstance(v, str) and "." not in v and " " not in v else None,
)
def test_unsupported_or_wrong_hq_specs_are_one_error_naming_path_and_type(
    spec: dict[str, Any], path: str, needle: str
) -> None:
    with pytest.raises(ReportConfigError) as info:
        DataSourceConfig.from_dict(spec)
    assert info.value.path == path and needle in info.value.message


def test_the_cli_validates_hq_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from changefeed.cli import main

    with pytest.raises(SystemExit) as info:
        main(["reports", "validate", str(DATA / "referrals.json")])
    out, _ = capsys.readouterr()
    assert info.value.code in (0, None)
    assert "ok (ward-clinic.referrals -> table config_report_ward_clinic_referrals_63790a02" in out
    with pytest.raises(SystemExit) as info:
        main(["reports", "validate", str(DATA / "parent_lookup.json")])
    _, err = capsys.readouterr()
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "parent_lookup.json: named_expressions.parent_village.type" in err
    assert "'related_doc'" in err and "Traceback" not in err


# -- rows written, on SQLite and PostgreSQL ------------------------------------------------


def change(doc_id: str, doc: dict[str, Any] | None, offset: int = 0) -> Change:
    meta = ChangeMeta(doc_id, "memory", "docs", is_deletion=doc is None)
    c = Change("case-sql", 0, offset, meta)
    c.set_document(doc)
    return c


def table_rows(proc: ReportTableProcessor) -> list[dict[str, Any]]:
    t = proc.table
    with proc.engine.connect() as conn:
        result = conn.execute(sa.select(t).order_by(t.c.doc_id, t.c.row_num))
        return [dict(r._mapping) for r in result]


def test_rows_written_and_deleted_as_hq_does(db_url: str) -> None:
    proc = ReportTableProcessor(DATA / "referrals.json", db_url)
    proc.bootstrap()
    assert proc.table.name == "config_report_ward_clinic_referrals_63790a02"
    assert (
        proc.process_changes(
            [
                change("a", referral()),
                change("b", referral(owner_id="user-2", needs="follow-up")),
                change("c", referral()),
                change("d", referral(domain="other-clinic")),
            ]
        )
        == []
    )
    got = table_rows(proc)
    assert [r["doc_id"] for r in got] == ["a", "b", "c"]
    assert (got[0]["count"], got[0]["needs_translator"], got[0]["priority"]) == (1, 1, 4)
    assert float(got[0]["distance_km"]) == 2.5 and got[0]["referred_on"] == dt.date(2024, 5, 2)
    assert (got[1]["owner"], got[1]["needs_follow_up"], got[1]["needs_transport"]) == (
        "user-2",
        1,
        0,
    )
    # HQ's deleted doc type, a deletion, and a document that no longer matches: rows go
    proc.process_changes(
        [
            change("a", referral(doc_type="CommCareCase-Deleted")),
            change("b", None),
            change("c", referral(type="closed-referral")),
        ]
    )
    assert table_rows(proc) == []
    proc.close()


def test_repeat_rows_written(db_url: str) -> None:
    proc = ReportTableProcessor(DATA / "feeding_visits.json", db_url)
    proc.bootstrap()
    form = {"domain": "ward-clinic", "doc_type": "XFormInstance"}
    visits = [{"visited_at": f"2024-06-0{i}T08:00:00", "weight_kg": i} for i in (1, 2, 3)]
    proc.process_changes([change("f", {**form, "form": {"visits": visits}})])
    assert [(r["row_num"], r["visited_at"].day) for r in table_rows(proc)] == [
        (0, 1),
        (1, 2),
        (2, 3),
    ]
    proc.process_changes([change("f", {**form, "form": {"visits": visits[:1]}})])
    assert [r["row_num"] for r in table_rows(proc)] == [0]
    proc.process_changes([change("f", {**form, "doc_type": "XFormArchived", "form": {}})])
    assert table_rows(proc) == []
    proc.close()
