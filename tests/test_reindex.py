"""Reindex: rebuild from the document stores, move the checkpoint, resume, run alongside."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from changefeed.app import App
from changefeed.change import Change, ChangeMeta, TopicPartition
from changefeed.pillow import Pillow
from changefeed.processors.base import ChangeFailure
from changefeed.processors.reports import ReportTableProcessor
from changefeed.reindex import ReindexError, reindex
from changefeed.stores.memory import MemoryDocumentStore
from changefeed.stores.sql import SQLDocumentStore
from tests.doubles.processors import RecordingProcessor

SPEC: dict[str, Any] = {
    "name": "people",
    "table": "report_people",
    "filter": {"type": "exists", "property_name": "name"},
    "columns": [{"name": "name"}, {"name": "age", "type": "integer"}],
}


class Env:
    def __init__(self, tmp_path: Path, store: Any = None, reports_url: str | None = None) -> None:
        self.app = App(f"sqlite:///{tmp_path / 'log.db'}", f"sqlite:///{tmp_path / 'state.db'}")
        # not `store or`: an empty memory store is falsy (it has a length)
        self.store = store if store is not None else MemoryDocumentStore("people")
        self.app.document_stores.register(self.store)
        self.reports_url = reports_url or f"sqlite:///{tmp_path / 'reports.db'}"
        self.spy = RecordingProcessor("Spy")  # records the ids it saw; a hook per batch
        self.app.add_pillow("people", self.make_pillow)

    def make_pillow(self, app: App) -> Pillow:
        return app.constructed_pillow(
            "people",
            ["people"],
            [ReportTableProcessor(SPEC, self.reports_url), self.spy],
            max_wait=0.05,
            reindex_stores=[self.store],
        )

    def save(self, doc_id: str, doc: dict[str, Any], publish: bool = True) -> None:
        version = self.store.save(doc_id, doc)
        if publish:
            self.app.publish(
                ChangeMeta(
                    doc_id,
                    self.store.data_source_type,
                    self.store.data_source_name,
                    version=version,
                ),
                "people",
            )

    def table(self) -> dict[str, tuple[Any, Any]]:
        engine = sa.create_engine(self.reports_url)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT doc_id, name, age FROM report_people")).all()
        engine.dispose()
        return {r[0]: (r[1], r[2]) for r in rows}

    def expected(self) -> dict[str, tuple[Any, Any]]:
        out = {}
        for doc_id, doc in self.store.iter_documents():
            if doc.get("name"):
                out[doc_id] = (doc["name"], doc.get("age"))
        return out


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.app.close()


def test_reindex_rebuilds_from_the_store_and_moves_the_checkpoint(env: Env) -> None:
    for i in range(250):
        env.save(f"p{i:04d}", {"name": f"n{i}", "age": i}, publish=i < 10)
    env.save("nameless", {"age": 1}, publish=False)
    result = reindex(env.app, "people", chunk_size=100)
    assert (result.documents, result.resumed, result.caught_up, result.failures) == (
        251,
        False,
        0,
        0,
    )
    assert env.table() == env.expected() and len(env.table()) == 250
    tp = TopicPartition("people", 0)
    assert env.app.checkpoints.get("people") == {tp: 10}
    entry = env.app.checkpoints.history("people")[0]
    assert (entry.old_offset, entry.new_offset) == (None, 10) and entry.reason.startswith("reindex")
    # finished: the next reindex starts over, it does not "resume" a finished one
    with pytest.raises(ReindexError, match="no interrupted reindex"):
        reindex(env.app, "people", resume=True)
    assert reindex(env.app, "people").resumed is False


def test_interrupted_reindex_resumes_after_the_last_finished_chunk(env: Env) -> None:
    for i in range(1000):
        env.save(f"p{i:04d}", {"name": f"n{i}", "age": i}, publish=False)

    def interrupt(batch: int) -> None:
        if batch == 3:
            raise KeyboardInterrupt

    env.spy.hook = interrupt
    with pytest.raises(KeyboardInterrupt):
        reindex(env.app, "people", chunk_size=100)
    # the report processor wrote chunk 3 before the interruption; progress says 2 chunks
    assert len(env.table()) == 300
    first_run = list(env.spy.seen)
    assert first_run == [f"p{i:04d}" for i in range(200)]
    env.spy.hook = None
    env.spy.clear()
    env.save("p0000", {"name": "changed", "age": 99}, publish=True)  # written while interrupted
    result = reindex(env.app, "people", chunk_size=100, resume=True)
    assert result.resumed and result.documents == 800 and result.caught_up == 1
    assert env.spy.seen[:800] == [f"p{i:04d}" for i in range(200, 1000)]
    assert env.spy.seen[800:] == ["p0000"]  # the catch-up pass replays the log since the start
    assert env.table() == env.expected() and env.table()["p0000"] == ("changed", 99)


def test_changes_during_the_reindex_are_not_missed(env: Env) -> None:
    for i in range(300):
        env.save(f"p{i:04d}", {"name": f"n{i}", "age": i}, publish=False)

    def write_behind_the_reindex(batch: int) -> None:
        if batch == 2:  # p0000 was already reindexed: only the log can bring its new value
            env.save("p0000", {"name": "late", "age": -1})
            env.save("p9999", {"name": "new", "age": 5})

    env.spy.hook = write_behind_the_reindex
    result = reindex(env.app, "people", chunk_size=100)
    assert result.caught_up == 2
    assert env.table() == env.expected()
    assert env.table()["p0000"] == ("late", -1) and env.table()["p9999"] == ("new", 5)
    # the log was empty when the reindex started: the live pillow will read those writes too
    assert env.app.checkpoints.get("people").get(TopicPartition("people", 0), 0) == 0


def test_live_pillow_runs_alongside(env: Env) -> None:
    for i in range(600):
        env.save(f"p{i:04d}", {"name": f"n{i}", "age": i}, publish=i % 3 == 0)
    live = env.make_pillow(env.app)
    live.bootstrap()
    runner = threading.Thread(target=live.run, daemon=True)
    runner.start()
    stop_writing = threading.Event()

    def writer() -> None:
        i = 0
        while not stop_writing.is_set():
            env.save(f"p{i % 600:04d}", {"name": f"w{i}", "age": i})
            if i % 7 == 0:
                env.save(f"p{i % 600:04d}", {"age": 0})  # stops matching the filter
            i += 1
            time.sleep(0.001)

    writing = threading.Thread(target=writer, daemon=True)
    writing.start()
    try:
        result = reindex(env.app, "people", chunk_size=50)
    finally:
        stop_writing.set()
        writing.join()
    head = env.app.change_feed(["people"]).latest_offsets()
    deadline = time.monotonic() + 60
    while env.app.checkpoints.get("people") != head and time.monotonic() < deadline:
        time.sleep(0.05)
    live.stop()
    runner.join(30)
    assert not runner.is_alive()
    assert result.documents == 600
    assert env.app.checkpoints.get("people") == head
    assert env.table() == env.expected()


def test_partial_rebuild_resets_and_keeps_the_checkpoint(env: Env) -> None:
    for i in range(20):
        env.save(f"p{i:04d}", {"name": f"n{i}", "age": i})
    pillow = env.make_pillow(env.app)
    pillow.bootstrap()
    pillow.run(forever=False)
    assert len(env.table()) == 20
    for i in range(5):
        env.store.delete(f"p{i:04d}")  # deleted without a stub: only a reset notices
    env.spy.clear()
    result = reindex(env.app, "people", processors=["report:people"], reset=True)
    assert result.job == "people/report:people" and result.documents == 15
    assert env.spy.seen == []  # the other processor was left alone
    assert env.table() == env.expected() and len(env.table()) == 15
    assert env.app.checkpoints.get("people") == {TopicPartition("people", 0): 20}
    assert env.app.checkpoints.history("people") == []
    with pytest.raises(ReindexError, match="no processor 'nope'"):
        reindex(env.app, "people", processors=["nope"])


def test_reindex_needs_stores(tmp_path: Path) -> None:
    app = App(f"sqlite:///{tmp_path / 'log.db'}", f"sqlite:///{tmp_path / 'state.db'}")
    app.add_pillow(
        "bare", lambda a: a.constructed_pillow("bare", ["t"], [RecordingProcessor("Spy")])
    )
    with pytest.raises(ReindexError, match="no document stores to reindex from"):
        reindex(app, "bare")
    app.close()


def test_reindex_from_postgres_into_postgres(tmp_path: Path, pg_url: str) -> None:
    store = SQLDocumentStore(pg_url, "people_docs", data_source_name="people")
    store.create()
    env = Env(tmp_path, store=store, reports_url=pg_url)
    for i in range(1200):
        env.save(f"p{i:05d}", {"name": f"n{i}", "age": i}, publish=i >= 1190)
    store.delete("p00000")
    result = reindex(env.app, "people", chunk_size=500)
    assert result.documents == 1199
    assert env.table() == env.expected() and len(env.table()) == 1199
    env.app.close()


# -- reading the stores in chunks, pipelined (issue 14) --------------------------------------


@pytest.mark.parametrize("pipeline", [True, False])
def test_stop_finishes_the_chunk_in_hand_then_resume_reads_the_rest(
    env: Env, pipeline: bool
) -> None:
    """Ctrl-C (SIGINT, through the handler `reindex` installs) stops after the chunk in
    hand, with the next chunk already read by the reader thread: that one is not counted,
    and the resumed run starts right after the last chunk written."""
    for i in range(1000):
        env.save(f"p{i:04d}", {"name": f"n{i}", "age": i}, publish=False)

    def interrupt(batch: int) -> None:
        if batch == 3:
            os.kill(os.getpid(), signal.SIGINT)

    env.spy.hook = interrupt
    result = reindex(env.app, "people", chunk_size=100, pipeline=pipeline)
    assert result.interrupted and result.documents == 300
    assert env.spy.seen == [f"p{i:04d}" for i in range(300)]
    assert len(env.table()) == 300
    env.spy.hook = None
    env.spy.clear()
    resumed = reindex(env.app, "people", chunk_size=100, resume=True, pipeline=pipeline)
    assert resumed.resumed and not resumed.interrupted and resumed.documents == 700
    assert env.spy.seen == [f"p{i:04d}" for i in range(300, 1000)]
    assert env.table() == env.expected() and len(env.table()) == 1000


class FailingStore(MemoryDocumentStore):
    """Its bulk fetch fails once, on the ``fail_at``-th call (in the reader thread)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__("people")
        self.calls = 0
        self.fail_at = fail_at

    def get_documents(self, doc_ids: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_at:
            raise ConnectionError("store went away")
        return super().get_documents(doc_ids)


def test_a_store_failing_in_the_reader_thread_stops_the_reindex_resumably(
    tmp_path: Path,
) -> None:
    env = Env(tmp_path, store=FailingStore(fail_at=4))
    for i in range(500):
        env.save(f"p{i:04d}", {"name": f"n{i}", "age": i}, publish=False)
    with pytest.raises(ConnectionError, match="store went away"):
        reindex(env.app, "people", chunk_size=100)
    # the error surfaced in the caller's thread after the chunks already read were written
    assert env.spy.seen == [f"p{i:04d}" for i in range(300)]
    resumed = reindex(env.app, "people", chunk_size=100)
    assert resumed.resumed and resumed.documents == 200
    assert env.table() == env.expected() and len(env.table()) == 500
    env.app.close()


def test_processor_failures_are_queued_and_the_reindex_goes_on(env: Env) -> None:
    for i in range(250):
        env.save(f"p{i:04d}", {"name": f"n{i}", "age": i}, publish=False)

    class Picky(RecordingProcessor):
        def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
            super().process_changes(changes)
            return [
                ChangeFailure(c, ValueError("no sevens"), retryable=False)
                for c in changes
                if c.id.endswith("7")
            ]

    env.spy.__class__ = Picky
    result = reindex(env.app, "people", chunk_size=100)
    assert result.documents == 250 and result.failures == 25
    queued = env.app.error_queue.list("people", limit=100)
    assert sorted(r.document_id for r in queued) == [f"p{i:04d}" for i in range(7, 250, 10)]
    assert {r.topic for r in queued} == {"reindex"}
    assert len(env.table()) == 250  # the other processor wrote every document


class Reversed(MemoryDocumentStore):
    """Lists its ids in descending order: resuming by id is not possible."""

    def iter_document_ids(self) -> Iterator[str]:
        yield from sorted(self._docs, reverse=True)


def test_a_store_listing_ids_out_of_order_is_read_again_on_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = Env(tmp_path, store=Reversed("people"))
    for i in range(300):
        env.save(f"p{i:04d}", {"name": f"n{i}", "age": i}, publish=False)

    def interrupt(batch: int) -> None:
        if batch == 2:
            raise KeyboardInterrupt

    env.spy.hook = interrupt
    with pytest.raises(KeyboardInterrupt):
        reindex(env.app, "people", chunk_size=100)
    env.spy.hook = None
    env.spy.clear()
    result = reindex(env.app, "people", chunk_size=100, resume=True)
    assert result.resumed and result.documents == 300
    assert sorted(env.spy.seen) == [f"p{i:04d}" for i in range(300)]
    assert "out of order; reading it again from the start" in caplog.text
    assert env.table() == env.expected()
    env.app.close()


def test_a_store_bound_to_one_thread_is_read_in_turn(tmp_path: Path) -> None:
    """An in-memory SQLite store cannot be read from a reader thread (it would see an empty
    database of its own): the reindex reads it in the caller's thread."""
    store = SQLDocumentStore("sqlite://", "people_docs", data_source_name="people")
    store.create()
    env = Env(tmp_path, store=store)
    for i in range(250):
        env.save(f"p{i:04d}", {"name": f"n{i}", "age": i}, publish=False)
    result = reindex(env.app, "people", chunk_size=100)
    assert result.documents == 250 and env.table() == env.expected()
    env.app.close()
