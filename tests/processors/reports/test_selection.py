"""Selections of data sources: include, exclude and divisions by table-name hash."""

from __future__ import annotations

import pytest

from changefeed.processors.reports import DataSourceConfig, Selection, SelectionError
from changefeed.processors.reports.selection import Division, slot


def config(name: str) -> DataSourceConfig:
    return DataSourceConfig.from_dict(
        {"name": name, "table": f"t_{name}", "columns": [{"name": "x"}]}
    )


CONFIGS = [config(f"s{i}") for i in range(200)]


def test_a_division_into_parts_puts_every_table_in_exactly_one() -> None:
    parts = [Selection.of(division=d) for d in ("0-2/8", "3/8", "4-7/8")]
    for c in CONFIGS:
        assert sum(p.selects(c) for p in parts) == 1
    sizes = [sum(p.selects(c) for c in CONFIGS) for p in parts]
    assert all(size > 0 for size in sizes)


def test_slots_are_stable() -> None:
    assert slot("report_cases", 8) == slot("report_cases", 8)
    assert str(Division.parse(" 2-5/16 ")) == "2-5/16" and str(Division.parse("3/4")) == "3/4"


def test_include_and_exclude() -> None:
    picked = Selection.of(include=["s1", "s2"], exclude=["s2"])
    assert [c.name for c in CONFIGS if picked.selects(c)] == ["s1"]
    assert str(picked) == "include=s1,s2 exclude=s2"
    assert Selection.of().everything


@pytest.mark.parametrize("text", ["8/8", "3-2/8", "x/8", "1-2", "0/0"])
def test_bad_divisions(text: str) -> None:
    with pytest.raises(SelectionError, match="division"):
        Selection.of(division=text)


def test_names_not_a_string() -> None:
    with pytest.raises(SelectionError, match="lists"):
        Selection.of(include="s1")
