"""`DataSourceConfig.row_tuples` (what the PostgreSQL COPY path writes) gives exactly the
values of `rows`, whatever the documents hold: its shortcuts (plain property lookups, no
conversion of a value already of the column's type) must never change a value."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import pytest

from changefeed.processors.reports.config import DataSourceConfig

SPEC: dict[str, Any] = {
    "name": "mixed",
    "table": "report_mixed",
    "filter": {"type": "exists", "property_name": "kind"},
    "columns": [
        {"name": "s"},
        {"name": "i", "type": "integer"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "decimal"},
        {"name": "b", "type": "boolean"},
        {"name": "day", "type": "date"},
        {"name": "at", "type": "datetime"},
        {"name": "j", "type": "json"},
        {"name": "city", "expression": {"type": "property_path", "property_path": ["a", "c"]}},
        {
            "name": "typed",
            "type": "string",
            "expression": {"type": "property_name", "property_name": "i", "datatype": "integer"},
        },
        {"name": "k", "type": "integer", "expression": {"type": "constant", "constant": 3}},
    ],
}

VALUES: list[Any] = [
    None,
    "x",
    "",
    " 12 ",
    "2024-05-06",
    "2024-05-06T07:08:09",
    "true",
    "1.5",
    0,
    7,
    True,
    False,
    2.5,
    float("nan"),
    decimal.Decimal("1.25"),
    dt.date(2024, 1, 2),
    dt.datetime(2024, 1, 2, 3, 4),
    {"n": [1]},
    [1, "a"],
    10**30,
]

NAMES = ["s", "i", "f", "d", "b", "day", "at", "j"]


def documents() -> list[dict[str, Any]]:
    docs = []
    for n, value in enumerate(VALUES):
        # every value in every column, shifted so each document mixes types
        doc: dict[str, Any] = {"kind": "k", "a": {"c": value}}
        for k, name in enumerate(NAMES):
            doc[name] = VALUES[(n + k) % len(VALUES)]
        docs.append(doc)
    docs.append({"kind": "k"})  # every column missing
    docs.append({"s": "no kind"})  # filtered out
    docs.append({"kind": "k", "a": "not an object"})
    return docs


def same(a: Any, b: Any) -> bool:
    """Equal, NaN included, and of the same type (True is not 1 in a boolean column)."""
    if type(a) is not type(b):
        return False
    return a == b or (a != a and b != b)  # NaN (float or Decimal) equals itself here


@pytest.mark.parametrize("doc", documents(), ids=lambda d: str(sorted(d.items()))[:60])
def test_row_tuples_match_rows(doc: dict[str, Any]) -> None:
    config = DataSourceConfig.from_dict(SPEC)
    want = [tuple(row[n] for n in config.column_names) for row in config.rows("x", doc)]
    got = config.row_tuples("x", doc)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w) == len(config.column_names)
        assert all(same(a, b) for a, b in zip(g, w, strict=True)), (g, w)


def test_multi_row_tuples_match_rows() -> None:
    config = DataSourceConfig.from_dict(
        {
            "name": "visits",
            "table": "report_visits",
            "base_item_expression": {"type": "property_name", "property_name": "visits"},
            "columns": [
                {"name": "on", "type": "date"},
                {
                    "name": "owner",
                    "expression": {
                        "type": "root_doc",
                        "expression": {"type": "property_name", "property_name": "owner"},
                    },
                },
            ],
        }
    )
    doc = {"owner": "ann", "visits": [{"on": "2024-01-02"}, "not an object", {"on": None}]}
    want = [tuple(row[n] for n in config.column_names) for row in config.rows("d", doc)]
    assert config.row_tuples("d", doc) == want
    assert want[0] == ("d", 0, dt.date(2024, 1, 2), "ann") and len(want) == 3
    assert config.row_tuples("d", {"owner": "ann"}) == []


def test_only_bare_property_lookups_take_the_shortcut() -> None:
    config = DataSourceConfig.from_dict(SPEC)
    plain = {c.name: c.property for c in config.columns}
    assert plain["s"] == "s" and plain["i"] == "i"
    assert plain["city"] is None and plain["typed"] is None and plain["k"] is None
