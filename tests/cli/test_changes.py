"""``changefeed changes`` and ``tail``'s filters (issue 13 part 4) on the embedded log and on
Kafka: a document's changes with partition, offset and publish time; time bounds found by
the feed's time lookup, not by reading from the start; only the key's partition read."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from changefeed import ChangeMeta
from changefeed.backends import open_backend
from changefeed.backends.base import Backend, key_partition
from changefeed.change import TopicPartition
from changefeed.cli.changes import ChangeFilter, bounds, key_partitions, parse_time
from tests._cli import cf as run_cli
from tests._cli import recorder_env

TOPIC = "records"


LOG_PARTITIONS = 4  # for the `log_url` fixture (tests/conftest.py)


@pytest.fixture
def backend(log_url: str) -> Iterator[Backend]:
    b = open_backend(log_url)
    try:
        yield b
    finally:
        b.close()


def cf(log_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``changefeed ARGS`` with the recorder app, on the given log."""
    return run_cli({**recorder_env(tmp_path), "CHANGEFEED_LOG": log_url}, *args)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def waves(backend: Backend) -> tuple[float, float]:
    """Three waves of 20 documents (``a-*``, ``b-*``, ``c-*``), each also touching ``doc-x``;
    returns the times between them."""
    marks = []
    with backend.publisher() as pub:
        for wave in "abc":
            if wave != "a":
                time.sleep(0.3)
                marks.append(time.time())
                time.sleep(0.3)
            items = [
                (TOPIC, ChangeMeta(f"{wave}-{i}", "memory", "docs", document_type="form"))
                for i in range(20)
            ]
            items.append(
                (TOPIC, ChangeMeta("doc-x", "memory", "docs", document_type="case", domain=wave))
            )
            pub.publish_many(items)
            pub.flush()
    return marks[0], marks[1]


def lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_time_bounds_are_looked_up(backend: Backend, log_url: str, tmp_path: Path) -> None:
    t1, t2 = waves(backend)
    feed = backend.change_feed([TOPIC])
    try:
        partitions = feed.topic_partitions()
        starts, ends = bounds(feed, partitions, ChangeFilter(since=t1, until=t2))
        # The start is where wave b begins in each partition, found without reading.
        wave_b_first: dict[TopicPartition, int] = {}
        for change in feed.iter_changes({tp: 0 for tp in partitions}):
            assert change is not None and change.metadata is not None
            tp = TopicPartition(change.topic, change.partition)
            ts = change.metadata.publish_timestamp or 0
            if t1 <= ts < t2:
                wave_b_first.setdefault(tp, change.offset)
        for tp, first in wave_b_first.items():
            assert starts[tp] == first
            assert ends[tp] > first
    finally:
        feed.close()

    got = lines(
        cf(log_url, tmp_path, "changes", TOPIC, "--since", iso(t1), "--until", iso(t2), "--json")
    )
    ids = sorted(str(x["stub"]["document_id"]) for x in got)  # type: ignore[index]
    assert ids == sorted([f"b-{i}" for i in range(20)] + ["doc-x"])
    assert all(x["published"] for x in got)


def test_a_documents_changes(backend: Backend, log_url: str, tmp_path: Path) -> None:
    waves(backend)
    got = lines(cf(log_url, tmp_path, "changes", TOPIC, "--doc-id", "doc-x", "--json"))
    assert [x["stub"]["domain"] for x in got] == ["a", "b", "c"]  # type: ignore[index]
    assert len({(x["partition"]) for x in got}) == 1
    offsets = [x["offset"] for x in got]
    assert offsets == sorted(offsets)
    # Only the partitions the key had under each partition count up to today's are read:
    # doc-x's under 1 to 4 partitions are 0, 1, 2, 1; partition 3 is never read.
    feed = backend.change_feed([TOPIC])
    try:
        read = key_partitions(backend, {"doc-x"}, feed.topic_partitions())
    finally:
        feed.close()
    assert TopicPartition(TOPIC, int(got[0]["partition"])) in read  # type: ignore[call-overload]
    assert read == [TopicPartition(TOPIC, p) for p in (0, 1, 2)]

    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("a-1\nc-2\n\n")
    got = lines(cf(log_url, tmp_path, "changes", TOPIC, "--ids-file", str(ids_file), "--json"))
    assert sorted(x["stub"]["document_id"] for x in got) == ["a-1", "c-2"]  # type: ignore[index]

    got = lines(
        cf(log_url, tmp_path, "changes", TOPIC, "--type", "case", "--domain", "b", "--json")
    )
    assert [x["stub"]["document_id"] for x in got] == ["doc-x"]  # type: ignore[index]

    text = cf(log_url, tmp_path, "changes", TOPIC, "--doc-id", "doc-x")
    assert text.returncode == 0 and text.stdout.count("doc-x") == 3
    assert "3 changes" in text.stderr

    got = lines(cf(log_url, tmp_path, "tail", TOPIC, "--from-beginning", "--doc-id", "doc-x"))
    assert [x["stub"]["domain"] for x in got] == ["a", "b", "c"]  # type: ignore[index]


def test_a_documents_changes_after_the_topic_grew(
    backend: Backend, log_url: str, tmp_path: Path
) -> None:
    """Changes published before ``add-partitions`` stay in the partition the key had then;
    ``changes`` and ``tail --doc-id`` find them next to those published after."""
    topic = f"grown-{uuid.uuid4().hex[:8]}"
    backend.admin().create_topic(topic, 2)
    moved = [
        d for d in (f"doc-{i}" for i in range(50)) if key_partition(d, 2) != key_partition(d, 5)
    ]
    doc, other = moved[0], moved[1]
    with backend.publisher() as pub:
        pub.publish_many(
            [(topic, ChangeMeta(d, "memory", "docs", domain="before")) for d in (doc, other)]
        )
    assert cf(log_url, tmp_path, "topics", "add-partitions", topic, "5").returncode == 0
    with backend.publisher() as pub:
        pub.publish_many(
            [(topic, ChangeMeta(d, "memory", "docs", domain="after")) for d in (doc, other)]
        )

    got = lines(cf(log_url, tmp_path, "changes", topic, "--doc-id", doc, "--json"))
    assert [(x["stub"]["domain"], x["partition"]) for x in got] == [  # type: ignore[index]
        ("before", key_partition(doc, 2)),
        ("after", key_partition(doc, 5)),
    ]
    got = lines(cf(log_url, tmp_path, "tail", topic, "--from-beginning", "--doc-id", doc))
    assert sorted(x["stub"]["domain"] for x in got) == ["after", "before"]  # type: ignore[index]


def test_bad_input(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    for args in (
        ("changes", TOPIC, "--since", "yesterday-ish"),
        ("changes", TOPIC, "--since", "1h", "--until", "2h"),
        ("changes", TOPIC, "--ids-file", str(tmp_path / "missing.txt")),
        ("changes", "no-such-topic"),
        ("tail", TOPIC, "--since", "soon"),
    ):
        r = cf(url, tmp_path, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_parse_time() -> None:
    assert parse_time("90m", now=10_000.0) == 10_000.0 - 5400
    assert parse_time("2026-01-01T00:00:00Z") == parse_time("2026-01-01T00:00:00")
    assert parse_time("2026-01-01T01:00:00+01:00") == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
