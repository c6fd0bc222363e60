"""Rebuilds without downtime: a shadow table (or a new index) filled next to the live one and
swapped in, under a running pillow and writer, with readers reading throughout."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from elasticsearch import Elasticsearch

from changefeed.app import App
from changefeed.change import ChangeMeta
from changefeed.pillow import Pillow
from changefeed.processors.elastic import ElasticProcessor
from changefeed.processors.reports import ReportTableProcessor, definition_hash
from changefeed.rebuild import rebuild, rebuilding
from changefeed.stores.sql import SQLDocumentStore
from tests._cli import cf_in_process

APP = "tests.test_rebuild:make_app"
SPEC: dict[str, Any] = {
    "name": "people",
    "table": "report_people",
    "filter": {"type": "exists", "property_name": "name"},
    "columns": [{"name": "name"}, {"name": "age", "type": "integer"}],
}
CHANGED: dict[str, Any] = {
    "name": "people",
    "table": "report_people",
    "filter": {"type": "compare", "property_name": "age", "operator": ">=", "value": 0},
    "columns": [{"name": "name"}, {"name": "age", "type": "string"}, {"name": "city"}],
}


def make_app() -> App:
    """Built by the tests and by the CLI: one pillow feeding the report (and, when an
    Elasticsearch URL is set, an index) from a SQLite document store."""
    base = Path(os.environ["REBUILD_DIR"])
    reports = os.environ["REBUILD_REPORTS"]
    es = os.environ.get("REBUILD_ES")
    app = App(f"sqlite:///{base / 'log.db'}", f"sqlite:///{base / 'state.db'}")
    store = SQLDocumentStore(f"sqlite:///{base / 'docs.db'}", "docs", data_source_name="people")
    store.create()
    app.document_stores.register(store)

    def pillow(a: App) -> Pillow:
        spec = json.loads((base / "spec.json").read_text())
        processors: list[Any] = [ReportTableProcessor(spec, reports)]
        if es:
            mappings = json.loads(os.environ.get("REBUILD_MAPPINGS", "{}"))
            processors.append(
                ElasticProcessor(es, os.environ["REBUILD_ALIAS"], mappings=mappings, refresh=True)
            )
        return a.constructed_pillow("people", ["people"], processors, max_wait=0.05)

    app.add_pillow("people", pillow)
    return app


class World:
    def __init__(self, base: Path, reports: str) -> None:
        self.base = base
        self.app = make_app()
        self.store = next(iter(self.app.document_stores))
        assert isinstance(self.store, SQLDocumentStore)
        self.reports = reports
        self.engine = sa.create_engine(reports)
        self.lock = threading.Lock()

    def save(self, doc_id: str, doc: dict[str, Any], publish: bool = True) -> None:
        with self.lock:
            version = self.store.save(doc_id, doc)
            if publish:
                self.app.publish(ChangeMeta(doc_id, "sql", "people", version=version), "people")

    def table(self, columns: str = "doc_id, name, age") -> dict[str, tuple[Any, ...]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT {columns} FROM report_people")).all()
        return {r[0]: tuple(r[1:]) for r in rows}

    def expected(self) -> dict[str, tuple[Any, ...]]:
        return {
            doc_id: (doc["name"], doc.get("age"))
            for doc_id, doc in self.store.iter_documents()
            if doc.get("name")
        }

    def tables(self) -> set[str]:
        return set(sa.inspect(self.engine).get_table_names())

    def wait_caught_up(self) -> None:
        head = self.app.change_feed(["people"]).latest_offsets()
        deadline = time.monotonic() + 120
        while self.app.checkpoints.get("people") != head and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.app.checkpoints.get("people") == head

    def close(self) -> None:
        self.app.close()
        self.engine.dispose()


def set_spec(base: Path, spec: dict[str, Any]) -> None:
    (base / "spec.json").write_text(json.dumps(spec))


@pytest.fixture(params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    reports = (
        f"sqlite:///{tmp_path / 'reports.db'}"
        if request.param == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    monkeypatch.setenv("REBUILD_DIR", str(tmp_path))
    monkeypatch.setenv("REBUILD_REPORTS", reports)
    set_spec(tmp_path, SPEC)
    w = World(tmp_path, reports)
    yield w
    w.close()


class Reader(threading.Thread):
    """Reads the report table in a loop on a connection of its own, recording every error
    and the smallest row count it saw."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.errors: list[str] = []
        self.smallest: int | None = None
        self.reads = 0
        self.halt = threading.Event()

    def run(self) -> None:
        engine = sa.create_engine(self.url)
        try:
            while not self.halt.is_set():
                try:
                    with engine.connect() as conn:
                        n = conn.execute(sa.text("SELECT count(*) FROM report_people")).scalar_one()
                except Exception as exc:  # noqa: BLE001 - what the test is looking for
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                self.reads += 1
                self.smallest = n if self.smallest is None else min(self.smallest, n)
        finally:
            engine.dispose()


def writer(world: World, halt: threading.Event, seed: int) -> threading.Thread:
    def write() -> None:
        i = 0
        while not halt.is_set():
            world.save(f"p{(i * 7) % seed:04d}", {"name": f"w{i}", "age": i})
            world.save(f"n{i:05d}", {"name": f"new{i}", "age": -i})
            i += 1
            time.sleep(0.002)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_rebuild_under_a_running_writer_keeps_the_table_readable(world: World) -> None:
    seed = 400
    for i in range(seed):
        world.save(f"p{i:04d}", {"name": f"n{i}", "age": i}, publish=i % 2 == 0)
    live = world.app.get_pillow("people")
    live.bootstrap()
    live.run(forever=False)
    results = rebuild(world.app, "people")  # first: fills in the unpublished half
    assert results[0].documents == seed and len(world.table()) == seed
    runner = threading.Thread(target=live.run, daemon=True)
    runner.start()
    reader = Reader(world.reports)
    reader.start()
    halt = threading.Event()
    writing = writer(world, halt, seed)
    try:
        time.sleep(0.2)
        results = rebuild(world.app, "people", chunk_size=50)
        reads_at_swap = reader.reads
        time.sleep(0.2)
    finally:
        halt.set()
        writing.join()
    world.wait_caught_up()
    live.stop()
    runner.join(30)
    reader.halt.set()
    reader.join(30)
    assert not runner.is_alive()
    [result] = results
    assert not result.interrupted and result.documents >= seed and result.target != "report_people"
    assert reader.errors == []
    assert reads_at_swap > 0 and reader.reads > reads_at_swap
    assert reader.smallest is not None and reader.smallest >= seed  # never missing, never empty
    assert world.table() == world.expected()
    # the shadow became the table; nothing is left behind
    assert world.tables() == {"report_people", "changefeed_report_definitions"}
    for processor in live.processors:
        processor.close()


def test_changed_definition_is_rebuilt_next_to_the_running_pillow(world: World) -> None:
    for i in range(120):
        world.save(f"p{i:04d}", {"name": f"n{i}", "age": i, "city": f"c{i % 3}"})
    first = world.app.get_pillow("people")
    first.bootstrap()
    first.run(forever=False)
    assert len(world.table()) == 120
    set_spec(world.base, CHANGED)  # the deploy: age retyped, city added, filter changed
    pillow = world.app.get_pillow("people")
    report = pillow.processors[0]
    assert isinstance(report, ReportTableProcessor)
    reader = Reader(world.reports)
    reader.start()
    with rebuilding(world.app, pillow) as background:
        assert background is not None
        change = str(report.rebuild_needed)
        assert "columns added: city (string)" in change
        assert "columns retyped: age (integer -> string)" in change and "filter changed" in change
        runner = threading.Thread(target=pillow.run, daemon=True)
        runner.start()
        for i in range(120, 160):  # written while the rebuild runs: into the old table first
            world.save(f"p{i:04d}", {"name": f"n{i}", "age": i, "city": "late"})
        world.save("p0000", {"name": None, "age": 5, "city": "x"})  # matches only the new filter
        background.join(120)
        assert background.error is None and background.results
        world.save("p9999", {"name": "after", "age": 1, "city": "y"})
        world.wait_caught_up()
        pillow.stop()
        runner.join(30)
    reader.halt.set()
    reader.join(30)
    assert reader.errors == [] and reader.smallest is not None and reader.smallest >= 120
    rows = world.table("doc_id, name, age, city")
    expected = {
        doc_id: (doc.get("name"), str(doc["age"]), doc.get("city"))
        for doc_id, doc in world.store.iter_documents()
    }
    assert rows == expected and rows["p0000"] == (None, "5", "x")
    assert report.config is report.target and report.rebuild_needed is None
    with world.engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT definition_hash FROM changefeed_report_definitions")
        ).scalar_one()
    assert stored == definition_hash(report.target)
    assert world.tables() == {"report_people", "changefeed_report_definitions"}
    for processor in pillow.processors + first.processors:
        processor.close()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return cf_in_process(capsys, *args, app=APP)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (
            dict(SPEC, columns=[*SPEC["columns"], {"name": "city"}]),
            "columns added: city (string)",
        ),
        (dict(SPEC, columns=SPEC["columns"][:1]), "columns removed: age"),
        (
            dict(SPEC, columns=[{"name": "name"}, {"name": "age", "type": "float"}]),
            "columns retyped: age (integer -> float)",
        ),
        (dict(SPEC, filter={"type": "exists", "property_name": "age"}), "filter changed"),
    ],
    ids=["added", "removed", "retyped", "filter"],
)
def test_changed_definition_refused_or_rebuilt_by_the_cli(
    world: World, capsys: pytest.CaptureFixture[str], spec: dict[str, Any], named: str
) -> None:
    for i in range(30):
        world.save(f"p{i:04d}", {"name": f"n{i}", "age": i if i % 5 else None, "city": "c"})
    assert cli(capsys, "run", "people", "--once")[0] == 0
    before = world.table()
    set_spec(world.base, dict(spec, auto_rebuild=False))
    for args in (("bootstrap", "people"), ("run", "people", "--once")):
        code, out, err = cli(capsys, *args)
        assert code == 2, err
        # (run prints its start line first)
        lines = [line for line in err.strip().splitlines() if "running until" not in line]
        assert len(lines) == 1 and "Traceback" not in err
        assert named in lines[0] and "auto_rebuild is false" in lines[0]
    assert world.table() == before  # nothing changed
    set_spec(world.base, spec)  # auto_rebuild defaults to true
    code, _, err = cli(capsys, "bootstrap", "people")
    assert code == 0, err
    assert "swapped in" in err
    with world.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM report_people")).mappings().all()
    names = {c["name"] for c in spec["columns"]}
    assert {k for k in rows[0] if k not in ("doc_id", "row_num")} == names
    matching = [
        d
        for d, doc in world.store.iter_documents()
        if doc.get(spec["filter"]["property_name"]) is not None
    ]
    assert sorted(r["doc_id"] for r in rows) == sorted(matching)
    # recorded: the next start has nothing to do
    assert cli(capsys, "bootstrap", "people")[0] == 0
    assert "swapped in" not in capsys.readouterr().err


def test_reports_rebuild_cli_swaps_and_resumes(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(50):
        world.save(f"p{i:04d}", {"name": f"n{i}", "age": i}, publish=False)
    assert cli(capsys, "bootstrap")[0] == 0
    assert world.table() == {}
    code, _, err = cli(capsys, "reports", "rebuild", "people", "--no-progress", "--chunk-size", "7")
    assert code == 0, err
    assert "50 documents into report_people__shadow_" in err and "swapped in" in err
    assert world.table() == world.expected()
    assert world.tables() == {"report_people", "changefeed_report_definitions"}
    code, _, err = cli(capsys, "reports", "rebuild", "nope")
    assert code == 2 and "unknown report 'nope'" in err


@pytest.mark.slow
def test_elasticsearch_new_index_and_alias_swap(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    elasticsearch_url: str,
    es_alias: str,
) -> None:
    reports = f"sqlite:///{tmp_path / 'reports.db'}"
    for key, value in {
        "REBUILD_DIR": str(tmp_path),
        "REBUILD_REPORTS": reports,
        "REBUILD_ES": elasticsearch_url,
        "REBUILD_ALIAS": es_alias,
    }.items():
        monkeypatch.setenv(key, value)
    set_spec(tmp_path, SPEC)
    world = World(tmp_path, reports)
    es = Elasticsearch(elasticsearch_url)
    try:
        for i in range(60):
            world.save(f"p{i:04d}", {"name": f"n{i}", "age": i})
        assert cli(capsys, "run", "people", "--once")[0] == 0
        [first] = es.indices.get_alias(name=es_alias).body
        errors: list[str] = []
        counts: list[int] = []
        halt = threading.Event()

        def search() -> None:
            while not halt.is_set():
                try:
                    counts.append(int(es.count(index=es_alias)["count"]))
                except Exception as exc:  # noqa: BLE001 - what the test is looking for
                    errors.append(f"{type(exc).__name__}: {exc}")

        searching = threading.Thread(target=search, daemon=True)
        searching.start()
        world.save("p0000", {"name": "changed", "age": -1}, publish=False)
        code, _, err = cli(capsys, "reindex", "people", "--new-index", "--no-progress")
        halt.set()
        searching.join(30)
        assert code == 0, err
        [second] = es.indices.get_alias(name=es_alias).body
        assert second != first and second.startswith(first)
        assert not es.indices.exists(index=first)  # the old index is gone
        assert errors == [] and counts and min(counts) == 60
        assert es.get(index=es_alias, id="p0000")["_source"]["name"] == "changed"
        assert world.table()["p0000"] == ("changed", -1)  # the report table was swapped too
        # changed mappings: a plain reindex notices and builds a new index by itself
        monkeypatch.setenv(
            "REBUILD_MAPPINGS", json.dumps({"properties": {"age": {"type": "long"}}})
        )
        code, _, err = cli(capsys, "reindex", "people", "--no-progress")
        assert code == 0, err
        assert "mappings or settings changed" in err
        [third] = es.indices.get_alias(name=es_alias).body
        assert not third.startswith(first) and not es.indices.exists(index=second)
        assert es.count(index=es_alias)["count"] == 60
    finally:
        es.close()
        world.close()
