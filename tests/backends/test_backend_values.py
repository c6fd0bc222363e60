"""Values a log URL or the topic admin must refuse (issue 12): negative or non-finite
retention, unbounded partition counts, bad ports and timeouts, integers beyond 64 bits; an
existing topic is reported with its partition count; passwords never reach an error."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from changefeed.backends import MAX_PARTITIONS, BackendURLError, CreatedTopic, open_backend
from changefeed.backends.base import key_partition
from changefeed.backends.kafka.config import parse_kafka_url
from changefeed.backends.local import SQLiteLog
from changefeed.change import ChangeMeta
from changefeed.identifiers import redact_url
from tests._cli import cf_in_process


@pytest.mark.parametrize(
    "option",
    [
        "retention_count=-1",
        "retention_count=0",
        f"retention_count={2**64}",
        "retention_count=1e3",
        "retention_seconds=-5",
        "retention_seconds=0",
        "retention_seconds=nan",
        "retention_seconds=inf",
        "retention_seconds=1e400",
        "partitions=0",
        f"partitions={MAX_PARTITIONS + 1}",
        "partitions=2000000000",
        f"partitions={2**70}",
        "synchronous=sometimes",
    ],
)
def test_sqlite_url_values_refused(tmp_path: Path, option: str) -> None:
    name = option.partition("=")[0]
    with pytest.raises(BackendURLError) as info:
        open_backend(f"sqlite:///{tmp_path}/log.db?{option}")
    message = str(info.value)
    assert "\n" not in message and name in message


def test_refused_retention_deletes_nothing(tmp_path: Path) -> None:
    """The case of the issue: retention_count=-1 removed every unread change."""
    url = f"sqlite:///{tmp_path}/log.db"
    log = open_backend(url)
    with log.publisher() as pub:
        pub.publish_many(("t", ChangeMeta(f"d{i}", "sql", "s")) for i in range(20))
    with pytest.raises(BackendURLError):
        open_backend(f"{url}?retention_count=-1")
    with pytest.raises(ValueError, match="retention_count"):
        SQLiteLog(tmp_path / "log.db", retention_count=-1)
    with pytest.raises(ValueError, match="retention_seconds"):
        SQLiteLog(tmp_path / "log.db", retention_seconds=-5)
    feed = log.change_feed(["t"])
    try:
        assert sum(feed.latest_offsets().values()) - sum(feed.earliest_offsets().values()) == 20
    finally:
        feed.close()


def test_sqlite_url_values_accepted(tmp_path: Path) -> None:
    log = open_backend(
        f"sqlite:///{tmp_path}/log.db?retention_count=5&retention_seconds=0.5"
        f"&partitions={MAX_PARTITIONS}&wire=HQ"
    )
    assert isinstance(log, SQLiteLog)
    assert (log.retention_count, log.retention_seconds, log.default_partitions) == (
        5,
        0.5,
        MAX_PARTITIONS,
    )


@pytest.mark.parametrize(
    "url, words",
    [
        ("kafka://h:0", "port"),
        ("kafka://h:65536", "port"),
        ("kafka://h:99999", "port"),
        ("kafka://h:9092,g:70000", "port"),
        ("kafka://h:9092?timeout=nan", "timeout"),
        ("kafka://h:9092?timeout=inf", "timeout"),
        ("kafka://h:9092?timeout=-1", "timeout"),
        ("kafka://h:9092?timeout=0", "timeout"),
        ("kafka://h:9092?timeout=1e9", "timeout"),
        ("kafka://h:9092?timeout=soon", "timeout"),
        ("kafka://h:9092?partitions=0", "partitions"),
        (f"kafka://h:9092?partitions={MAX_PARTITIONS + 1}", "partitions"),
        (f"kafka://h:9092?partitions={2**70}", "partitions"),
        ("kafka://h:9092?replication_factor=0", "replication_factor"),
        ("kafka://h:9092?replication_factor=-2", "replication_factor"),
        ("kafka://h:9092?replication_factor=40000", "replication_factor"),
        (f"kafka://h:9092?replication_factor={2**64}", "replication_factor"),
        ("kafka://h:9092?wire=avro", "wire format"),
    ],
)
def test_kafka_url_values_refused(url: str, words: str) -> None:
    with pytest.raises(BackendURLError) as info:
        open_backend(url)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_kafka_url_values_accepted() -> None:
    config = parse_kafka_url(
        f"kafka://h:1,g:65535?timeout=2.5&partitions={MAX_PARTITIONS}&replication_factor=3"
    )
    assert (config.timeout, config.partitions, config.replication_factor) == (
        2.5,
        MAX_PARTITIONS,
        3,
    )


@pytest.mark.parametrize(
    "url",
    [
        "kafka://alice:s3cr3t@h:9092",
        "kafka://alice:s3cr3t@h:notaport",
        "kafka://h:9092?sasl_password=s3cr3t&nosuch=1",
        "kafka://h:9092?sasl_password=s3cr3t&timeout=nan",
        "sqlite:///x.db?nosuch=s3cr3t&password=s3cr3t",
        "postgresql://alice:s3cr3t@db/x",
        "nosuch://alice:s3cr3t@h",
    ],
)
def test_no_password_in_url_errors(url: str) -> None:
    with pytest.raises(BackendURLError) as info:
        open_backend(url)
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    "url, shown",
    [
        ("kafka://alice:s3cr3t@h:9092", "kafka://alice:***@h:9092"),
        ("postgresql://u:p%40ss@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("postgresql+psycopg://u:a@b@db/x", "postgresql+psycopg://u:***@db/x"),
        ("redis://:s3cr3t@h/0", "redis://:***@h/0"),
        ("http://user@h/", "http://user@h/"),
        ("sqlite:///a@b.db", "sqlite:///a@b.db"),
        ("kafka://h:1?sasl_password=s3cr3t&x=1", "kafka://h:1?sasl_password=***&x=1"),
        ("postgresql://h/db?password=s3cr3t", "postgresql://h/db?password=***"),
        ("at kafka://a:b@h:1 and http://c:d@e", "at kafka://a:***@h:1 and http://c:***@e"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_admin_bounds_partitions(backend_url: str) -> None:
    backend = open_backend(backend_url)
    try:
        admin = backend.admin()
        for bad in (0, -1, MAX_PARTITIONS + 1, 2_000_000_000):
            with pytest.raises(ValueError, match=str(MAX_PARTITIONS)):
                admin.create_topic(f"b-{uuid.uuid4().hex[:8]}", bad)
        name = f"b-{uuid.uuid4().hex[:8]}"
        admin.create_topic(name, 1)
        with pytest.raises(ValueError, match=str(MAX_PARTITIONS)):
            admin.add_partitions(name, MAX_PARTITIONS + 1)
        assert [i.partitions for i in admin.list_topics() if i.name == name] == [1]
    finally:
        backend.close()


def test_create_topic_says_what_it_did(backend_url: str) -> None:
    backend = open_backend(backend_url)
    try:
        admin = backend.admin()
        name = f"form-{uuid.uuid4().hex[:8]}"
        assert admin.create_topic(name, 4) == CreatedTopic(name, 4)
        kept = admin.create_topic(name, 2)
        assert kept == CreatedTopic(name, 4, existed=True, previous=4)
        assert kept.describe() == f"topic {name} exists (4 partitions)"
        grown = admin.create_topic(name, 6)
        assert grown == CreatedTopic(name, 6, existed=True, previous=4) and grown.grown
    finally:
        backend.close()


_cli = cf_in_process


def test_cli_topics_create_on_an_existing_topic(
    capsys: pytest.CaptureFixture[str], backend_url: str
) -> None:
    name = f"form-{uuid.uuid4().hex[:8]}"
    code, out, _ = _cli(capsys, "--log", backend_url, "topics", "create", name, "-p", "24")
    assert code == 0 and f"created {name} (24 partitions)" in out
    code, out, _ = _cli(capsys, "--log", backend_url, "topics", "create", name, "-p", "2")
    assert code == 0 and out.strip() == f"topic {name} exists (24 partitions)"
    code, out, err = _cli(
        capsys, "--log", backend_url, "topics", "create", "huge", "-p", "2000000000"
    )
    assert code == 2 and str(MAX_PARTITIONS) in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("partitioner", "known"),
    [("", True), ("&partitioner=consistent_random", True), ("&partitioner=murmur2_random", False)],
)
def test_kafka_places_keys_by_its_partitioner(partitioner: str, known: bool) -> None:
    """`Backend.partition_for` is CRC32 (`key_partition`) under librdkafka's default
    partitioner, and unknown (None: a search reads every partition) under another."""
    backend = open_backend(f"kafka://127.0.0.1:9?timeout=1{partitioner}")
    expected = [key_partition(f"doc-{i}", 6) for i in range(20)] if known else [None] * 20
    assert [backend.partition_for(f"doc-{i}", 6) for i in range(20)] == expected
    assert len(set(expected)) > 1 or not known
