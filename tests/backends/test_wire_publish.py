"""Publishers write CommCare HQ's wire format when asked (issue 15, part 2): ``wire=hq`` on
the log URL, or ``Backend.publisher(wire=...)`` overriding it. The raw messages are checked
with the independent HQ decoder of tests/test_wire.py (`hq_wrap`), and a changefeed pillow
still reads them."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from changefeed.backends import Backend, BackendURLError, open_backend
from changefeed.backends.local import SQLiteLog
from changefeed.change import ChangeMeta
from changefeed.checkpoints import CheckpointStore
from changefeed.pillow import Pillow
from changefeed.wire import InvalidWireFormatError, WireFormat
from tests.backends.test_hq_stubs import read_all
from tests.doubles.processors import RecordingProcessor, change_stub
from tests.test_wire import hq_wrap


def with_option(url: str, option: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{option}"


def raw_records(backend: Backend, topic: str) -> list[tuple[bytes, bytes]]:
    """(key, value) of every message as stored, read without changefeed's decoder."""
    if isinstance(backend, SQLiteLog):
        conn = sqlite3.connect(backend.path)
        try:
            rows = conn.execute(
                "SELECT b.payload FROM batches b JOIN topics t ON t.id = b.topic_id "
                "WHERE t.name = ? ORDER BY b.partition, b.base_offset",
                (topic,),
            ).fetchall()
        finally:
            conn.close()
        out = []
        for (payload,) in rows:
            for element in orjson.loads(payload):
                if isinstance(element, list):  # a record stored byte for byte
                    key, text = element
                    out.append((key.encode(), text.encode("latin-1")))
                else:  # our own format, stored as the stub object itself
                    out.append((element["document_id"].encode(), orjson.dumps(element)))
        return out
    from confluent_kafka import Consumer
    from confluent_kafka import TopicPartition as KafkaTP

    feed = backend.change_feed([topic])
    try:
        heads = feed.latest_offsets()
    finally:
        feed.close()
    consumer = Consumer(
        {
            "bootstrap.servers": backend.url.removeprefix("kafka://").partition("?")[0],
            "group.id": f"raw-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    records: list[tuple[bytes, bytes]] = []
    try:
        consumer.assign([KafkaTP(tp.topic, tp.partition, 0) for tp in heads])
        while len(records) < sum(heads.values()):
            msg = consumer.poll(10)
            assert msg is not None and msg.error() is None
            key, value = msg.key(), msg.value()
            assert isinstance(key, bytes) and isinstance(value, bytes)
            records.append((key, value))
    finally:
        consumer.close()
    return records


def stubs(prefix: str, n: int) -> list[ChangeMeta]:
    return [
        ChangeMeta(
            f"{prefix}{i}",
            "sql",
            "case-sql",
            document_type="CommCareCase",
            domain="demo",
            document_rev=f"{i + 1}-abc",
            attempts=i,
            associated_document_id="form-1" if i else None,
            extra={"backend_id": "sql"},
        )
        for i in range(n)
    ]


def publish_all(backend: Backend, topic: str, metas: Sequence[ChangeMeta], **kw: Any) -> None:
    """One stub through `publish`, the rest through `publish_many`."""
    publisher = backend.publisher(**kw)
    try:
        publisher.publish(topic, metas[0])
        publisher.publish_many((topic, m) for m in metas[1:])
        publisher.flush()
    finally:
        publisher.close()


def same_stub(got: ChangeMeta | None, want: ChangeMeta) -> bool:
    """Equal, timestamps to the microsecond (HQ's datetimes carry no more)."""
    assert got is not None
    stamps = ("publish_timestamp", "original_publication_timestamp")
    for name in stamps:
        a, b = getattr(got, name), getattr(want, name)
        if (a is None) != (b is None) or (a is not None and abs(a - b) > 1e-6):
            return False
    return {k: v for k, v in got.to_dict().items() if k not in stamps} == {
        k: v for k, v in want.to_dict().items() if k not in stamps
    }


def check_hq(records: list[tuple[bytes, bytes]], metas: Sequence[ChangeMeta]) -> None:
    assert sorted(k for k, _ in records) == sorted(m.document_id.encode() for m in metas)
    by_id = {m.document_id: m for m in metas}
    for key, value in records:
        got = hq_wrap(value)
        meta = by_id[key.decode()]
        assert got["document_id"] == meta.document_id
        assert got["document_rev"] == meta.document_rev
        assert got["attempts"] == meta.attempts
        assert got["associated_document_id"] == meta.associated_document_id
        assert got["backend_id"] == "sql"
        assert got["original_publication_datetime"] is not None
        assert b'"v"' not in value


def test_wire_hq_on_the_url(backend_url: str) -> None:
    backend = open_backend(with_option(backend_url, "wire=hq"))
    try:
        assert backend.wire is WireFormat.HQ  # type: ignore[attr-defined]
        topic = f"hq-{uuid.uuid4().hex[:8]}"
        backend.admin().create_topic(topic, 2)
        metas = stubs("u", 4)
        publish_all(backend, topic, metas)
        check_hq(raw_records(backend, topic), metas)
        changes = read_all(backend, topic)
        assert [c.error for c in changes] == [None] * 4
        by_id = {c.id: c.metadata for c in changes}
        assert all(same_stub(by_id[m.document_id], m) for m in metas)
    finally:
        backend.close()


def test_wire_hq_from_an_asynchronous_kafka_publisher(kafka_url: str) -> None:
    backend = open_backend(with_option(kafka_url, "wire=hq"))
    try:
        topic = f"hq-{uuid.uuid4().hex[:8]}"
        backend.admin().create_topic(topic, 1)
        metas = stubs("a", 3)
        publish_all(backend, topic, metas, asynchronous=True)
        check_hq(raw_records(backend, topic), metas)
    finally:
        backend.close()


def test_publisher_argument_overrides_the_url(backend_url: str) -> None:
    hq_url = open_backend(with_option(backend_url, "wire=hq"))
    plain = open_backend(backend_url)
    try:
        topic = f"w-{uuid.uuid4().hex[:8]}"
        hq_url.admin().create_topic(topic, 1)
        ours = stubs("c", 2)
        publish_all(hq_url, topic, ours, wire="changefeed")
        publish_all(plain, topic, stubs("h", 2), wire="hq")
        records = raw_records(plain, topic)
        assert len(records) == 4
        for key, value in records:
            if key.startswith(b"c"):
                assert b'"v"' in value and b"original_publication_datetime" not in value
            else:
                assert hq_wrap(value)["document_id"] == key.decode()
        assert [c.error for c in read_all(plain, topic)] == [None] * 4
    finally:
        hq_url.close()
        plain.close()


def test_a_pillow_reads_what_an_hq_publisher_wrote(backend_url: str, tmp_path: Path) -> None:
    backend = open_backend(with_option(backend_url, "wire=hq"))
    try:
        topic = f"hq-{uuid.uuid4().hex[:8]}"
        backend.admin().create_topic(topic, 3)
        metas = stubs("p", 6)
        publish_all(backend, topic, metas)
        checkpoints = CheckpointStore(f"sqlite:///{tmp_path}/state.db")
        feed = backend.change_feed([topic], idle_timeout=0.2)
        proc = RecordingProcessor("Collect", record=change_stub, needs_documents=False)
        pillow = Pillow(f"hq-{uuid.uuid4().hex[:6]}", feed, proc, checkpoints=checkpoints)
        try:
            pillow.run(forever=False)
            assert pillow.error_queue.list(pillow.name) == []
        finally:
            feed.close()
        seen = sorted(proc.seen, key=lambda m: m.document_id)
        assert len(seen) == len(metas) and all(map(same_stub, seen, metas))
    finally:
        backend.close()


def test_unknown_wire_format_is_refused(backend_url: str) -> None:
    with pytest.raises(BackendURLError, match="unknown wire format 'xml'"):
        open_backend(with_option(backend_url, "wire=xml"))
    backend = open_backend(backend_url)
    try:
        with pytest.raises(InvalidWireFormatError):
            backend.publisher(wire="xml")
    finally:
        backend.close()
