"""What only the embedded SQLite log promises: several processes, retention, URL options."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from changefeed.backends import BackendURLError, open_backend
from changefeed.backends.base import TopicDescription, UnknownTopicError
from changefeed.backends.local import SQLiteLog
from changefeed.change import ChangeMeta, TopicPartition
from changefeed.identifiers import InvalidIdentifierError

WRITERS = 3
PER_WRITER = 300


def _writer(url: str, writer: int, barrier: Any) -> None:
    log = open_backend(url)
    pub = log.publisher()
    barrier.wait(60)  # all writers publish at the same time, not one after another
    for start in range(0, PER_WRITER, 20):
        items = [
            ("shared", ChangeMeta(f"w{writer}-{i}", "memory", "docs", version=i))
            for i in range(start, start + 20)
        ]
        if start % 40:
            pub.publish_many(items)
        else:
            for topic, meta in items:
                pub.publish(topic, meta)
    pub.close()
    log.close()


def test_concurrent_publishers_in_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    log = open_backend(url)
    log.admin().create_topic("shared", 3)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_writer, args=(url, w, barrier)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    feed = log.change_feed(["shared"])
    changes = [c for c in feed.iter_changes(dict.fromkeys(feed.topic_partitions(), 0)) if c]
    heads = feed.latest_offsets()
    feed.close()
    log.close()
    # Nothing lost, nothing doubled.
    ids = [c.id for c in changes]
    assert len(ids) == len(set(ids)) == WRITERS * PER_WRITER
    # Offsets are dense and unique per partition, and the heads agree.
    for tp, head in heads.items():
        offsets = [c.offset for c in changes if c.topic_partition == tp]
        assert offsets == list(range(head)), tp
    # Each writer's changes to its own documents stay in publish order within a partition.
    for w in range(WRITERS):
        for part in range(3):
            versions = [
                c.metadata.version
                for c in changes
                if c.partition == part and c.id.startswith(f"w{w}-") and c.metadata
            ]
            assert versions == sorted(versions)  # type: ignore[type-var]


def _log(tmp_path: Path, query: str) -> SQLiteLog:
    backend = open_backend(f"sqlite:///{tmp_path}/log.db?{query}")
    assert isinstance(backend, SQLiteLog)
    return backend


def _offsets(log: SQLiteLog, topic: str) -> list[int]:
    feed = log.change_feed([topic])
    feed.set_offset_reset_handler(lambda *_: None)
    out = [c.offset for c in feed.iter_changes({TopicPartition(topic, 0): 0}) if c]
    feed.close()
    return out


def test_retention_by_count_keeps_the_newest(tmp_path: Path) -> None:
    log = _log(tmp_path, "retention_count=5")
    with log.publisher() as pub:
        for i in range(12):
            pub.publish("t", ChangeMeta(f"d{i}", "memory", "docs"))
    assert log.apply_retention() > 0
    kept = _offsets(log, "t")
    assert kept[-1] == 11 and 5 <= len(kept) < 12
    assert kept == list(range(kept[0], 12))
    feed = log.change_feed(["t"])
    assert feed.earliest_offsets() == {TopicPartition("t", 0): kept[0]}
    assert feed.latest_offsets() == {TopicPartition("t", 0): 12}
    feed.close()


def test_retention_by_age(tmp_path: Path) -> None:
    log = _log(tmp_path, "retention_seconds=60")
    with log.publisher() as pub:
        for i in range(4):
            pub.publish("t", ChangeMeta(f"old{i}", "memory", "docs"))
    assert log.apply_retention() == 0  # nothing is a minute old yet
    assert _offsets(log, "t") == [0, 1, 2, 3]
    later = time.time() + 120
    with log.publisher() as pub:
        pub.publish("t", ChangeMeta("new", "memory", "docs"))
    assert log.apply_retention(now=later) > 0  # all of them are old by then
    assert _offsets(log, "t") == []
    # The head survives retention: offsets never restart.
    with log.publisher() as pub:
        pub.publish("t", ChangeMeta("newest", "memory", "docs"))
    assert _offsets(log, "t") == [5]


def test_no_retention_configured(tmp_path: Path) -> None:
    log = _log(tmp_path, "partitions=2")
    with log.publisher() as pub:
        pub.publish("auto", ChangeMeta("d", "memory", "docs"))
    assert log.apply_retention() == 0
    assert {i.name: i.partitions for i in log.admin().list_topics()} == {"auto": 2}


def test_url_options(tmp_path: Path) -> None:
    log = _log(tmp_path, "partitions=4&retention_seconds=1.5&retention_count=10&synchronous=full")
    assert (log.default_partitions, log.retention_seconds, log.retention_count) == (4, 1.5, 10)
    assert log.synchronous == "FULL"
    assert log.path == tmp_path / "log.db"


@pytest.mark.parametrize(
    "url, message",
    [
        ("sqlite://", "file path"),
        ("sqlite:///x.db?color=red", "unknown sqlite log option"),
        ("sqlite:///x.db?partitions=zero", "bad sqlite log URL"),
        ("sqlite:///x.db?partitions=0", "at least 1"),
        ("sqlite:///x.db?retention_count=many", "bad sqlite log URL"),
        ("sqlite:///x.db?synchronous=off", "synchronous"),
        ("postgres://x", "unsupported log URL"),
        ("just-a-path.db", "unsupported log URL"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(BackendURLError, match=message):
        open_backend(url)


def test_bad_topic_names_and_partitions(tmp_path: Path) -> None:
    log = _log(tmp_path, "partitions=1")
    with pytest.raises(InvalidIdentifierError):
        log.admin().create_topic("no spaces")
    with pytest.raises(ValueError, match="at least 1"):
        log.admin().create_topic("ok", 0)
    with log.publisher() as pub, pytest.raises(InvalidIdentifierError):
        pub.publish("bad/topic", ChangeMeta("d", "memory", "docs"))
    with pytest.raises(InvalidIdentifierError):
        log.change_feed(["bad topic"])
    assert log.admin().list_topics() == []


def test_add_partitions(tmp_path: Path) -> None:
    log = _log(tmp_path, "partitions=1")
    admin = log.admin()
    admin.create_topic("grow", 2)
    admin.add_partitions("grow", 4)
    admin.create_topic("grow", 3)  # no-op: already larger
    assert {i.name: i.partitions for i in admin.list_topics()} == {"grow": 4}
    with pytest.raises(ValueError, match="cannot shrink"):
        admin.add_partitions("grow", 2)
    with pytest.raises(LookupError, match="unknown topic"):
        admin.add_partitions("nope", 2)


def test_record_batches_decode_with_unknown_fields_and_say_where_they_end(
    tmp_path: Path,
) -> None:
    """A record batch is decoded in one call unless a stub needs the lenient path (unknown
    fields kept in ``extra``); either way its list ends at the batch's next offset."""
    log = SQLiteLog(tmp_path / "log.db")
    log.admin().create_topic("t", 1)
    newer = ChangeMeta("b", "sql", "s", extra={"added_later": [1, 2]})
    with log.publisher() as pub:
        pub.publish_many([("t", ChangeMeta("a", "sql", "s"))])
        pub.publish_many([("t", ChangeMeta("c", "sql", "s")), ("t", newer)])
    feed = log.change_feed(["t"])
    lists = list(feed.iter_change_batches({TopicPartition("t", 0): 0}))
    assert [[c.id for c in changes] for changes in lists if changes] == [["a"], ["c", "b"]]
    assert [getattr(changes, "next_offsets", None) for changes in lists if changes] == [
        {TopicPartition("t", 0): 1},
        {TopicPartition("t", 0): 3},
    ]
    assert lists[1][1].metadata is not None
    assert lists[1][1].metadata.extra == {"added_later": [1, 2]}
    # Starting inside a batch: only the rest of it (on both decoding paths).
    with log.publisher() as pub:
        pub.publish_many([("t", ChangeMeta(d, "sql", "s")) for d in ("x", "y", "z")])
    rest = [c for c in feed.iter_change_batches({TopicPartition("t", 0): 2}) if c]
    assert [[c.id for c in changes] for changes in rest] == [["b"], ["x", "y", "z"]]
    (tail,) = [c for c in feed.iter_change_batches({TopicPartition("t", 0): 5}) if c]
    assert [(c.id, c.offset) for c in tail] == [("z", 5)]
    assert tail.next_offsets == {TopicPartition("t", 0): 6}  # type: ignore[attr-defined]


def test_raw_records_keep_their_key_and_exact_bytes(tmp_path: Path) -> None:
    """A record that is not a stub (another producer's bytes) is kept as it was written and
    named by its key, like a Kafka message."""
    log = _log(tmp_path, "partitions=1")
    value = b"\xff\x00{not json \xe9"
    with log.publisher() as pub:
        pub.publish("t", ChangeMeta("before", "memory", "docs"))
        pub.append_raw([("t", "k\u00e9y", value), ("t", "ok", b'{"document_id": "x"}')])
        pub.publish("t", ChangeMeta("after", "memory", "docs"))
    feed = log.change_feed(["t"])
    changes = [c for c in feed.iter_changes({TopicPartition("t", 0): 0}) if c]
    feed.close()
    assert [(c.offset, c.id, c.is_valid) for c in changes] == [
        (0, "before", True),
        (1, "k\u00e9y", False),
        (2, "ok", False),
        (3, "after", True),
    ]
    assert changes[1].raw == value and changes[1].error and "JSON" in changes[1].error
    assert changes[2].error and "data_source_type" in changes[2].error


def test_describe_topic_of_a_log_without_settings(tmp_path: Path) -> None:
    """The declared default of `TopicAdmin.describe_topic`: partitions, no settings."""
    log = open_backend(f"sqlite:///{tmp_path}/log.db")
    admin = log.admin()
    admin.create_topic("form", 2)
    assert admin.describe_topic("form") == TopicDescription("form", 2)
    with pytest.raises(UnknownTopicError, match="unknown topic 'case'"):
        admin.describe_topic("case")
    log.close()
