"""A Kafka-protocol broker of the tests' own: noida-db (PyPI ``noida-db==0.2.3``).

One broker per test session on a free port with its data in a temp dir; tests use unique
topic names. It can be restarted on the same port and data dir (broker-restart tests), and
every fixture use first makes sure it runs, so a test that stopped it cannot break the next.
Started through `changefeed.testing.servers.NoidaServer` (the binary inside the wheel, so
the PID we stop is the server's).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from changefeed.backends import Backend, open_backend
from changefeed.testing.servers import NoidaServer, ServerUnavailableError
from tests.harness._util import unavailable


class KafkaBroker(NoidaServer):
    """A noida-db process serving the Kafka protocol on 127.0.0.1:port."""

    def __init__(self) -> None:
        super().__init__("kafka")

    @property
    def bootstrap(self) -> str:
        return self.address

    @property
    def url(self) -> str:
        return self.kafka_url

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def delete_all_topics(self) -> None:
        """Drop every non-internal topic: a clean log, like a fresh SQLite file."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        names = [t for t in admin.list_topics(timeout=20).topics if not t.startswith("__")]
        if names:
            for future in admin.delete_topics(names, operation_timeout=20).values():
                future.result(timeout=30)

    def topic(self, prefix: str = "t") -> str:
        """A topic name no other test uses."""
        return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    broker = KafkaBroker()
    try:
        broker.start()
    except ServerUnavailableError as exc:
        broker.close()
        unavailable(str(exc))
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """``127.0.0.1:PORT`` of a running broker."""
    kafka_broker.ensure_running()
    return kafka_broker.bootstrap


@pytest.fixture
def kafka_url(kafka_broker: KafkaBroker) -> str:
    """``kafka://127.0.0.1:PORT`` of a running broker with no topics (a backend URL for
    `open_backend`), so tests written for a fresh embedded log work unchanged."""
    kafka_broker.ensure_running()
    kafka_broker.delete_all_topics()
    return kafka_broker.url


@pytest.fixture
def kafka_backend(kafka_url: str) -> Iterator[Backend]:
    """A Kafka backend on the test broker (no topics), closed after the test."""
    backend = open_backend(kafka_url)
    yield backend
    backend.close()


def read_ids(backend: Backend, topic: str) -> list[str]:
    """The document ids of every change in ``topic``, partition by partition."""
    feed = backend.change_feed([topic])
    try:
        since = feed.earliest_offsets()
        return [c.id for c in feed.iter_changes(since) if c is not None]
    finally:
        feed.close()
