"""CommCare HQ's stubs on both logs: HQ writes, changefeed reads; changefeed writes, HQ reads.

HQ's producer writes ``json.dumps(change_meta.to_json())`` keyed by the document id; these
tests put the golden stubs (tests/data/hq_stubs.jsonl) into the log the same way — raw bytes
through the embedded log's raw append, a plain confluent-kafka ``Producer`` on Kafka — and
read them with a changefeed feed and a pillow, checking every field.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

from changefeed.backends import Backend
from changefeed.change import Change, ChangeMeta, TopicPartition
from changefeed.checkpoints import CheckpointStore
from changefeed.pillow import Pillow
from changefeed.wire import encode_hq, message_key
from tests.doubles.processors import RecordingProcessor, change_stub
from tests.test_wire import EXPECTED, fields_of, golden_lines, hq_wrap

IDLE = 0.2


def append_raw(backend: Backend, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    """(key, value) records written as another producer would write them."""
    if backend.url.startswith("kafka://"):
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": backend.url.removeprefix("kafka://")})
        for key, value in records:
            producer.produce(topic, key=key, value=value)
        assert producer.flush(10) == 0
        return
    pub = backend.publisher()
    try:
        pub.append_raw([(topic, key.decode(), value) for key, value in records])  # type: ignore[attr-defined]
    finally:
        pub.close()


def read_all(backend: Backend, topic: str) -> list[Change]:
    feed = backend.change_feed([topic], idle_timeout=IDLE)
    try:
        since = {tp: 0 for tp in feed.topic_partitions()}
        return [c for c in feed.iter_changes(since, forever=False) if c is not None]
    finally:
        feed.close()


def new_topic(backend: Backend, partitions: int = 1) -> str:
    topic = f"case-sql-{uuid.uuid4().hex[:10]}"
    backend.admin().create_topic(topic, partitions)
    return topic


def golden_records() -> list[tuple[bytes, bytes]]:
    return [
        (str(expected["document_id"]).encode(), raw)
        for expected, raw in zip(EXPECTED, golden_lines(), strict=True)
    ]


def test_hq_stubs_read_by_a_feed_with_every_field(backend: Backend) -> None:
    topic = new_topic(backend)
    append_raw(backend, topic, golden_records())
    changes = read_all(backend, topic)
    assert [c.error for c in changes] == [None] * len(EXPECTED)
    assert [fields_of(c.metadata) for c in changes if c.metadata] == EXPECTED
    assert [c.id for c in changes] == [e["document_id"] for e in EXPECTED]
    assert [c.deleted for c in changes] == [e["is_deletion"] for e in EXPECTED]


def test_hq_stubs_through_a_pillow_none_to_the_error_queue(
    backend: Backend, tmp_path: Path
) -> None:
    topic = new_topic(backend, partitions=3)
    append_raw(backend, topic, golden_records())
    checkpoints = CheckpointStore(f"sqlite:///{tmp_path}/state.db")
    feed = backend.change_feed([topic], idle_timeout=IDLE)
    proc = RecordingProcessor("Collect", record=change_stub, needs_documents=False)
    pillow = Pillow(f"hq-{uuid.uuid4().hex[:6]}", feed, proc, checkpoints=checkpoints)
    try:
        pillow.run(forever=False)
        assert pillow.error_queue.list(pillow.name) == []
        assert checkpoints.get(pillow.name) == feed.latest_offsets()
    finally:
        feed.close()
    got = sorted((fields_of(m) for m in proc.seen), key=lambda f: str(f["document_id"]))
    assert got == sorted(EXPECTED, key=lambda f: str(f["document_id"]))


def test_stubs_written_in_hq_format_read_by_hq_and_by_changefeed(backend: Backend) -> None:
    """What changefeed writes with the ``hq`` wire format: an HQ consumer parses every
    message (and its key), and a changefeed pillow reads the same stubs back."""
    metas = [ChangeMeta.decode(raw) for raw in golden_lines()]
    for m in metas:
        m.attempts += 1  # as a retrying publisher would
    topic = new_topic(backend, partitions=2)
    append_raw(backend, topic, [(message_key(m), encode_hq(m)) for m in metas])
    changes = read_all(backend, topic)
    by_id = {c.id: c for c in changes}
    assert sorted(by_id) == sorted(m.document_id for m in metas)
    for m in metas:
        assert by_id[m.document_id].metadata == m

    if backend.url.startswith("kafka://"):
        from confluent_kafka import Consumer
        from confluent_kafka import TopicPartition as KafkaTP

        consumer = Consumer(
            {
                "bootstrap.servers": backend.url.removeprefix("kafka://"),
                "group.id": f"hq-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.assign([KafkaTP(topic, p, 0) for p in range(2)])
            seen: dict[bytes, dict[str, object]] = {}
            while len(seen) < len(metas):
                msg = consumer.poll(10)
                assert msg is not None and msg.error() is None
                seen[msg.key()] = hq_wrap(msg.value())
        finally:
            consumer.close()
        assert sorted(seen) == sorted(message_key(m) for m in metas)
        for m in metas:
            got = seen[message_key(m)]
            assert got["document_id"] == m.document_id and got["attempts"] == m.attempts


def test_partition_of_an_hq_stub_follows_its_document(backend: Backend) -> None:
    """Keyed by the document id as HQ keys them: one document's stubs share a partition."""
    topic = new_topic(backend, partitions=4)
    meta = ChangeMeta.decode(golden_lines()[0])
    append_raw(backend, topic, [(message_key(meta), encode_hq(meta))] * 3)
    changes = read_all(backend, topic)
    assert len({TopicPartition(c.topic, c.partition) for c in changes}) == 1
    assert [c.offset for c in changes] == sorted(c.offset for c in changes)
