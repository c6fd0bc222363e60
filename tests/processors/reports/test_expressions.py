"""Expressions and filters, evaluated on plain documents."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import pytest

from changefeed.processors.reports.expressions import parse_expression, register_expression_type
from changefeed.processors.reports.filters import parse_filter

DOC: dict[str, Any] = {
    "name": "  Ann Smith ",
    "age": "41",
    "height": "1.75",
    "closed": False,
    "tags": ["a", "b", None, 3],
    "person": {"address": {"city": "Oslo"}, "phones": ["123", "456"]},
    "opened": "2024-03-05T08:30:00+00:00",
    "empty": "",
}


def ev(spec: object, item: Any = DOC) -> Any:
    return parse_expression(spec, "e")(item, DOC)


def test_property_name_and_path() -> None:
    assert ev({"type": "property_name", "property_name": "age"}) == "41"
    assert ev({"type": "property_name", "property_name": "age", "datatype": "integer"}) == 41
    assert ev({"type": "property_name", "property_name": "missing"}) is None
    assert ev({"type": "property_path", "property_path": ["person", "address", "city"]}) == "Oslo"
    assert ev({"type": "property_path", "property_path": ["person", "phones", -1]}) == "456"
    assert ev({"type": "property_path", "property_path": ["person", "phones", 5]}) is None
    assert ev({"type": "property_path", "property_path": ["name", "x"]}) is None
    assert ev({"type": "property_name", "property_name": "x"}, item="not a dict") is None


def test_constants_and_root_doc() -> None:
    assert ev({"type": "constant", "constant": {"a": 1}}) == {"a": 1}
    assert ev(7) == 7
    assert ev(None) is None
    item = {"name": "item"}
    assert ev({"type": "property_name", "property_name": "name"}, item) == "item"
    root = {"type": "root_doc", "expression": {"type": "property_name", "property_name": "age"}}
    assert ev(root, item) == "41"


def test_conditional() -> None:
    spec = {
        "type": "conditional",
        "test": {"type": "compare", "property_name": "age", "operator": ">=", "value": 18},
        "expression_if_true": "adult",
        "expression_if_false": "minor",
    }
    # "41" is a string: comparing it with 18 is not an ordering, so the test is false
    assert ev(spec) == "minor"
    spec["test"] = {
        "type": "compare",
        "expression": {
            "type": "to_int",
            "expression": {"type": "property_name", "property_name": "age"},
        },
        "operator": ">=",
        "value": 18,
    }
    assert ev(spec) == "adult"
    del spec["expression_if_false"]
    assert ev(spec, {"age": 3}) is None


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("to_int", "41", 41),
        ("to_int", "4.0", 4),
        ("to_int", "x", None),
        ("to_int", True, 1),
        ("to_float", "1.75", 1.75),
        ("to_float", [1], None),
        ("to_decimal", "1.10", decimal.Decimal("1.10")),
        ("to_str", 5, "5"),
        ("to_str", {"a": 1}, '{"a":1}'),
        ("to_bool", "yes", True),
        ("to_bool", "0", False),
        ("to_bool", "maybe", None),
        ("to_date", "2024-03-05T08:30:00+00:00", dt.date(2024, 3, 5)),
        ("to_date", "05/03/2024", None),
        ("to_datetime", "2024-03-05T08:30:00", dt.datetime(2024, 3, 5, 8, 30)),
        ("lower", "AbC", "abc"),
        ("upper", "AbC", "ABC"),
        ("strip", "  x ", "x"),
        ("lower", 5, 5),
        ("length", [1, 2, 3], 3),
        ("length", None, 0),
        ("length", 5, None),
    ],
)
def test_transforms(kind: str, value: Any, expected: Any) -> None:
    assert ev({"type": kind, "expression": {"type": "constant", "constant": value}}) == expected


def test_join_and_default() -> None:
    tags = {"type": "property_name", "property_name": "tags"}
    assert ev({"type": "join", "expression": tags, "separator": ","}) == "a,b,3"
    assert (
        ev({"type": "join", "expression": {"type": "property_name", "property_name": "age"}})
        == "41"
    )
    empty = {"type": "property_name", "property_name": "empty"}
    assert ev({"type": "default", "expression": empty, "default": "n/a"}) == "n/a"
    assert ev({"type": "default", "expression": tags, "default": "n/a"}) == DOC["tags"]


def fl(spec: object, item: Any = DOC) -> bool:
    return parse_filter(spec, "f")(item, DOC)


def test_filters() -> None:
    assert fl({"type": "equals", "property_name": "closed", "value": False})
    assert not fl({"type": "equals", "property_name": "closed", "value": True})
    assert fl({"type": "in", "property_name": "age", "values": ["40", "41"]})
    assert not fl({"type": "in", "property_name": "tags", "values": ["a"]})  # a list is unhashable
    assert fl({"type": "exists", "property_name": "name"})
    assert not fl({"type": "exists", "property_name": "empty"})
    assert not fl({"type": "exists", "property_name": "missing"})
    assert fl({"type": "compare", "property_name": "height", "operator": "<", "value": "2"})
    assert not fl({"type": "compare", "property_name": "missing", "operator": "<", "value": 2})
    assert fl({"type": "compare", "property_name": "missing", "operator": "==", "value": None})
    is_open = {"type": "equals", "property_name": "closed", "value": False}
    in_oslo = {
        "type": "equals",
        "expression": {"type": "property_path", "property_path": ["person", "address", "city"]},
        "value": "Oslo",
    }
    assert fl({"type": "and", "filters": [is_open, in_oslo]})
    assert fl({"type": "or", "filters": [{"type": "not", "filter": is_open}, in_oslo]})
    assert not fl({"type": "not", "filter": {"type": "and", "filters": [is_open, in_oslo]}})


def prop(name: str) -> dict[str, Any]:
    return {"type": "property_name", "property_name": name}


def test_structural_expressions() -> None:
    phones = {"type": "property_path", "property_path": ["person", "phones"]}
    assert ev({"type": "identity"}, item=5) == 5
    assert ev({"type": "array_index", "array_expression": phones, "index_expression": 1}) == "456"
    assert ev({"type": "array_index", "array_expression": phones, "index_expression": 9}) is None
    assert (
        ev({"type": "array_index", "array_expression": prop("name"), "index_expression": 0}) is None
    )
    assert ev({"type": "array_index", "array_expression": phones, "index_expression": True}) is None
    nested = {
        "type": "nested",
        "argument_expression": prop("person"),
        "value_expression": prop("phones"),
    }
    assert ev(nested) == ["123", "456"]
    assert ev({"type": "dict", "properties": {"a": prop("age"), "b": 1}}) == {"a": "41", "b": 1}
    switch = {"type": "switch", "switch_on": prop("age"), "cases": {"41": "yes"}, "default": "no"}
    assert ev(switch) == "yes" and ev(switch, item={"age": 41}) == "no"
    assert ev(dict(switch, switch_on=prop("tags")), item={"tags": []}) == "no"  # unhashable
    assert ev({k: v for k, v in switch.items() if k != "default"}, item={}) is None
    test = {"type": "exists", "expression": {"type": "identity"}}
    iterate = {"type": "iterator", "expressions": [prop("age"), prop("missing"), 3], "test": test}
    assert ev(iterate) == ["41", 3]
    assert ev({"type": "iterator", "expressions": [prop("x")]}) == [None]
    split = {"type": "split_string", "string_expression": prop("opened"), "delimiter": "T"}
    assert ev(split) == ["2024-03-05", "08:30:00+00:00"]
    assert ev(dict(split, index_expression=0)) == "2024-03-05"
    assert (
        ev(dict(split, index_expression=5)) is None and ev(dict(split, string_expression=7)) is None
    )
    assert ev({"type": "split_string", "string_expression": "a b", "index_expression": -1}) == "b"
    assert ev({"type": "to_list", "expression": prop("age")}) == ["41"]
    assert ev({"type": "to_list", "expression": prop("tags")}) == DOC["tags"]


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        ({"type": "in_multi", "value": "b"}, "a b c", True),
        ({"type": "in_multi", "value": "b"}, "abc", False),
        ({"type": "in_multi", "value": ""}, None, True),  # HQ reads a missing answer as ""
        ({"type": "in_multi", "value": "b"}, ["b"], False),
        ({"type": "any_in_multi", "values": ["x", "c"]}, "a b c", True),
        ({"type": "any_in_multi", "values": ["x"]}, "a b c", False),
        ({"type": "regex", "pattern": "^a.c$"}, "abc", True),
        ({"type": "regex", "pattern": "^a.c$"}, 7, False),
        ({"type": "compare_with", "operator": "<", "value_expression": prop("limit")}, 3, True),
        ({"type": "compare_with", "operator": "<", "value_expression": prop("limit")}, "3", False),
        (
            {
                "type": "compare_with",
                "operator": "in",
                "value_expression": {"type": "constant", "constant": [1, 3]},
            },
            3,
            True,
        ),
        ({"type": "compare_with", "operator": "in", "value_expression": None}, 3, False),
        ({"type": "compare_with", "operator": "==", "value_expression": prop("limit")}, 5, True),
    ],
)
def test_multi_select_regex_and_computed_comparisons(
    spec: dict[str, Any], value: Any, expected: bool
) -> None:
    compiled = parse_filter({**spec, "property_name": "v"}, "f")
    doc = {"v": value, "limit": 5}
    assert compiled(doc, doc) is expected


@pytest.mark.parametrize(
    ("spec", "path", "needle"),
    [
        ({"type": "regex", "property_name": "v", "pattern": "("}, "f.pattern", "invalid regular"),
        (
            {"type": "split_string", "string_expression": "a", "delimiter": ""},
            "f.delimiter",
            "empty",
        ),
        ({"type": "switch", "switch_on": 1, "cases": []}, "f.cases", "expected an object"),
        (
            {"type": "compare_with", "property_name": "v", "operator": "~", "value_expression": 1},
            "f.operator",
            "unknown operator",
        ),
    ],
)
def test_new_types_validate_their_fields(spec: dict[str, Any], path: str, needle: str) -> None:
    from changefeed.processors.reports import ReportConfigError

    parse = parse_filter if spec["type"] in ("regex", "compare_with") else parse_expression
    with pytest.raises(ReportConfigError, match=needle) as info:
        parse(spec, "f")
    assert info.value.path == path


def test_the_expression_types_holding_a_filter_come_from_filters() -> None:
    # filters imports expressions and adds these two; a second registration is refused.
    for name in ("conditional", "iterator"):
        with pytest.raises(ValueError, match="already registered"):
            register_expression_type(name, lambda f: lambda item, root: None)
