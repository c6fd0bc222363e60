"""Deletions end to end: the document store decides. A deletion stub whose document is live
in the store is processed as an upsert of it, so a report row survives a late or versionless
deletion, and a genuine deletion (the store says deleted, or does not know the id) removes
it. A pillow with a report table on an SQL document store, on the embedded log and on Kafka,
run in turn and pipelined; each test on a topic of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from changefeed.app import App
from changefeed.batch import BatchReport
from changefeed.change import ChangeMeta
from changefeed.pillow import Pillow, PillowListener
from changefeed.processors.reports import ReportTableProcessor
from changefeed.stores.sql import SQLDocumentStore

REPORT = {"name": "cases", "table": "report_cases", "columns": [{"name": "owner"}]}


class Batches(PillowListener):
    """(changes read, changes left after dedupe) per batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_batch(self, pillow: Pillow, report: BatchReport) -> None:
        self.seen.append((report.changes, report.unique))


class World:
    """An app on ``log_url`` with an SQL document store and a pillow writing a report table."""

    def __init__(self, tmp_path: Path, log_url: str, pipeline: bool) -> None:
        self.app = App(log_url, f"sqlite:///{tmp_path / 'state.db'}")
        self.store = SQLDocumentStore(f"sqlite:///{tmp_path / 'docs.db'}", "cases")
        self.store.create()
        self.app.document_stores.register(self.store)
        self.topic = f"case-{uuid.uuid4().hex[:10]}"
        self.report = ReportTableProcessor(REPORT, f"sqlite:///{tmp_path / 'reports.db'}")
        self.pillow = self.app.constructed_pillow(
            "cases", [self.topic], self.report, pipeline=pipeline, batch_size=100, adaptive=False
        )
        self.pillow.bootstrap()
        self.batches = Batches()
        self.pillow.listeners.append(self.batches)

    def publish(self, doc_id: str, *, deleted: bool = False, version: int | None = None) -> None:
        meta = ChangeMeta(doc_id, "sql", "cases", "case", is_deletion=deleted, version=version)
        self.app.publish(meta, topic=self.topic)

    def save(self, doc_id: str, owner: str) -> int:
        """Save in the store and publish its change."""
        version = self.store.save(doc_id, {"owner": owner})
        self.publish(doc_id, version=version)
        return version

    def run(self) -> int:
        return self.pillow.run(forever=False)

    def rows(self) -> dict[str, str]:
        t = self.report.table
        with self.report.engine.connect() as conn:
            return {r.doc_id: r.owner for r in conn.execute(sa.select(t.c.doc_id, t.c.owner))}

    def close(self) -> None:
        self.pillow.change_feed.close()
        self.report.close()
        self.app.close()


@pytest.fixture(params=[False, True], ids=["sequential", "pipelined"])
def world(request: pytest.FixtureRequest, tmp_path: Path, log_url: str) -> Iterator[World]:
    w = World(tmp_path, log_url, request.param)
    yield w
    w.close()


def test_late_deletion_after_an_update_in_one_batch_keeps_the_row(world: World) -> None:
    world.store.save("a", {"owner": "ann"})
    late = world.store.delete("a")  # version 2; its stub is published late, below
    world.save("a", "bob")  # re-created: version 3
    world.publish("a", deleted=True, version=late)
    assert world.run() == 2
    assert world.rows() == {"a": "bob"}
    assert world.app.error_queue.list() == []


def test_late_deletion_in_a_batch_of_its_own_keeps_the_row(world: World) -> None:
    world.store.save("a", {"owner": "ann"})
    late = world.store.delete("a")
    world.save("a", "bob")
    world.run()
    world.publish("a", deleted=True, version=late)
    assert world.run() == 1
    assert world.rows() == {"a": "bob"}


def test_versionless_deletion_of_a_live_document_keeps_the_row(world: World) -> None:
    # CommCare HQ's SQL stubs carry neither version nor document_rev.
    world.save("a", "ann")
    world.save("b", "bea")
    world.run()
    world.publish("a", deleted=True)
    world.save("b", "ben")
    world.publish("b", deleted=True)  # after an update of the same batch
    assert world.run() == 3
    assert world.rows() == {"a": "ann", "b": "ben"}


def test_genuine_deletions_remove_the_rows(world: World) -> None:
    for doc_id in ("a", "b", "c"):
        world.save(doc_id, f"owner-{doc_id}")
    world.run()
    world.publish("a", deleted=True, version=world.store.delete("a"))
    world.store.delete("b")
    world.publish("b", deleted=True)  # versionless: the store says deleted
    with world.store.engine.begin() as conn:  # c is gone from the store altogether
        conn.execute(world.store.table.delete().where(world.store.table.c.id == "c"))
    world.publish("c", deleted=True)
    assert world.run() == 3
    assert world.rows() == {}
    assert world.app.error_queue.list() == []


def test_an_update_and_its_late_deletion_share_a_batch_on_the_embedded_log(
    tmp_path: Path,
) -> None:
    """What the first test relies on, shown where the batch is certain: the two changes were
    read together and de-duplicated to one."""
    world = World(tmp_path, f"sqlite:///{tmp_path / 'log.db'}", pipeline=False)
    try:
        world.store.save("a", {"owner": "ann"})
        late = world.store.delete("a")
        world.save("a", "bob")
        world.publish("a", deleted=True, version=late)
        world.run()
        assert world.batches.seen == [(2, 1)]
        assert world.rows() == {"a": "bob"}
    finally:
        world.close()
