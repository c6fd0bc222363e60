"""Data source configs: loading JSON/YAML, and errors that point at the wrong field."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from changefeed.processors.reports import DataSourceConfig, ReportConfigError, load_data_source


def base(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "cases",
        "table": "report_cases",
        "columns": [{"name": "owner"}, {"name": "age", "type": "integer"}],
    }
    spec.update(overrides)
    return spec


def error_of(spec: object) -> str:
    with pytest.raises(ReportConfigError) as info:
        DataSourceConfig.from_dict(spec)
    return str(info.value)


def test_minimal_config_defaults_column_expression_to_its_property() -> None:
    config = DataSourceConfig.from_dict(base())
    assert config.column_names == ["doc_id", "row_num", "owner", "age"]
    assert config.rows("d1", {"owner": "ann", "age": "41"}) == [
        {"doc_id": "d1", "row_num": 0, "owner": "ann", "age": 41}
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            base(
                columns=[{"name": "a"}, {"name": "b"}, {"name": "c", "expression": {"type": "foo"}}]
            ),
            "columns[2].expression.type: unknown expression type 'foo'",
        ),
        (base(table="report; drop table x"), "table: invalid table name 'report; drop table x'"),
        (
            base(columns=[{"name": "ok"}, {"name": "bad name"}]),
            "columns[1].name: invalid column name",
        ),
        (
            base(columns=[{"name": "a"}, {"name": "a"}]),
            "columns[1].name: duplicate column 'a' (also columns[0])",
        ),
        (base(columns=[{"name": "doc_id"}]), "columns[0].name: 'doc_id' is a system column"),
        (
            base(columns=[{"name": "a", "type": "money"}]),
            "columns[0].type: unknown column type 'money'",
        ),
        (base(columns=[{"name": "a", "colour": "red"}]), "columns[0].colour: unknown field"),
        (base(columns=[]), "columns: a data source needs at least one column"),
        (base(columns="owner"), "columns: expected a list, got str 'owner'"),
        ({"table": "t", "columns": [{"name": "a"}]}, "name: required field is missing"),
        (base(name="bad name!"), "name: invalid data source name"),
        (
            base(filter={"type": "equals", "property_name": "x"}),
            "filter.value: required field is missing",
        ),
        (
            base(
                filter={
                    "type": "and",
                    "filters": [{"type": "exists", "property_name": "a"}, {"type": "near"}],
                }
            ),
            "filter.filters[1].type: unknown filter type 'near'",
        ),
        (
            base(filter={"type": "compare", "property_name": "a", "operator": "~", "value": 1}),
            "filter.operator: unknown operator '~'",
        ),
        (
            base(
                columns=[
                    {
                        "name": "a",
                        "expression": {
                            "type": "conditional",
                            "test": {"type": "exists"},
                            "expression_if_true": 1,
                        },
                    }
                ]
            ),
            "columns[0].expression.test.expression: required field is missing",
        ),
        (
            base(
                columns=[
                    {
                        "name": "a",
                        "expression": {"type": "property_path", "property_path": ["x", 1.5]},
                    }
                ]
            ),
            "columns[0].expression.property_path[1]: expected a string key or an integer list index",
        ),
        (
            base(
                columns=[
                    {
                        "name": "a",
                        "expression": {
                            "type": "property_name",
                            "property_name": "x",
                            "datatype": "uuid",
                        },
                    }
                ]
            ),
            "columns[0].expression.datatype: unknown datatype 'uuid'",
        ),
        (
            base(base_item_expression={"type": "property_name"}),
            "base_item_expression.property_name: required",
        ),
        (base(extra=1), "extra: unknown field"),
        ([1, 2], "expected an object, got a list"),
    ],
)
def test_bad_config_names_the_field(spec: object, message: str) -> None:
    assert message in error_of(spec)


def test_load_yaml_and_json(tmp_path: Path) -> None:
    yaml_file = tmp_path / "cases.yaml"
    yaml_file.write_text(
        "name: cases\n"
        "table: report_cases\n"
        "filter: {type: equals, property_name: closed, value: false}\n"
        "columns:\n"
        "  - {name: owner}\n"
        "  - name: opened\n"
        "    type: date\n"
        "    expression: {type: property_path, property_path: [dates, opened]}\n"
    )
    config = load_data_source(yaml_file)
    assert config.rows(
        "c", {"closed": False, "owner": "x", "dates": {"opened": "2024-05-01T10:00:00"}}
    ) == [{"doc_id": "c", "row_num": 0, "owner": "x", "opened": dt.date(2024, 5, 1)}]
    assert config.rows("c", {"closed": True}) == []
    json_file = tmp_path / "cases.json"
    json_file.write_text(json.dumps(base()))
    assert load_data_source(json_file).table == "report_cases"


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntable: t\ncolumns:\n  - {name: a, expression: {type: foo}}\n")
    with pytest.raises(
        ReportConfigError, match=r"^bad.yaml: columns\[0\].expression.type: unknown"
    ):
        load_data_source(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ReportConfigError, match="broken.json: not valid JSON"):
        load_data_source(broken)
    with pytest.raises(ReportConfigError, match="cannot read"):
        load_data_source(tmp_path / "missing.yaml")


def test_multi_row_from_base_item_expression() -> None:
    config = DataSourceConfig.from_dict(
        base(
            base_item_expression={"type": "property_name", "property_name": "visits"},
            columns=[
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
        )
    )
    doc = {"owner": "ann", "visits": [{"on": "2024-01-02"}, {"on": "2024-02-03"}]}
    assert config.rows("d", doc) == [
        {"doc_id": "d", "row_num": 0, "owner": "ann", "visited": dt.date(2024, 1, 2)},
        {"doc_id": "d", "row_num": 1, "owner": "ann", "visited": dt.date(2024, 2, 3)},
    ]
    assert config.rows("d", {"owner": "ann"}) == []
    assert config.rows("d", {"visits": {"on": "2024-01-02"}})[0]["visited"] == dt.date(2024, 1, 2)
