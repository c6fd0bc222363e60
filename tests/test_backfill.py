"""Data sources added, changed and removed next to a running pillow (`rebuild.Backfiller`),
and a back-fill killed with SIGKILL that resumes at the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from changefeed.app import App
from changefeed.change import ChangeMeta
from changefeed.pillow import Pillow
from changefeed.processors.reports import (
    ReportTablesProcessor,
    SQLDataSourceProvider,
    StateStore,
)
from changefeed.processors.reports.states import BACKFILLING, LIVE, QUARANTINED, REMOVED
from changefeed.rebuild import rebuilding
from changefeed.stores.sql import SQLDocumentStore
from tests._cli import ROOT
from tests.harness._util import wait_until

DOMAINS = ("a", "b")


def source(domain: str, columns: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "name": f"cases-{domain}",
        "table": f"report_cases_{domain}",
        "filter": {"type": "equals", "property_name": "domain", "value": domain},
        "columns": columns or [{"name": "owner"}, {"name": "age", "type": "integer"}],
    }


def make_app() -> App:
    """Built by the tests and by the subprocess: one pillow whose data sources are rows of
    the reports database, read from a SQLite document store."""
    base = Path(os.environ["BACKFILL_DIR"])
    reports = os.environ["BACKFILL_REPORTS"]
    app = App(f"sqlite:///{base / 'log.db'}", f"sqlite:///{base / 'state.db'}")
    store = SQLDocumentStore(f"sqlite:///{base / 'docs.db'}", "docs", data_source_name="cases")
    store.create()
    app.document_stores.register(store)
    chunk = int(os.environ.get("BACKFILL_CHUNK", "1000"))

    def pillow(a: App) -> Pillow:
        processor = ReportTablesProcessor(
            SQLDataSourceProvider(reports), reports, poll_interval=0.05, backfill_chunk_size=chunk
        )
        return a.constructed_pillow("cases", ["cases"], [processor], max_wait=0.05)

    app.add_pillow("cases", pillow)
    return app


class World:
    def __init__(self, base: Path, reports: str) -> None:
        self.base = base
        self.app = make_app()
        self.store = next(iter(self.app.document_stores))
        assert isinstance(self.store, SQLDocumentStore)
        self.engine = sa.create_engine(reports)
        self.provider = SQLDataSourceProvider(reports)

    def save(self, doc_id: str, doc: dict[str, Any]) -> None:
        version = self.store.save(doc_id, doc)
        meta = ChangeMeta(doc_id, "sql", "cases", version=version, domain=doc["domain"])
        self.app.publish(meta, "cases")

    def rows(self, table: str, columns: str = "doc_id, owner, age") -> set[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            return {tuple(r) for r in conn.execute(sa.text(f"SELECT {columns} FROM {table}"))}

    def expected(self, domain: str) -> set[tuple[Any, ...]]:
        return {
            (doc_id, doc["owner"], doc["age"])
            for doc_id, doc in self.store.iter_documents()
            if doc["domain"] == domain
        }

    def states(self) -> dict[str, str]:
        return {name: s.state for name, s in StateStore(self.engine).read().items()}

    def close(self) -> None:
        self.app.close()
        self.engine.dispose()
        self.provider.close()


@pytest.fixture
def world(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("BACKFILL_DIR", str(tmp_path))
    monkeypatch.setenv("BACKFILL_REPORTS", db_url)
    w = World(tmp_path, db_url)
    yield w
    w.close()


def test_add_change_and_remove_next_to_a_running_pillow(world: World) -> None:
    for i in range(60):
        world.save(f"d{i:03d}", {"domain": DOMAINS[i % 2], "owner": f"o{i}", "age": i})
    world.provider.add(source("a"))
    pillow = world.app.get_pillow("cases")
    processor = pillow.processors[0]
    assert isinstance(processor, ReportTablesProcessor)
    with rebuilding(world.app, pillow) as background:
        assert background is None  # nothing to rebuild: a new pillow starts live
        runner = threading.Thread(target=pillow.run, daemon=True)
        runner.start()
        wait_until(lambda: world.rows("report_cases_a") == world.expected("a"), "a written")
        # added while running: created, back-filled from the store, then live
        world.provider.add(source("b"))
        StateStore(world.engine).request_reload()
        for i in range(60, 80):  # written while the back-fill runs
            world.save(f"d{i:03d}", {"domain": DOMAINS[i % 2], "owner": f"o{i}", "age": i})
        wait_until(lambda: world.states().get("cases-b") == LIVE, "b back-filled")
        world.save("d001", {"domain": "b", "owner": "late", "age": 1})
        wait_until(lambda: world.rows("report_cases_b") == world.expected("b"), "b complete")
        # changed: rebuilt into a shadow with the new column and swapped in
        world.provider.add(source("a", [{"name": "owner"}, {"name": "age"}, {"name": "x"}]))
        StateStore(world.engine).request_reload()
        wait_until(lambda: "x" in columns(world, "report_cases_a"), "a swapped")
        wait_until(lambda: world.states().get("cases-a") == LIVE, "a rebuilt")
        want_a = {(d, o, str(a)) for d, o, a in world.expected("a")}
        wait_until(lambda: world.rows("report_cases_a") == want_a, "a complete")
        # removed: no longer written, its table kept
        world.provider.remove("cases-b")
        StateStore(world.engine).request_reload()
        wait_until(lambda: world.states().get("cases-b") == REMOVED, "b removed")
        before = world.rows("report_cases_b")
        world.save("d003", {"domain": "b", "owner": "gone", "age": 3})
        world.save("d004", {"domain": "a", "owner": "seen", "age": 4})
        wait_until(lambda: ("d004", "seen", "4") in world.rows("report_cases_a"), "d004")
        assert world.rows("report_cases_b") == before
        pillow.stop()
        runner.join(30)
    stats = processor.stats()
    assert stats.sources["cases-a"].rows_written > 0
    for p in pillow.processors:
        p.close()


def test_a_back_fill_killed_with_sigkill_resumes(world: World, tmp_path: Path) -> None:
    for i in range(400):
        world.save(f"d{i:03d}", {"domain": "a", "owner": f"o{i}", "age": i})
    world.provider.add(source("other"))
    assert cf_run(tmp_path, "--once").returncode == 0  # the pillow exists; the log is read
    world.provider.add(source("a"))
    env = cf_env(tmp_path, chunk=1)
    child = subprocess.Popen(
        [sys.executable, "-m", "changefeed", "run", "cases"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        store = StateStore(world.engine)
        wait_until(lambda: progress(store, "cases-a") >= 5, "the back-fill under way")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    state = StateStore(world.engine).read()["cases-a"]
    assert state.state == BACKFILLING and state.progress < 400
    done = cf_run(tmp_path, "--once")
    assert done.returncode == 0, done.stderr
    assert "resumed" in done.stderr
    assert world.states()["cases-a"] == LIVE
    assert world.rows("report_cases_a") == world.expected("a")


def columns(world: World, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(world.engine).get_columns(table)}


def progress(store: StateStore, name: str) -> int:
    state = store.read().get(name)
    return state.progress if state is not None else 0


def cf_env(tmp_path: Path, chunk: int = 1000) -> dict[str, str]:
    return {
        **os.environ,
        "CHANGEFEED_APP": "tests.test_backfill:make_app",
        "BACKFILL_CHUNK": str(chunk),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }


def cf_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "changefeed", "run", "cases", *args],
        env=cf_env(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_enabled_while_stopped_back_fills_what_the_quarantine_skipped(
    world: World, tmp_path: Path
) -> None:
    world.provider.add(source("a"))
    world.save("d000", {"domain": "a", "owner": "o0", "age": 0})
    assert cf_run(tmp_path, "--once").returncode == 0
    assert world.rows("report_cases_a") == world.expected("a")
    # quarantined (as after failing batches), then written to while no pillow runs
    store = StateStore(world.engine)
    store.set_state("cases-a", QUARANTINED, "table dropped")
    assert cf_run(tmp_path, "--once").returncode == 0  # starts quarantined: skipped
    for i in range(1, 30):
        world.save(f"d{i:03d}", {"domain": "a", "owner": f"o{i}", "age": i})
    assert cf_run(tmp_path, "--once").returncode == 0
    assert world.rows("report_cases_a") == {("d000", "o0", 0)}
    enabled = subprocess.run(
        [sys.executable, "-m", "changefeed", "reports", "enable", "cases-a"],
        env=cf_env(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert enabled.returncode == 0, enabled.stderr
    done = cf_run(tmp_path, "--once")  # the pillow was stopped when it was enabled
    assert done.returncode == 0, done.stderr
    assert world.states()["cases-a"] == LIVE
    assert world.rows("report_cases_a") == world.expected("a")


def test_a_paced_back_fill_waits_in_proportion_to_its_work() -> None:
    from changefeed.rebuild import _Pace

    waits: list[float] = []
    pace = _Pace(0.25, waits.append)  # a quarter of the time: wait three times the work
    pace.mark -= 0.2  # a step that took 0.2 s
    pace()
    assert len(waits) == 1 and 0.6 <= waits[0] < 0.7
