"""``changefeed reports add|remove|list|enable|reload`` on the data sources of
`ReportTablesProcessor`s, through the real entry point."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from changefeed.app import App
from changefeed.pillow import Pillow
from changefeed.processors.reports import ReportTablesProcessor, SQLDataSourceProvider, StateStore
from changefeed.processors.reports.states import BACKFILLING, LIVE, QUARANTINED
from changefeed.stores.memory import MemoryDocumentStore
from tests._cli import cf_in_process

APP = "tests.cli.test_reports_multi_cli:make_app"


def make_app() -> App:
    """One pillow taking every data source of the table, or (``MULTI_SPLIT``) two pillows
    whose selections overlap on ``b`` and both miss ``c``."""
    base = Path(os.environ["MULTI_DIR"])
    app = App(f"sqlite:///{base / 'log.db'}", f"sqlite:///{base / 'state.db'}")
    app.document_stores.register(MemoryDocumentStore("docs"))
    reports = f"sqlite:///{base / 'reports.db'}"
    selections: dict[str, dict[str, list[str]]] = {"reports": {}}
    if os.environ.get("MULTI_SPLIT"):
        selections = {"p1": {"include": ["a", "b"]}, "p2": {"exclude": ["a", "c"]}}
    for name, selection in selections.items():

        def pillow(a: App, name: str = name, selection: dict[str, list[str]] = selection) -> Pillow:
            processor = ReportTablesProcessor(SQLDataSourceProvider(reports), reports, **selection)
            return a.constructed_pillow(name, ["case"], [processor])

        app.add_pillow(name, pillow)
    return app


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("MULTI_DIR", str(tmp_path))
    monkeypatch.delenv("MULTI_SPLIT", raising=False)
    for name in "abcd":
        spec = {"name": name, "table": f"report_{name}", "columns": [{"name": "owner"}]}
        (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    yield tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return cf_in_process(capsys, *args, app=APP)


def states(workdir: Path) -> StateStore:
    return StateStore(sa.create_engine(f"sqlite:///{workdir / 'reports.db'}"))


def test_add_list_remove(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "reports", "add", str(workdir / "a.json"))
    assert code == 0, err
    assert out.strip() == "added a (table report_a) to the data sources of reports"
    assert states(workdir).generation() == 1  # running pillows are told at once
    assert run(capsys, "reports", "add", str(workdir / "b.json"))[0] == 0
    assert run(capsys, "bootstrap", "reports")[0] == 0
    code, out, _ = run(capsys, "reports", "list", "--json")
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(e["name"], e["state"], e["pillow"], e["table"]) for e in listed] == [
        ("a", LIVE, "reports", "report_a"),
        ("b", LIVE, "reports", "report_b"),
    ]
    code, out, _ = run(capsys, "reports", "list")
    assert (
        out.splitlines()[0] == "a\tpillow=reports\ttable=report_a\tstate=live\tcolumns=owner:string"
    )
    code, out, _ = run(capsys, "reports", "remove", "a")
    assert code == 0 and out.strip() == "removed a from the data sources of reports"
    code, out, _ = run(capsys, "reports", "list", "--json")
    assert [json.loads(line)["name"] for line in out.splitlines()] == ["b"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("reports", "remove", "nope"), "no data source 'nope' in the data sources of reports"),
        (("reports", "add", "missing.json"), "cannot read missing.json"),
        (("reports", "enable", "nope"), "no data source 'nope' known to the reports databases"),
        (("reports", "add", "bad.json"), "bad.json: columns: required field is missing"),
    ],
)
def test_bad_input_is_one_line(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    message: str,
) -> None:
    (workdir / "bad.json").write_text(json.dumps({"name": "x", "table": "t"}))
    monkeypatch.chdir(workdir)
    code, _, err = run(capsys, *args)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and message in err


def test_enable_and_reload(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "reports", "add", str(workdir / "a.json"))
    run(capsys, "bootstrap", "reports")
    store = states(workdir)
    code, _, err = run(capsys, "reports", "enable", "a")
    assert code == 2 and "data source 'a' is live, not quarantined" in err
    store.set_state("a", QUARANTINED, "table dropped")
    code, out, _ = run(capsys, "reports", "list")
    assert "state=quarantined (table dropped)" in out
    before = store.generation()
    code, out, _ = run(capsys, "reports", "enable", "a")
    assert code == 0 and "enabled a" in out
    assert store.read()["a"].state == BACKFILLING and store.generation() == before + 1
    code, out, _ = run(capsys, "reports", "reload")
    assert code == 0 and store.generation() == before + 2


def test_rebuild_asks_the_running_pillow_to_back_fill(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "reports", "add", str(workdir / "a.json"))
    code, _, err = run(capsys, "reports", "rebuild", "a")
    assert code == 2 and "data source 'a' is not bootstrapped yet (pillow reports)" in err
    run(capsys, "bootstrap", "reports")
    code, _, err = run(capsys, "reports", "rebuild", "a")
    assert code == 0 and "rebuild of a requested: pillow reports back-fills it" in err
    assert states(workdir).read()["a"].state == BACKFILLING
    code, _, err = run(capsys, "reports", "rebuild", "nope")
    assert code == 2 and "unknown report 'nope'" in err


def test_list_check_names_data_sources_in_no_selection_or_several(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MULTI_SPLIT", "1")
    for name in "abcd":  # both pillows read one table: no --pillow needed
        assert run(capsys, "reports", "add", str(workdir / f"{name}.json"))[0] == 0
    code, out, err = run(capsys, "reports", "list", "--check")
    assert code == 1
    assert err.splitlines() == [
        "b: in several pillows' selections (p1, p2)",
        "c: in no pillow's selection",
    ]
    assert sorted(line.split("\t")[:2] for line in out.splitlines()) == [
        ["a", "pillow=p1"],
        ["b", "pillow=p1"],
        ["b", "pillow=p2"],
        ["d", "pillow=p2"],
    ]
    monkeypatch.delenv("MULTI_SPLIT")
    assert run(capsys, "reports", "list", "--check")[0] == 0


def test_a_data_source_row_that_does_not_validate_is_listed_and_checked(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "reports", "add", str(workdir / "a.json"))
    run(capsys, "reports", "add", str(workdir / "b.json"))
    provider = SQLDataSourceProvider(f"sqlite:///{workdir / 'reports.db'}")
    with provider.engine.begin() as conn:  # edited by hand: no columns
        t = provider.table
        conn.execute(t.update().where(t.c.name == "b").values(spec='{"name": "b"}'))
    provider.close()
    code, out, err = run(capsys, "bootstrap", "reports")  # the others are not held back
    assert code == 0, err
    code, out, _ = run(capsys, "reports", "list")
    assert code == 0 and "a\tpillow=reports" in out
    assert "changefeed_data_sources[b]\tpillow=reports\tskipped: " in out
    assert "table: required field is missing" in out
    code, _, err = run(capsys, "reports", "list", "--check")
    assert code == 1 and "changefeed_data_sources[b]: invalid (" in err
