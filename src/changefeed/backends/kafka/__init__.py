"""Apache Kafka as the log: the production backend, behind the same interfaces as the
embedded SQLite log.

``kafka://host:port,host:port?client_id=...&security_protocol=SASL_SSL&sasl_mechanism=PLAIN
&sasl_username=...&sasl_password=...&ssl_ca_location=...`` (see `config` for every
option). The pieces live in their own modules: `publisher`, `feed` (reading, on top of
`consumer` and `messages`), `admin`; this one only ties them to a URL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from changefeed.extras import MissingExtraError

try:  # one check for every module of this package
    import confluent_kafka  # noqa: F401
except ImportError as exc:
    raise MissingExtraError("kafka", exc) from exc

from changefeed.backends.base import Backend, TopicDescription, key_partition
from changefeed.backends.kafka.admin import KafkaTopicAdmin
from changefeed.backends.kafka.config import KafkaConfig, parse_kafka_url
from changefeed.backends.kafka.feed import KafkaChangeFeed
from changefeed.backends.kafka.publisher import KafkaPublisher
from changefeed.wire import WireFormat

CRC32_PARTITIONERS = (None, "consistent_random", "consistent")
"""librdkafka partitioners that place a key by CRC32 (`key_partition`); None: the default,
``consistent_random``."""


class KafkaBackend(Backend):
    """Publishers, change feeds and topic admin on one Kafka cluster."""

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.url = config.url
        self.wire = config.wire

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> KafkaBackend:
        """``create`` is for logs that opening makes (the embedded one): opening a Kafka
        log creates nothing either way."""
        return cls(parse_kafka_url(url))

    def publisher(
        self,
        *,
        asynchronous: bool = False,
        delivery_timeout: float | None = None,
        client_id: str = "changefeed-publisher",
        wire: WireFormat | str | None = None,
    ) -> KafkaPublisher:
        """Synchronous by default (`publish` returns once the stub is durable); ``wire``
        overrides the URL's stub format."""
        return KafkaPublisher(
            self.config,
            asynchronous=asynchronous,
            delivery_timeout=delivery_timeout,
            client_id=client_id,
            wire=wire,
        )

    def change_feed(
        self,
        topics: Sequence[str],
        *,
        client_id: str = "changefeed",
        idle_timeout: float = 1.0,
        strict: bool = False,
        group_id: str | None = None,
        commit_offsets: bool = True,
        batch_rows: int = 5000,
        consumer_config: Mapping[str, Any] | None = None,
    ) -> KafkaChangeFeed:
        """A feed on ``topics``; with ``group_id`` Kafka's consumer group splits partitions."""
        return KafkaChangeFeed(
            self.config,
            topics,
            client_id=client_id,
            idle_timeout=idle_timeout,
            strict=strict,
            group_id=group_id,
            commit_offsets=commit_offsets,
            batch_rows=batch_rows,
            consumer_config=consumer_config,
        )

    def admin(self) -> KafkaTopicAdmin:
        return KafkaTopicAdmin(self.config)

    def partition_for(self, key: str, partitions: int) -> int | None:
        """`key_partition` under librdkafka's CRC32 partitioners (the default); None under
        another one the URL names (``partitioner=murmur2_random``...)."""
        if self.config.client.get("partitioner") not in CRC32_PARTITIONERS:
            return None
        return key_partition(key, partitions)

    def __repr__(self) -> str:
        return f"KafkaBackend({self.url!r})"


__all__ = [
    "KafkaBackend",
    "KafkaChangeFeed",
    "KafkaConfig",
    "KafkaPublisher",
    "KafkaTopicAdmin",
    "TopicDescription",
    "parse_kafka_url",
]
