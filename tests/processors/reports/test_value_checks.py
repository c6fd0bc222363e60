"""Report configs that must be refused before they reach a database, and a column whose type
changed, detected at bootstrap on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from changefeed.cli import main
from changefeed.processors.reports import (
    DataSourceConfig,
    ReportConfigError,
    ReportSchemaError,
    ReportTableProcessor,
    load_data_source,
)

SPEC: dict[str, Any] = {
    "name": "cases",
    "table": "report_cases",
    "columns": [{"name": "owner"}, {"name": "age", "type": "integer"}],
}


@pytest.mark.parametrize(
    "new_type, old, new", [("string", "integer", "string"), ("date", "integer", "date")]
)
def test_a_column_whose_type_changed_fails_bootstrap_naming_it(
    db_url: str, new_type: str, old: str, new: str
) -> None:
    """With ``auto_rebuild: false``; by default the table is rebuilt (tests/test_rebuild.py)."""
    first = ReportTableProcessor(SPEC, db_url)
    first.bootstrap()
    first.close()
    columns = [{"name": "owner"}, {"name": "age", "type": new_type}]
    second = ReportTableProcessor(dict(SPEC, columns=columns, auto_rebuild=False), db_url)
    try:
        with pytest.raises(ReportSchemaError) as info:
            second.bootstrap()
        message = str(info.value)
        assert f"columns retyped: age ({old} -> {new})" in message
        assert "changefeed reports rebuild cases" in message and "auto_rebuild" in message
        rebuilt = ReportTableProcessor(dict(SPEC, columns=columns), db_url)
        rebuilt.bootstrap()
        assert str(rebuilt.rebuild_needed) == f"columns retyped: age ({old} -> {new})"
        rebuilt.close()
        # unchanged types (as each database reflects them) pass
        same = ReportTableProcessor(SPEC, db_url)
        assert same.migrate() == []
        same.close()
    finally:
        second.close()


def test_every_column_type_round_trips_through_reflection(db_url: str) -> None:
    kinds = ["string", "integer", "float", "decimal", "boolean", "date", "datetime", "json"]
    spec = dict(SPEC, columns=[{"name": f"c_{k}", "type": k} for k in kinds])
    proc = ReportTableProcessor(spec, db_url)
    proc.bootstrap()
    assert proc.migrate() == []
    proc.close()


@pytest.mark.parametrize(
    "columns, needle",
    [
        (
            [{"name": "owner"}, {"name": "Owner"}],
            "duplicate column 'Owner' \\(also columns\\[0\\] as 'owner'",
        ),
        ([{"name": "DOC_ID"}], "system column"),
        ([{"name": "Row_Num"}], "system column"),
    ],
)
def test_names_clashing_case_insensitively_are_refused(
    columns: list[dict[str, Any]], needle: str
) -> None:
    with pytest.raises(ReportConfigError, match=needle):
        DataSourceConfig.from_dict(dict(SPEC, columns=columns))


def _nested(depth: int) -> str:
    return "columns: [{name: a, expression: " + "[" * depth + "]" * depth + "}]\n"


BOMB = "\n".join(
    ["name: bomb", "table: t", "a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    + ["columns: [{name: a, expression: *i}]"]
)

MANY_ALIASES = "name: n\ntable: t\nx: &x 1\ncolumns: [" + ", ".join(["*x"] * 101) + "]\n"


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("latin1.yaml", "name: caf\xe9\n".encode("latin-1"), "UTF-8"),
        ("deep.yaml", ("name: d\ntable: t\n" + _nested(5000)).encode(), "nested"),
        (
            "deep.json",
            b'{"name": "d", "columns": ' + b"[" * 100000 + b"]" * 100000 + b"}",
            "nested",
        ),
        ("bomb.yaml", BOMB.encode(), "alias"),
        ("aliases.yaml", MANY_ALIASES.encode(), "more than 100 YAML aliases"),
        ("big.yaml", b"name: big\n" + b"#" * (1 << 20) + b"\n", "MiB"),
    ],
    ids=["latin1", "deep-yaml", "deep-json", "alias-bomb", "many-aliases", "too-big"],
)
def test_bad_files_exit_2_with_one_line_quickly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes, needle: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ReportConfigError, match=needle):
        load_data_source(path)
    started = time.monotonic()
    with pytest.raises(SystemExit) as info:
        main(["reports", "validate", str(path)])
    _, err = capsys.readouterr()
    assert time.monotonic() - started < 10
    assert info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err


def _filter_bomb(fmt: str) -> str:
    """A data source whose filter, nine levels of ten aliases (90, under the limit), expands
    to 10^9 ``equals`` clauses: compiled before the size check, it never finishes."""
    levels = ["f0: &f0 {type: equals, property_name: x, value: 1}"] + [
        f"f{i}: &f{i} {{type: and, filters: [{', '.join([f'*f{i - 1}'] * 10)}]}}"
        for i in range(1, 10)
    ]
    if fmt == "hq":
        head = [
            "domain: d",
            "referenced_doc_type: CommCareCase",
            "table_id: t",
            "named_filters:",
            *(f"  {line}" for line in levels),
            "configured_filter: *f9",
            "configured_indicators: [{type: count, column_id: n}]",
        ]
    else:
        head = ["name: bomb", "table: t", "filter: *f9", "columns: [{name: a}]"]
        head = [*head[:2], "x:", *(f"  {line}" for line in levels), *head[2:]]
    return "\n".join(head) + "\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", ["ours", "hq"])
def test_an_alias_bomb_in_the_filter_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_filter_bomb(fmt))
    with pytest.raises(ReportConfigError, match="too large"):
        load_data_source(path)
    with pytest.raises(SystemExit) as info:
        main(["reports", "validate", str(path)])
    _, err = capsys.readouterr()
    assert info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "too large" in err and "Traceback" not in err


def test_a_few_anchors_still_work(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "name: ok\ntable: t\nx: &owner {type: property_name, property_name: owner}\n"
        "columns: [{name: a, expression: *owner}, {name: b, expression: *owner}]\n"
    )
    with pytest.raises(ReportConfigError, match="x: unknown field"):
        load_data_source(path)
    path.write_text(
        "name: ok\ntable: t\n"
        "columns: [{name: a, expression: &owner {type: property_name, property_name: owner}},"
        " {name: b, expression: *owner}]\n"
    )
    assert [c.name for c in load_data_source(path).columns] == ["a", "b"]


def test_rebuild_hint_names_the_sqlite_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("CREATE TABLE report_cases (doc_id TEXT, row_num INTEGER, owner BIGINT)")
        )
    engine.dispose()
    proc = ReportTableProcessor(dict(SPEC, auto_rebuild=False), url)
    with pytest.raises(ReportSchemaError, match=r"owner \(integer -> string\).*not compared"):
        proc.bootstrap()
    proc.close()
