"""The error queue (SQLite and PostgreSQL): storing failures, backoff with an injected clock, parking, operator actions."""

from __future__ import annotations

from pathlib import Path

import pytest

from changefeed.backoff import DEPENDENCY_BACKOFF
from changefeed.change import Change, ChangeMeta
from changefeed.errors import PARKED, PENDING, ErrorQueue, RetryPolicy


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


POLICY = RetryPolicy(base_delay=10.0, factor=2.0, max_delay=35.0, max_attempts=4)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgresql"])
def queue(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> ErrorQueue:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/state.db"
    else:
        url = request.getfixturevalue("pg_url")
    return ErrorQueue(url, POLICY, clock=clock)


def change(doc_id: str = "d1", offset: int = 0, version: int = 1) -> Change:
    return Change("form", 2, offset, ChangeMeta(doc_id, "memory", "forms", version=version))


def fail(msg: str = "boom") -> ValueError:
    try:
        raise ValueError(msg)
    except ValueError as exc:
        return exc


def test_policy_delays() -> None:
    assert [POLICY.delay(n) for n in range(1, 6)] == [10.0, 20.0, 35.0, 35.0, 35.0]
    assert [DEPENDENCY_BACKOFF.delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert DEPENDENCY_BACKOFF.delay(100) == 60.0


def test_add_stores_everything_needed_to_retry(queue: ErrorQueue) -> None:
    queue.add("p", change(offset=41), "indexer", fail("index down"))
    (rec,) = queue.list()
    assert (rec.pillow, rec.processor, rec.document_id) == ("p", "indexer", "d1")
    assert (rec.topic, rec.partition, rec.offset) == ("form", 2, 41)
    assert ChangeMeta.decode(rec.stub).document_id == "d1"
    assert rec.error_type == "builtins.ValueError"
    assert rec.message == "index down"
    assert "ValueError: index down" in rec.traceback and "fail" in rec.traceback
    assert rec.attempts == 1 and rec.status == PENDING
    assert rec.created_at == rec.last_attempt_at == 1000.0
    assert rec.next_attempt_at == 1010.0
    assert queue.get(rec.id) == rec
    assert queue.get(rec.id + 100) is None


def test_same_document_and_processor_updates_entry(queue: ErrorQueue, clock: Clock) -> None:
    queue.add("p", change(offset=1, version=1), "indexer", fail("first"))
    clock.now = 1001.0
    queue.add("p", change(offset=9, version=2), "indexer", fail("second"))
    queue.add("p", change(offset=9, version=2), "other", fail("x"))
    recs = queue.list("p")
    assert len(recs) == 2
    rec = next(r for r in recs if r.processor == "indexer")
    assert rec.attempts == 2 and rec.offset == 9 and rec.message == "second"
    assert ChangeMeta.decode(rec.stub).version == 2
    assert rec.created_at == 1000.0 and rec.last_attempt_at == 1001.0
    assert rec.next_attempt_at == 1001.0 + 20.0


def test_invalid_stub_keeps_raw_bytes_and_non_retryable_parks(queue: ErrorQueue) -> None:
    bad = Change.from_raw("meta", 0, 3, b"\x00garbage", key="k")
    queue.add("p", bad, "(invalid stub)", ValueError(bad.error), retryable=False)
    (rec,) = queue.list()
    assert rec.stub == b"\x00garbage" and rec.document_id == "k"
    assert rec.status == PARKED and rec.next_attempt_at is None


def test_invalid_stubs_are_never_merged(queue: ErrorQueue) -> None:
    """Keyless garbage records share an empty id; each keeps its own entry and bytes."""
    for offset, raw in enumerate([b"junk-1", b"junk-2"]):
        bad = Change.from_raw("meta", 0, offset, raw, key="")
        queue.add("p", bad, "(invalid stub)", ValueError(bad.error), retryable=False)
    assert sorted(r.stub for r in queue.list()) == [b"junk-1", b"junk-2"]


def test_due_respects_next_attempt(queue: ErrorQueue, clock: Clock) -> None:
    queue.add("p", change("a"), "proc", fail())
    clock.now = 1005.0
    queue.add("p", change("b"), "proc", fail())
    queue.add("q", change("c"), "proc", fail())
    assert queue.due("p") == []
    assert [r.document_id for r in queue.due("p", now=1010.0)] == ["a"]
    clock.now = 1020.0
    assert [r.document_id for r in queue.due("p")] == ["a", "b"]
    assert len(queue.due("p", limit=1)) == 1


def test_backoff_then_parking_at_max_attempts(queue: ErrorQueue, clock: Clock) -> None:
    queue.add("p", change(), "proc", fail())
    rec = queue.list()[0]
    seen = []
    while rec.status == PENDING:
        assert rec.next_attempt_at is not None
        clock.now = rec.next_attempt_at
        (rec,) = queue.due("p")
        queue.record_failure(rec, fail("again"))
        rec = queue.list()[0]
        delay = None if rec.next_attempt_at is None else rec.next_attempt_at - clock.now
        seen.append((rec.attempts, rec.status, delay))
    # max_attempts=4: attempts 2 and 3 back off (20 s, capped 35 s), the 4th parks.
    assert seen == [(2, PENDING, 20.0), (3, PENDING, 35.0), (4, PARKED, None)]
    assert rec.message == "again"
    clock.now += 10_000
    assert queue.due("p") == []
    assert queue.counts("p") == {PENDING: 0, PARKED: 1}


def test_policy_override_per_call(queue: ErrorQueue) -> None:
    queue.add("p", change(), "proc", fail(), policy=RetryPolicy(max_attempts=1))
    assert queue.list()[0].status == PARKED


def test_resolve_removes_entry(queue: ErrorQueue) -> None:
    queue.add("p", change("a"), "proc", fail())
    queue.add("p", change("b"), "proc", fail())
    queue.resolve(queue.list()[0].id)
    assert [r.document_id for r in queue.list()] == ["b"]


def test_make_due_operator_retry(queue: ErrorQueue, clock: Clock) -> None:
    queue.add("p", change("a"), "proc", fail(), retryable=False)
    queue.add("p", change("b"), "proc", fail())
    queue.add("q", change("c"), "proc", fail(), retryable=False)
    assert queue.make_due("p", parked_only=True) == 1
    due = queue.due("p")
    assert [(r.document_id, r.attempts, r.status) for r in due] == [("a", 0, PENDING)]
    assert queue.make_due(ids=[queue.list("q")[0].id]) == 1
    assert [r.document_id for r in queue.due("q")] == ["c"]
    assert queue.make_due() == 3
    assert len(queue.due("p")) == 2


def test_counts_and_list_filters(queue: ErrorQueue) -> None:
    queue.add("p", change("a"), "proc", fail())
    queue.add("p", change("b"), "proc", fail(), retryable=False)
    queue.add("q", change("c"), "proc", fail())
    assert queue.counts() == {PENDING: 2, PARKED: 1}
    assert queue.counts("p") == {PENDING: 1, PARKED: 1}
    assert queue.counts("nobody") == {PENDING: 0, PARKED: 0}
    assert [r.document_id for r in queue.list(status=PARKED)] == ["b"]
    first = queue.list(limit=1)
    assert [r.document_id for r in queue.list(after_id=first[0].id)] == ["b", "c"]


def test_purge(queue: ErrorQueue, clock: Clock) -> None:
    queue.add("p", change("a"), "proc", fail(), retryable=False)
    clock.now = 2000.0
    queue.add("p", change("b"), "proc", fail())
    queue.add("q", change("c"), "proc", fail())
    assert queue.purge("p", status=PARKED) == 1
    assert queue.purge(older_than=500.0) == 0
    clock.now = 3000.0
    assert queue.purge("q", older_than=500.0) == 1
    assert [r.document_id for r in queue.list()] == ["b"]
    assert queue.purge(ids=[queue.list()[0].id]) == 1
    assert queue.list() == []
