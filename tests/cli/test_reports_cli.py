"""``changefeed reports ...``, ``reindex`` and ``bootstrap`` through the real entry point."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from changefeed.app import App
from changefeed.change import ChangeMeta
from changefeed.processors.reports import ReportTableProcessor
from changefeed.stores.memory import MemoryDocumentStore
from tests._cli import cf_in_process

CASES = """\
name: cases
table: report_cases
filter: {type: equals, property_name: type, value: case}
columns:
  - {name: owner}
  - {name: age, type: integer}
"""

APP = "tests.cli.test_reports_cli:make_app"


def make_app() -> App:
    """The app the CLI loads: one pillow feeding the report defined in $REPORTS_TEST_DIR."""
    base = Path(os.environ["REPORTS_TEST_DIR"])
    app = App(f"sqlite:///{base / 'log.db'}", f"sqlite:///{base / 'state.db'}")
    store = MemoryDocumentStore("cases")
    for i in range(int(os.environ.get("REPORTS_TEST_DOCS", "30"))):
        store.save(f"c{i:03d}", {"type": "case" if i % 3 else "other", "owner": f"o{i}", "age": i})
    app.document_stores.register(store)
    reports = f"sqlite:///{base / 'reports.db'}"
    app.add_pillow(
        "cases",
        lambda a: a.constructed_pillow(
            "cases", ["case"], [ReportTableProcessor(base / "cases.yaml", reports)]
        ),
    )
    return app


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "cases.yaml").write_text(CASES)
    monkeypatch.setenv("REPORTS_TEST_DIR", str(tmp_path))
    yield tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return cf_in_process(capsys, *args, app=APP)


def table_rows(workdir: Path) -> list[tuple[str, str, int]]:
    engine = sa.create_engine(f"sqlite:///{workdir / 'reports.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT doc_id, owner, age FROM report_cases ORDER BY doc_id"))
        out = [tuple(r) for r in rows]
    engine.dispose()
    return out  # type: ignore[return-value]


def test_validate(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "reports", "validate", str(workdir / "cases.yaml"))
    assert code == 0 and "ok (cases -> table report_cases, 2 columns)" in out
    bad = workdir / "bad.yaml"
    bad.write_text(
        CASES.replace(
            "{name: age, type: integer}", "{name: age, type: integer, expression: {type: foo}}"
        )
    )
    code, _, err = run(capsys, "reports", "validate", str(bad))
    assert code == 2
    assert err.strip().splitlines() == [
        "changefeed: error: bad.yaml: columns[1].expression.type: unknown expression type 'foo' "
        "(known: array_index, conditional, constant, default, dict, identity, iterator, join, "
        "length, lower, nested, property_name, property_path, root_doc, split_string, strip, "
        "switch, to_bool, to_date, to_datetime, to_decimal, to_float, to_int, to_list, to_str, "
        "upper)"
    ]


def test_bootstrap_list_and_rebuild(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "bootstrap")
    assert code == 0 and "cases: bootstrapped report:cases" in out
    assert table_rows(workdir) == []
    code, out, _ = run(capsys, "reports", "list")
    assert "cases\tpillow=cases\ttable=report_cases\tcolumns=owner:string, age:integer" in out
    code, _, err = run(capsys, "reports", "rebuild", "cases", "--no-progress")
    assert code == 0 and "cases/report:cases: 30 documents into report_cases__shadow_" in err
    rows = table_rows(workdir)
    assert len(rows) == 20 and rows[0] == ("c001", "o1", 1)
    code, _, err = run(capsys, "reports", "rebuild", "nope")
    assert code == 2 and "unknown report 'nope' (known: cases)" in err


def test_reindex_and_bootstrap_errors(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    app.publish(ChangeMeta("c001", "memory", "cases"), "case")
    app.close()
    code, _, err = run(capsys, "reindex", "cases")
    assert code == 0 and "cases: 30 documents from the stores, 0 changes replayed" in err
    assert len(table_rows(workdir)) == 20
    code, _, err = run(capsys, "reindex", "cases", "--resume")
    assert code == 2 and "no interrupted reindex of 'cases' to resume" in err
    code, _, err = run(capsys, "reindex", "cases", "--reset", "--resume")
    assert code == 2 and "cannot be combined" in err
    code, _, err = run(capsys, "reindex", "nope")
    assert code == 2 and "unknown pillow 'nope'" in err
    # a table of the same name that is not a report table: a clear error, no traceback
    (workdir / "cases.yaml").write_text(CASES.replace("report_cases", "not_a_report"))
    engine = sa.create_engine(f"sqlite:///{workdir / 'reports.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE not_a_report (x INTEGER)"))
    engine.dispose()
    code, _, err = run(capsys, "bootstrap", "cases")
    assert code == 2 and "table 'not_a_report' exists but has no doc_id, row_num column" in err
    assert "Traceback" not in err
