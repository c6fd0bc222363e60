"""The Kafka backend against a real Kafka-protocol broker (noida-db): URLs, publishing,
reading several topics and partitions, checkpoints, retention and poison messages.

The backend conformance suite (test_conformance.py) covers the shared contract; these tests
cover what is Kafka's own. Topic names are unique per test: the broker lives for the session.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient

from changefeed.app import App
from changefeed.backends import BackendURLError, OffsetOutOfRangeError, PublishError, open_backend
from changefeed.backends.kafka import KafkaBackend, parse_kafka_url
from changefeed.change import ChangeMeta, TopicPartition
from changefeed.checkpoints import CheckpointStore
from changefeed.errors import INVALID_STUB
from changefeed.pillow import BatchPolicy, Pillow
from changefeed.processors import BulkProcessor
from changefeed.status import pillow_status
from tests.doubles.processors import RecordingProcessor
from tests.harness._util import free_port

IDLE = 0.2


def recorder() -> RecordingProcessor:
    """Remembers every change it processed, as (topic, partition, offset, id)."""
    return RecordingProcessor(
        "Recorder",
        record=lambda c: (c.topic, c.partition, c.offset, c.id),
        needs_documents=False,
    )


def stub(doc_id: str, **kw: Any) -> ChangeMeta:
    return ChangeMeta(doc_id, "sql", "main", **kw)


def unique(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(cond: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll a condition (a bound on waiting, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


@pytest.fixture
def backend(kafka_bootstrap: str) -> KafkaBackend:
    b = open_backend(f"kafka://{kafka_bootstrap}?client_id=changefeed-tests")
    assert isinstance(b, KafkaBackend)
    return b


@pytest.fixture
def checkpoints(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(f"sqlite:///{tmp_path}/state.db")


def make_pillow(
    backend: KafkaBackend,
    topics: Sequence[str],
    checkpoints: CheckpointStore,
    name: str,
    processor: BulkProcessor | None = None,
    **feed_options: Any,
) -> Pillow:
    feed_options.setdefault("idle_timeout", IDLE)
    feed = backend.change_feed(list(topics), client_id=name, **feed_options)
    return Pillow(
        name,
        feed,
        processor or recorder(),
        checkpoints=checkpoints,
        batching=BatchPolicy(50, max_wait=0.3),
    )


# -- configuration by URL -------------------------------------------------------------------


def test_url_options_pass_through_and_secrets_are_masked() -> None:
    config = parse_kafka_url(
        "kafka://b1:9092,b2:9093?client_id=app&security_protocol=SASL_SSL&sasl_mechanism=PLAIN"
        "&sasl_username=svc&sasl_password=s3cret&ssl_ca_location=/etc/ca.pem&partitions=6"
    )
    assert config.bootstrap_servers == "b1:9092,b2:9093"
    assert config.partitions == 6
    assert config.client == {
        "client.id": "app",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "svc",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ca.pem",
    }
    assert "s3cret" not in config.url and "sasl_password=***" in config.url
    backend = KafkaBackend(config)
    assert "s3cret" not in repr(backend) and "s3cret" not in backend.url
    assert "s3cret" not in repr(config)


def test_prefetch_is_bounded_and_consumer_options_reach_only_consumers() -> None:
    from changefeed.backends.kafka.consumer import CONSUMER_DEFAULTS

    # librdkafka's own default prefetches 100,000 stubs per partition
    assert CONSUMER_DEFAULTS["queued.min.messages"] == 5000
    config = parse_kafka_url("kafka://b1:9092?queued_min_messages=200&fetch_wait_max_ms=50")
    consumer = config.common("feed", "consumer")
    assert consumer["queued.min.messages"] == "200" and consumer["fetch.wait.max.ms"] == "50"
    for role in ("producer", "admin"):
        assert "queued.min.messages" not in config.common("x", role)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("kafka://", "at least one broker"),
        ("kafka://localhost", "host:port"),
        ("kafka://h:9092?sasl_pasword=x", "unknown kafka URL option 'sasl_pasword'"),
        ("kafka://h:9092?partitions=0", "partitions must be at least 1"),
        ("kafka://h:9092/topic", "no path"),
    ],
)
def test_bad_urls_are_one_line_errors(url: str, message: str) -> None:
    with pytest.raises(BackendURLError, match=message):
        open_backend(url)


# -- publishing -----------------------------------------------------------------------------


def test_sync_async_and_batch_publish_across_topics_and_partitions(backend: KafkaBackend) -> None:
    t1, t2 = unique("pub"), unique("pub")
    admin = backend.admin()
    admin.create_topic(t1, 3)
    admin.create_topic(t2, 2)
    with backend.publisher() as sync:
        for i in range(20):
            sync.publish(t1, stub(f"s{i}"))
        sync.publish_many([(t2, stub(f"b{i}")) for i in range(30)])
    with backend.publisher(asynchronous=True) as fast:
        for i in range(200):
            fast.publish(t1 if i % 2 else t2, stub(f"a{i % 50}", version=i))
        fast.flush()
    feed = backend.change_feed([t1, t2], idle_timeout=IDLE)
    heads = feed.latest_offsets()
    assert sum(heads.values()) == 250
    changes = [c for c in feed.iter_changes(dict.fromkeys(heads, 0)) if c is not None]
    feed.close()
    assert len(changes) == 250
    assert {c.topic for c in changes} == {t1, t2}
    assert len({(c.topic, c.partition) for c in changes}) == 5
    # The key is the document id: one document, one partition, in publish order.
    where: dict[tuple[str, str], set[int]] = {}
    versions: dict[tuple[str, str], list[int]] = {}
    for c in changes:
        where.setdefault((c.topic, c.id), set()).add(c.partition)
        if c.metadata is not None and c.metadata.version is not None:
            versions.setdefault((c.topic, c.id), []).append(c.metadata.version)
    assert all(len(parts) == 1 for parts in where.values())
    assert all(vs == sorted(vs) for vs in versions.values())


def test_publish_creates_missing_topics_with_the_urls_partition_count(kafka_bootstrap: str) -> None:
    backend = open_backend(f"kafka://{kafka_bootstrap}?partitions=4")
    topic = unique("auto")
    with backend.publisher() as pub:
        pub.publish(topic, stub("x"))
    assert {i.name: i.partitions for i in backend.admin().list_topics()}[topic] == 4


def test_publish_error_when_the_broker_is_down() -> None:
    dead = f"127.0.0.1:{free_port()}"
    # Topic check first: no broker to ask.
    checking = open_backend(f"kafka://{dead}?timeout=1")
    with pytest.raises(PublishError, match="cannot reach Kafka"):
        checking.publisher().publish("form", stub("a"))
    # Without the topic check the delivery itself times out, synchronously ...
    backend = open_backend(f"kafka://{dead}?auto_create_topics=false")
    sync = backend.publisher(delivery_timeout=1.0)
    with pytest.raises(PublishError, match=r"could not publish stub for 'a' to topic 'form'"):
        sync.publish("form", stub("a"))
    with pytest.raises(PublishError, match="could not publish"):
        sync.publish_many([("form", stub("b")), ("form", stub("c"))])
    # ... and asynchronously: the failure surfaces at flush, never dropped.
    fast = backend.publisher(asynchronous=True, delivery_timeout=1.0)
    fast.publish("form", stub("d"))
    with pytest.raises(PublishError, match=r"'d'.*'form'"):
        fast.flush()
    assert fast.failed_total == 1


# -- reading --------------------------------------------------------------------------------


def test_pillow_checkpoints_per_partition_and_resumes_after_restart(
    backend: KafkaBackend, checkpoints: CheckpointStore, kafka_bootstrap: str
) -> None:
    t1, t2 = unique("cp"), unique("cp")
    backend.admin().create_topic(t1, 3)
    backend.admin().create_topic(t2, 2)
    with backend.publisher() as pub:
        pub.publish_many([(t1 if i % 3 else t2, stub(f"d{i}")) for i in range(120)])
    name = unique("pillow")
    first = make_pillow(backend, [t1, t2], checkpoints, name)
    assert first.run(forever=False) == 120
    heads = first.change_feed.latest_offsets()
    first.change_feed.close()
    assert len(heads) == 5
    assert checkpoints.get(name) == heads
    # Offsets are mirrored into Kafka for standard lag tools (after our checkpoint).
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    request = ConsumerGroupTopicPartitions(name)
    committed = admin.list_consumer_group_offsets([request])[name].result(timeout=10)
    assert {
        TopicPartition(k.topic, k.partition): k.offset for k in committed.topic_partitions
    } == heads

    # A new process (new pillow, new feed) starts at the checkpoints: only new changes.
    with backend.publisher() as pub:
        pub.publish_many([(t1, stub(f"n{i}")) for i in range(30)])
    processor = recorder()
    second = make_pillow(backend, [t1, t2], checkpoints, name, processor)
    assert second.run(forever=False) == 30
    second.change_feed.close()
    assert set(processor.ids) == {f"n{i}" for i in range(30)}
    assert sum(checkpoints.get(name).values()) == 150


def test_each_list_says_where_the_feed_stands_after_it(backend: KafkaBackend) -> None:
    """The lists the feed hands over carry the consumer's position after them: per partition,
    one past the last change read so far (the pillow checkpoints there)."""
    topic = unique("ends")
    backend.admin().create_topic(topic, 3)
    with backend.publisher() as pub:
        pub.publish_many([(topic, stub(f"d{i}")) for i in range(60)])
    feed = backend.change_feed([topic], client_id=unique("ends"), idle_timeout=IDLE, batch_rows=7)
    start = {TopicPartition(topic, p): 0 for p in range(3)}
    read = dict(start)
    with_ends = 0
    for changes in feed.iter_change_batches(start):
        assert changes
        for c in changes:
            assert c.offset == read[c.topic_partition]  # in order, nothing skipped
            read[c.topic_partition] = c.offset + 1
        ends = getattr(changes, "next_offsets", None)
        if ends is not None:
            with_ends += 1
            assert ends == read
    feed.close()
    assert with_ends > 0
    assert read == backend.change_feed([topic]).latest_offsets()
    assert sum(read.values()) == 60


def test_forever_flushes_partial_batches_on_idle(
    backend: KafkaBackend, checkpoints: CheckpointStore
) -> None:
    topic = unique("idle")
    backend.admin().create_topic(topic, 2)
    name = unique("pillow")
    processor = recorder()
    pillow = make_pillow(backend, [topic], checkpoints, name, processor)
    thread = threading.Thread(target=pillow.run, kwargs={"forever": True})
    thread.start()
    try:
        with backend.publisher() as pub:
            pub.publish_many([(topic, stub(f"d{i}")) for i in range(7)])
        wait_until(lambda: sum(checkpoints.get(name).values()) == 7, what="checkpoint of 7")
    finally:
        pillow.stop()
        thread.join(30)
        pillow.change_feed.close()
    assert set(processor.ids) == {f"d{i}" for i in range(7)}


def test_poison_message_goes_to_the_error_queue(
    backend: KafkaBackend, checkpoints: CheckpointStore, kafka_bootstrap: str
) -> None:
    topic = unique("poison")
    backend.admin().create_topic(topic, 1)
    with backend.publisher() as pub:
        pub.publish(topic, stub("before"))
    raw = Producer({"bootstrap.servers": kafka_bootstrap})
    raw.produce(topic, key=b"bad-doc", value=b"{not json")
    raw.produce(topic, key=b"empty", value=None)
    assert raw.flush(10) == 0
    with backend.publisher() as pub:
        pub.publish(topic, stub("after"))
    name = unique("pillow")
    processor = recorder()
    pillow = make_pillow(backend, [topic], checkpoints, name, processor)
    assert pillow.run(forever=False) == 4
    pillow.change_feed.close()
    assert set(processor.ids) == {"before", "after"}
    assert checkpoints.get(name) == {TopicPartition(topic, 0): 4}
    errors = {e.document_id: e for e in pillow.error_queue.list(name)}
    assert set(errors) == {"bad-doc", "empty"}
    bad = errors["bad-doc"]
    assert bad.processor == INVALID_STUB and bad.stub == b"{not json" and "JSON" in bad.message
    assert (bad.topic, bad.partition, bad.offset) == (topic, 0, 1)


# -- offsets removed by retention -------------------------------------------------------------


def _truncated(backend: KafkaBackend, partitions: int = 2) -> tuple[str, dict[TopicPartition, int]]:
    """A topic with 40 stubs whose first offsets are gone: returns the earliest per partition."""
    topic = unique("ret")
    admin = backend.admin()
    admin.create_topic(topic, partitions)
    with backend.publisher() as pub:
        pub.publish_many([(topic, stub(f"d{i}")) for i in range(40)])
    feed = backend.change_feed([topic])
    heads = feed.latest_offsets()
    admin.delete_records({tp: head // 2 for tp, head in heads.items()})
    earliest = feed.earliest_offsets()
    feed.close()
    assert all(earliest[tp] == heads[tp] // 2 > 0 for tp in heads)
    return topic, earliest


def test_retention_default_mode_jumps_to_earliest_and_records_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    app = App(f"kafka://{kafka_bootstrap}", f"sqlite:///{tmp_path}/state.db")
    backend = app.backend
    assert isinstance(backend, KafkaBackend)
    topic, earliest = _truncated(backend)
    name = unique("pillow")
    processor = recorder()
    pillow = app.constructed_pillow(
        name, [topic], processor, feed_options={"idle_timeout": IDLE}, max_wait=0.3
    )
    app.checkpoints.commit(name, dict.fromkeys(earliest, 1))
    pillow.run(forever=False)
    heads = pillow.change_feed.latest_offsets()
    assert app.checkpoints.get(name) == heads
    assert len(processor.seen) == sum(heads[tp] - earliest[tp] for tp in heads)
    history = app.checkpoints.history(name)
    assert {(h.tp, h.old_offset, h.new_offset) for h in history} == {
        (tp, 1, first) for tp, first in earliest.items()
    }
    assert all("retention" in h.reason for h in history)
    status = pillow_status(app, pillow)
    assert len([n for n in status.notes if "retention" in n]) == 2
    pillow.change_feed.close()
    app.close()


def test_retention_strict_mode_stops_with_a_clear_error(
    backend: KafkaBackend, checkpoints: CheckpointStore
) -> None:
    topic, earliest = _truncated(backend, partitions=1)
    tp = TopicPartition(topic, 0)
    name = unique("pillow")
    pillow = make_pillow(backend, [topic], checkpoints, name, strict=True)
    with pytest.raises(OffsetOutOfRangeError) as info:
        pillow.run(forever=False)
    pillow.change_feed.close()
    assert (info.value.tp, info.value.needed, info.value.earliest) == (tp, 0, earliest[tp])
    assert f"offset 0 of {topic}[0]" in str(info.value)
    assert f"first available offset is {earliest[tp]}" in str(info.value)
    assert checkpoints.get(name) == {}
    assert checkpoints.history(name) == []


def test_retention_removing_offsets_while_reading(backend: KafkaBackend) -> None:
    """Offsets removed after the read began are caught by the fetch (auto.offset.reset=error):
    pausing the partition drops what was prefetched, so the next fetch asks for a gone offset."""
    topic = unique("ret-live")
    admin = backend.admin()
    admin.create_topic(topic, 1)
    with backend.publisher() as pub:
        pub.publish_many([(topic, stub(f"d{i}")) for i in range(30)])
    tp = TopicPartition(topic, 0)
    ktp = [KafkaTopicPartition(topic, 0)]
    feed = backend.change_feed([topic], idle_timeout=IDLE, batch_rows=1)
    resets: list[tuple[TopicPartition, int, int]] = []
    feed.set_offset_reset_handler(lambda tp_, needed, first: resets.append((tp_, needed, first)))
    offsets = []
    for change in feed.iter_changes({tp: 0}, forever=True):
        if change is None:
            continue
        offsets.append(change.offset)
        if change.offset == 4:
            feed.consumer.pause(ktp)
            admin.delete_records({tp: 20})
            feed.consumer.resume(ktp)
        if change.offset == 29:
            break
    feed.close()
    assert offsets == [*range(5), *range(20, 30)]
    assert resets == [(tp, 5, 20)]
