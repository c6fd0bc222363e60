"""`UsageStore`: totals added up across flushes and processes, per pillow and processor,
on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from changefeed.db import make_engine
from changefeed.processors.reports import SourceCounters
from changefeed.processors.reports.usage import NAME_LENGTH, UsageStore


@pytest.fixture
def store(db_url: str) -> Iterator[UsageStore]:
    engine = make_engine(db_url)
    yield UsageStore(engine)
    engine.dispose()


def test_amounts_add_up(store: UsageStore) -> None:
    store.add("p", "reports", {"s1": SourceCounters(2, 1, 0.5, 0)}, {"a": 0.25})
    # another process of the same pillow, or the next flush
    other = UsageStore(store.engine)
    other.add(
        "p",
        "reports",
        {"s1": SourceCounters(3, 0, 0.25, 1), "s2": SourceCounters(1)},
        {"a": 1.0, "b": 0.5},
    )
    usage = store.read("p", "reports")
    assert usage.sources == {"s1": SourceCounters(5, 1, 0.75, 1), "s2": SourceCounters(1)}
    assert usage.domain_seconds == {"a": 1.25, "b": 0.5}
    assert usage.slowest_domains(1) == [("a", 1.25)]
    assert store.read("p", "other").sources == {}
    assert store.read("q", "reports").domain_seconds == {}


def test_nothing_to_add_writes_nothing(store: UsageStore) -> None:
    store.add("p", "reports", {}, {})
    assert not sa.inspect(store.engine).has_table("changefeed_report_usage")


def test_a_domain_from_a_document_is_bounded(store: UsageStore) -> None:
    long = "d" * 1000 + "\x00"
    store.add("p", "reports", {}, {long: 1.0, "": 2.0})
    stored = store.read("p", "reports").domain_seconds
    assert stored[""] == 2.0
    (kept,) = [d for d in stored if d]
    assert len(kept) <= NAME_LENGTH and kept.startswith("ddd") and "\x00" not in kept
