"""The backend conformance suite: the same behaviour from every log backend.

Everything here goes through the `Backend` interface only (``open_backend(url)``), so a new
backend joins by adding its URL to the ``backend_url`` fixture. Topic names are unique per
test because a Kafka broker is shared by the whole session.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from changefeed.backends import Backend, ChangeFeed, OffsetOutOfRangeError, open_backend
from changefeed.backends.base import ChangeList
from changefeed.change import Change, ChangeMeta, TopicPartition
from changefeed.checkpoints import CheckpointStore
from changefeed.pillow import BatchPolicy, Pillow
from changefeed.stores import DocumentStoreRegistry, MemoryDocumentStore
from tests.doubles.processors import RecordingProcessor

IDLE = 0.2


def new_topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def meta(doc_id: str, version: int | None = None, **kw: Any) -> ChangeMeta:
    return ChangeMeta(doc_id, "memory", "docs", version=version, **kw)


def make_topic(backend: Backend, partitions: int = 1) -> str:
    topic = new_topic()
    backend.admin().create_topic(topic, partitions)
    return topic


def open_feed(backend: Backend, topics: Sequence[str], **options: Any) -> ChangeFeed:
    return backend.change_feed(list(topics), idle_timeout=IDLE, **options)


def read_all(feed: ChangeFeed, since: Mapping[TopicPartition, int] | None = None) -> list[Change]:
    """Everything up to the head (forever=False), never the idle sentinel."""
    start = dict(since) if since is not None else {tp: 0 for tp in feed.topic_partitions()}
    changes = [c for c in feed.iter_changes(start, forever=False) if c is not None]
    return changes


def publish(
    backend: Backend, items: Sequence[tuple[str, ChangeMeta]], one_by_one: bool = False
) -> None:
    with backend.publisher() as pub:
        if one_by_one:
            for topic, m in items:
                pub.publish(topic, m)
        else:
            pub.publish_many(items)
        pub.flush()


def publish_raw(backend: Backend, topic: str, key: str, value: bytes) -> None:
    """Append bytes that are not a valid stub, as a buggy or foreign producer would."""
    pub = backend.publisher()
    try:
        append_raw = getattr(pub, "append_raw", None)
        if append_raw is not None:
            append_raw([(topic, key, value)])
        else:
            from confluent_kafka import Producer

            assert backend.url.startswith("kafka://"), "backend offers no raw append"
            producer = Producer({"bootstrap.servers": backend.url.removeprefix("kafka://")})
            producer.produce(topic, key=key.encode(), value=value)
            assert producer.flush(10) == 0
        pub.flush()
    finally:
        pub.close()


# -- publish and read -------------------------------------------------------------------


def test_publish_one_and_read_back(backend: Backend) -> None:
    topic = make_topic(backend)
    publish(backend, [(topic, meta("a", 1, document_type="form", domain="acme"))])
    feed = open_feed(backend, [topic])
    (change,) = read_all(feed)
    feed.close()
    assert isinstance(change, Change) and change.is_valid
    assert (change.topic, change.partition, change.offset) == (topic, 0, 0)
    assert change.id == "a"
    assert change.metadata is not None
    assert (change.metadata.document_type, change.metadata.domain, change.metadata.version) == (
        "form",
        "acme",
        1,
    )
    assert change.metadata.publish_timestamp is not None
    assert change.metadata.original_publication_timestamp is not None


def test_publish_batch_across_topics(backend: Backend) -> None:
    t1, t2 = make_topic(backend, 2), make_topic(backend, 3)
    items = [(t1 if i % 3 else t2, meta(f"d{i}", i)) for i in range(300)]
    publish(backend, items)
    feed = open_feed(backend, [t1, t2])
    changes = read_all(feed)
    feed.close()
    assert sorted((c.topic, c.id) for c in changes) == sorted((t, m.document_id) for t, m in items)
    assert len(changes) == 300


def test_topic_partitions_sorted_over_topics(backend: Backend) -> None:
    t1, t2 = sorted([new_topic(), new_topic()])
    admin = backend.admin()
    admin.create_topic(t2, 2)
    admin.create_topic(t1, 3)
    admin.create_topic(t1, 3)  # idempotent
    infos = {i.name: i.partitions for i in admin.list_topics()}
    assert infos[t1] == 3 and infos[t2] == 2
    feed = open_feed(backend, [t2, t1])
    assert feed.topic_partitions() == [
        TopicPartition(t1, 0),
        TopicPartition(t1, 1),
        TopicPartition(t1, 2),
        TopicPartition(t2, 0),
        TopicPartition(t2, 1),
    ]
    feed.close()


def test_same_key_same_partition_in_order(backend: Backend) -> None:
    topic = make_topic(backend, 4)
    items = [(topic, meta(f"doc-{i % 10}", i)) for i in range(200)]
    publish(backend, items[:100])
    publish(backend, items[100:], one_by_one=True)
    feed = open_feed(backend, [topic])
    changes = read_all(feed)
    feed.close()
    partitions: dict[str, set[int]] = {}
    versions: dict[str, list[int]] = {}
    for c in changes:
        assert c.metadata is not None and c.metadata.version is not None
        partitions.setdefault(c.id, set()).add(c.partition)
        versions.setdefault(c.id, []).append(c.metadata.version)
    assert all(len(p) == 1 for p in partitions.values())
    assert len({p for ps in partitions.values() for p in ps}) > 1, "keys spread over partitions"
    # The backend's declared rule is where its publishers put each key.
    assert {d: {backend.partition_for(d, 4)} for d in partitions} == partitions
    for doc_id, vs in versions.items():
        assert vs == sorted(vs) and len(vs) == 20, doc_id


def test_offsets_increase_per_partition(backend: Backend) -> None:
    topic = make_topic(backend, 2)
    publish(backend, [(topic, meta(f"d{i}", i)) for i in range(60)])
    feed = open_feed(backend, [topic])
    by_part: dict[int, list[int]] = {}
    for c in read_all(feed):
        by_part.setdefault(c.partition, []).append(c.offset)
    heads = feed.latest_offsets()
    feed.close()
    for part, offsets in by_part.items():
        assert offsets == sorted(set(offsets))
        assert heads[TopicPartition(topic, part)] == offsets[-1] + 1


def test_read_from_an_offset(backend: Backend) -> None:
    topic = make_topic(backend)
    publish(backend, [(topic, meta(f"d{i}", i)) for i in range(10)])
    feed = open_feed(backend, [topic])
    everything = read_all(feed)
    start = everything[6].offset
    tail = read_all(feed, {TopicPartition(topic, 0): start})
    assert [c.id for c in tail] == ["d6", "d7", "d8", "d9"]
    assert read_all(feed, {TopicPartition(topic, 0): everything[-1].offset + 1}) == []
    feed.close()


def test_latest_and_earliest_offsets(backend: Backend) -> None:
    topic = make_topic(backend, 2)
    feed = open_feed(backend, [topic])
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    assert feed.latest_offsets() == dict.fromkeys(tps, 0)
    assert feed.earliest_offsets() == dict.fromkeys(tps, 0)
    publish(backend, [(topic, meta(f"d{i}")) for i in range(25)])
    latest = feed.latest_offsets()
    assert set(latest) == set(tps)
    assert sum(latest.values()) == 25
    assert feed.earliest_offsets() == dict.fromkeys(tps, 0)
    feed.close()


def test_only_subscribed_topics_and_partitions(backend: Backend) -> None:
    t1, t2 = make_topic(backend, 2), make_topic(backend)
    publish(backend, [(t1, meta(f"a{i}")) for i in range(20)] + [(t2, meta("b"))])
    feed = open_feed(backend, [t1])
    only_p1 = read_all(feed, {TopicPartition(t1, 1): 0})
    feed.close()
    assert only_p1 and all((c.topic, c.partition) == (t1, 1) for c in only_p1)
    assert len(only_p1) < 20


# -- forever ------------------------------------------------------------------------------


def test_forever_yields_idle_sentinel_then_sees_new_changes(backend: Backend) -> None:
    topic = make_topic(backend)
    publish(backend, [(topic, meta("first"))])
    feed = open_feed(backend, [topic])
    seen: list[str] = []
    sentinels = 0
    publisher: threading.Thread | None = None
    for change in feed.iter_changes({TopicPartition(topic, 0): 0}, forever=True):
        if change is None:
            sentinels += 1
            if publisher is None:
                publisher = threading.Thread(
                    target=publish, args=(backend, [(topic, meta("second"))])
                )
                publisher.start()
            assert sentinels < 100, "the change published from a thread never arrived"
            continue
        seen.append(change.id)
        if change.id == "second":
            break
    assert publisher is not None
    publisher.join()
    feed.close()
    assert seen == ["first", "second"]
    assert sentinels >= 1


def _publish_in_process(url: str, topic: str, doc_id: str) -> None:
    backend = open_backend(url)
    publish(backend, [(topic, meta(doc_id))])
    backend.close()


def test_forever_sees_changes_from_another_process(backend: Backend) -> None:
    topic = make_topic(backend)
    feed = open_feed(backend, [topic])
    ctx = multiprocessing.get_context("spawn")
    proc = None
    got = None
    for change in feed.iter_changes({TopicPartition(topic, 0): 0}, forever=True):
        if change is None:
            if proc is None:
                proc = ctx.Process(target=_publish_in_process, args=(backend.url, topic, "remote"))
                proc.start()
            elif proc.exitcode not in (None, 0):
                pytest.fail(f"publisher process failed with {proc.exitcode}")
            continue
        got = change
        break
    assert proc is not None
    proc.join(30)
    feed.close()
    assert got is not None and got.id == "remote" and proc.exitcode == 0


# -- bad input and retention ----------------------------------------------------------------


def test_invalid_stub_comes_out_as_change_with_error(backend: Backend) -> None:
    topic = make_topic(backend)
    publish(backend, [(topic, meta("before"))])
    publish_raw(backend, topic, "bad-key", b"{not json")
    publish_raw(backend, topic, "no-fields", b'{"document_id": "x"}')
    publish(backend, [(topic, meta("after"))])
    feed = open_feed(backend, [topic])
    changes = read_all(feed)
    feed.close()
    assert [c.is_valid for c in changes] == [True, False, False, True]
    bad, missing = changes[1], changes[2]
    assert bad.metadata is None and bad.raw == b"{not json" and bad.id == "bad-key"
    assert bad.error and "JSON" in bad.error
    assert missing.error and "data_source_type" in missing.error
    assert [c.offset for c in changes] == sorted(c.offset for c in changes)


def _truncated_topic(backend: Backend) -> tuple[Backend, str]:
    """A topic whose first offsets were removed by retention: 30 published, offsets < 20 gone.

    SQLite log: ``?retention_count=`` plus ``apply_retention()``. Other backends: their
    admin's ``delete_records({tp: before_offset})`` (Kafka's DeleteRecords), when offered.
    """
    if backend.url.startswith("sqlite:"):
        retained = open_backend(f"{backend.url}?retention_count=10")
        topic = make_topic(retained)
        publish(retained, [(topic, meta(f"d{i}", i)) for i in range(30)], one_by_one=True)
        retained.apply_retention()  # type: ignore[attr-defined]
        return retained, topic
    delete_records = getattr(backend.admin(), "delete_records", None)
    if delete_records is None:
        pytest.skip(f"{type(backend).__name__} documents no way to remove old records")
    topic = make_topic(backend)
    publish(backend, [(topic, meta(f"d{i}", i)) for i in range(30)], one_by_one=True)
    delete_records({TopicPartition(topic, 0): 20})
    return open_backend(backend.url), topic


def test_retention_removed_offsets_jump_to_earliest(backend: Backend) -> None:
    retained, topic = _truncated_topic(backend)
    tp = TopicPartition(topic, 0)
    feed = open_feed(retained, [topic])
    earliest = feed.earliest_offsets()[tp]
    assert 0 < earliest <= 20
    assert feed.latest_offsets()[tp] == 30
    resets: list[tuple[TopicPartition, int, int]] = []
    feed.set_offset_reset_handler(lambda tp_, needed, first: resets.append((tp_, needed, first)))
    changes = read_all(feed, {tp: 3})
    feed.close()
    retained.close()
    assert resets == [(tp, 3, earliest)]
    assert [c.offset for c in changes] == list(range(earliest, 30))
    assert changes[-1].id == "d29"


def test_retention_removed_offsets_strict_raises(backend: Backend) -> None:
    retained, topic = _truncated_topic(backend)
    tp = TopicPartition(topic, 0)
    feed = retained.change_feed([topic], idle_timeout=IDLE, strict=True)  # type: ignore[call-arg]
    with pytest.raises(OffsetOutOfRangeError) as info:
        read_all(feed, {tp: 0})
    assert info.value.tp == tp and info.value.needed == 0 and info.value.earliest > 0
    # Reading from a retained offset is fine in strict mode.
    earliest = info.value.earliest
    assert read_all(feed, {tp: earliest})[0].offset == earliest
    feed.close()
    retained.close()


# -- a pillow end to end ------------------------------------------------------------------


def id_and_version(change: Change) -> tuple[str, int | None]:
    doc = change.document
    return change.id, None if doc is None else doc["_version"]


def marked_to_fail(change: Change) -> bool:
    return bool(change.document and change.document.get("fail"))


def collector() -> RecordingProcessor:
    """Records (id, version) of what it processed; fails documents marked ``fail``."""
    return RecordingProcessor(
        "Collect", record=id_and_version, fails_when=marked_to_fail, message="marked to fail"
    )


def test_pillow_end_to_end_with_checkpoints(backend: Backend, tmp_path: Path) -> None:
    topic = make_topic(backend, 3)
    docs = MemoryDocumentStore("docs")
    registry = DocumentStoreRegistry()
    registry.register(docs)
    checkpoints = CheckpointStore(f"sqlite:///{tmp_path}/state.db")
    name = f"p-{uuid.uuid4().hex[:8]}"

    def run_pillow() -> RecordingProcessor:
        proc = collector()
        feed = open_feed(backend, [topic])
        pillow = Pillow(
            name,
            feed,
            proc,
            checkpoints=checkpoints,
            document_stores=registry,
            batching=BatchPolicy(7, max_wait=0.5),
        )
        pillow.run(forever=False)
        feed.close()
        return proc

    def change_docs(ids: Iterator[int]) -> None:
        items = []
        for i in ids:
            doc_id = f"d{i}"
            version = docs.save(doc_id, {"i": i, "fail": i == 13})
            items.append((topic, meta(doc_id, version)))
        publish(backend, items)

    change_docs(iter(range(40)))
    docs.delete("d5")
    publish(backend, [(topic, meta("d5", 2, is_deletion=True))])
    first = run_pillow()
    seen_ids = {doc_id for doc_id, _ in first.seen}
    assert seen_ids == {f"d{i}" for i in range(40)} - {"d13"}
    # d5's save and deletion may share a batch (deduped) or not: the deletion comes last.
    assert [v for doc_id, v in first.seen if doc_id == "d5"][-1] is None
    feed = open_feed(backend, [topic])
    assert checkpoints.get(name) == feed.latest_offsets()
    (err,) = Pillow(name, feed, collector(), checkpoints=checkpoints).error_queue.list(name)
    feed.close()
    assert err.document_id == "d13" and "marked to fail" in err.message

    # A second run starts from the checkpoints: only new changes.
    change_docs(iter(range(100, 110)))
    second = run_pillow()
    assert sorted(doc_id for doc_id, _ in second.seen) == sorted(f"d{i}" for i in range(100, 110))


# -- caught up: the end of the log is told with the lists (adaptive batching) -------------


def read_lists_until_caught_up(feed: ChangeFeed, topic: str, expected: int) -> list[ChangeList]:
    """The lists of a forever read of every partition from 0, up to the first list that says
    it caught up after ``expected`` changes (or the idle sentinel, which fails the test)."""
    lists: list[ChangeList] = []
    seen = 0
    since = {tp: 0 for tp in feed.topic_partitions() if tp.topic == topic}
    for item in feed.iter_change_batches(since, forever=True):
        assert item is not None, "went idle before a list said it caught up"
        lists.append(item)
        seen += len(item)
        if item.caught_up:
            assert seen == expected, "caught up before everything published was read"
            break
    feed.close()
    return lists


def test_a_catch_up_read_ends_with_a_caught_up_list(backend: Backend) -> None:
    topic = make_topic(backend, partitions=2)
    publish(backend, [(topic, meta(f"d{i}")) for i in range(10)])
    lists = read_lists_until_caught_up(open_feed(backend, [topic]), topic, 10)
    assert sorted(c.id for changes in lists for c in changes) == sorted(f"d{i}" for i in range(10))
    # Kafka may tell of the end in an empty list right after the last changes.
    with_changes = [changes for changes in lists if changes]
    assert [c.caught_up for c in with_changes[:-1]] == [False] * (len(with_changes) - 1)
    assert lists[-1].caught_up and all(not changes for changes in lists[len(with_changes) :])


def test_a_backlog_comes_in_lists_not_caught_up_until_its_end(backend: Backend) -> None:
    topic = make_topic(backend, partitions=2)
    # 30 publishes of 400: more stored batches than the embedded log reads at once, more
    # messages than one Kafka consume() returns.
    for chunk in range(30):
        publish(backend, [(topic, meta(f"d{chunk}-{i}")) for i in range(400)])
    lists = read_lists_until_caught_up(open_feed(backend, [topic]), topic, 12000)
    assert len(lists) > 1
    assert not lists[0].caught_up
    assert [changes.caught_up for changes in lists] == [False] * (len(lists) - 1) + [True]
    assert sum(map(len, lists)) == 12000
