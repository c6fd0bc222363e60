"""RepublishProcessor in real pillows: from one embedded SQLite log to another topic of the
same log and to a second log."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from changefeed.backends.base import Publisher, PublishError
from changefeed.backends.local import SQLiteLog
from changefeed.change import ChangeMeta, TopicPartition
from changefeed.errors import PARKED, PENDING
from changefeed.processors.backoff import Backoff
from changefeed.processors.republish import RepublishProcessor
from changefeed.testing.clock import FakeClock
from tests.doubles.rig import CaseRig, PillowRig


def read_all(log: SQLiteLog, topic: str) -> list[ChangeMeta]:
    feed = log.change_feed([topic], idle_timeout=0.05)
    since = dict.fromkeys(feed.topic_partitions(), 0)
    metas = [c.metadata for c in feed.iter_changes(since) if c is not None and c.metadata]
    feed.close()
    return metas


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[CaseRig]:
    rig = PillowRig.cases(tmp_path, "republish", with_store=False)
    yield rig
    rig.close()


def stubs() -> list[ChangeMeta]:
    return [
        ChangeMeta(
            f"c{i}",
            "sql",
            "cases",
            "case",
            "sub",
            domain="acme",
            version=i + 1,
            attempts=i,
            original_publication_timestamp=1000.0 + i,
            extra={"tenant_tier": "gold"},
        )
        for i in range(5)
    ] + [ChangeMeta("c9", "sql", "cases", "case", is_deletion=True, document_rev="3-abc")]


def test_republishes_to_another_log_keeping_every_stub_field(rig: CaseRig, tmp_path: Path) -> None:
    rig.publisher.publish_many(("case", m) for m in stubs())
    target = SQLiteLog(tmp_path / "target.db")
    with target.publisher() as out:
        proc = RepublishProcessor(out, clock=FakeClock(5000.0))
        assert proc.needs_documents is False
        assert rig.pillow(proc).run(forever=False) == 6

    got = read_all(target, "case")
    sent = read_all(rig.log, "case")  # as first published: timestamps stamped then
    assert [m.document_id for m in got] == [m.document_id for m in stubs()]
    for before, after in zip(sent, got, strict=True):
        assert after.publish_timestamp == 5000.0
        assert after.original_publication_timestamp == before.original_publication_timestamp
        before.publish_timestamp = after.publish_timestamp
        assert after.to_dict() == before.to_dict()
    assert got[0].original_publication_timestamp == 1000.0
    assert got[2].attempts == 2 and got[2].extra == {"tenant_tier": "gold"}
    assert rig.errors.counts() == {PENDING: 0, PARKED: 0}, "no document was fetched"
    target.close()


def test_republishes_to_another_topic_with_a_filter(rig: CaseRig) -> None:
    rig.publisher.publish_many(("case", m) for m in stubs())
    proc = RepublishProcessor(
        rig.log.publisher(), "case-deletions", filter=lambda change: change.deleted
    )
    rig.pillow(proc).run(forever=False)
    (only,) = read_all(rig.log, "case-deletions")
    assert only.document_id == "c9" and only.is_deletion and only.document_rev == "3-abc"


def test_topic_function_routes_and_skips(rig: CaseRig) -> None:
    rig.publisher.publish_many(("case", m) for m in stubs())
    proc = RepublishProcessor(
        rig.log.publisher(),
        lambda change: None if change.deleted else f"case-{change.metadata.domain}",  # type: ignore[union-attr]
    )
    rig.pillow(proc).run(forever=False)
    assert [m.document_id for m in read_all(rig.log, "case-acme")] == [f"c{i}" for i in range(5)]
    with pytest.raises(ValueError, match="invalid topic name"):
        RepublishProcessor(rig.log.publisher(), "no spaces")


class FlakyPublisher(Publisher):
    """Our own Publisher interface over a real log, failing the first ``failures`` calls."""

    def __init__(self, inner: Publisher, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0

    def publish(self, topic: str, meta: ChangeMeta) -> None:
        self.publish_many([(topic, meta)])

    def publish_many(self, items: Iterable[tuple[str, ChangeMeta]]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise PublishError("broker unreachable")
        self.inner.publish_many(items)


def test_target_down_makes_the_pillow_back_off_instead_of_parking(
    rig: CaseRig, tmp_path: Path
) -> None:
    rig.publisher.publish_many(("case", m) for m in stubs())
    target = SQLiteLog(tmp_path / "target.db")
    proc_clock = FakeClock()
    flaky = FlakyPublisher(target.publisher(), failures=5)
    proc = RepublishProcessor(flaky, backoff=Backoff(retries=1, base=0.1), clock=proc_clock)
    pillow = rig.pillow(proc)
    assert pillow.run(forever=False) == 6
    # 2 calls per batch attempt (first try + 1 retry): attempts 1 and 2 fail, 3 succeeds
    assert len(rig.clock.sleeps) == 2 and rig.clock.sleeps[0] < rig.clock.sleeps[1]
    assert proc_clock.sleeps == [0.1, 0.1, 0.1]
    assert rig.errors.counts() == {PENDING: 0, PARKED: 0}
    assert len(read_all(target, "case")) == 6
    assert pillow.checkpoints.get("republish") == {TopicPartition("case", 0): 6}
    target.close()
