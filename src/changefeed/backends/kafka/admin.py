"""Kafka topic admin and the metadata look-ups a change feed needs (partitions, offsets).

Everything goes through confluent-kafka's AdminClient with standard Kafka requests
(CreateTopics, CreatePartitions, Metadata, ListOffsets, DescribeConfigs), so it works the
same against any Kafka cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
)

from changefeed.backends.base import (
    CreatedTopic,
    LogUnavailableError,
    TopicAdmin,
    TopicDescription,
    TopicInfo,
    UnknownTopicError,
    partition_count,
)
from changefeed.backends.kafka.config import KafkaConfig
from changefeed.change import TopicPartition
from changefeed.identifiers import topic_name

_ALWAYS_SHOWN = frozenset({"retention.ms", "retention.bytes", "cleanup.policy"})


def _wait(future: Future[Any], timeout: float) -> Any:
    """A future's result; KafkaException carries the broker's error."""
    return future.result(timeout=timeout)


_REJECTED = frozenset(
    {
        KafkaError.INVALID_CONFIG,
        KafkaError.INVALID_PARTITIONS,
        KafkaError.INVALID_REPLICATION_FACTOR,
        KafkaError.INVALID_REPLICA_ASSIGNMENT,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.INVALID_REQUEST,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)
"""Broker answers that mean the request itself was wrong: reported as ValueError."""


def _rejected(what: str, exc: KafkaException) -> ValueError:
    err = exc.args[0]
    reason = err.str() if isinstance(err, KafkaError) else str(exc)
    return ValueError(f"Kafka rejected {what}: {reason}")


def _code(exc: BaseException) -> int | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        code: int = exc.args[0].code()
        return code
    return None


_UNREACHABLE = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
    }
)
"""Client errors that mean no broker answered (down, unreachable, or not within the
timeout), as opposed to an answer refusing the request."""


class KafkaMetadata:
    """Partitions and offsets of topics, through one AdminClient made on first use."""

    def __init__(self, config: KafkaConfig, client_id: str = "changefeed-admin") -> None:
        self.config = config
        self.client_id = client_id
        self._client: AdminClient | None = None

    @property
    def client(self) -> AdminClient:
        if self._client is None:
            self._client = AdminClient(self.config.common(self.client_id))
        return self._client

    @contextmanager
    def reaching(self) -> Iterator[None]:
        """Inside: a broker that does not answer (down, unreachable, or not within the
        URL's ``timeout``) is `LogUnavailableError` naming the address, not a raw
        `KafkaException` or a bare ``TimeoutError``."""
        try:
            yield
        except KafkaException as exc:
            if _code(exc) not in _UNREACHABLE:
                raise
            err = exc.args[0]
            raise self._unreachable(
                err.str() if isinstance(err, KafkaError) else str(exc)
            ) from None
        except TimeoutError:
            raise self._unreachable("no answer") from None

    def _unreachable(self, reason: str) -> LogUnavailableError:
        return LogUnavailableError(
            f"cannot reach Kafka at {self.config.bootstrap_servers} "
            f"within {self.config.timeout:g}s: {reason}"
        )

    def partition_counts(self, topics: Iterable[str] | None = None) -> dict[str, int]:
        """Partitions per existing topic (all non-internal topics when ``topics`` is None)."""
        with self.reaching():
            meta = self.client.list_topics(timeout=self.config.timeout)
        wanted = None if topics is None else set(topics)
        out: dict[str, int] = {}
        for name, info in meta.topics.items():
            if info.error is not None or (wanted is not None and name not in wanted):
                continue
            if wanted is None and name.startswith("__"):
                continue
            out[name] = len(info.partitions)
        return out

    def topic_partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        counts = self.partition_counts(topics)
        return sorted(TopicPartition(t, p) for t, n in counts.items() for p in range(n))

    def offsets_for_time(
        self, partitions: Iterable[TopicPartition], when: float
    ) -> dict[TopicPartition, int]:
        """Per partition, the first offset whose timestamp is at or after ``when`` (Unix
        seconds), asked of the broker's time index (ListOffsets by timestamp); the head
        when no message is that recent."""
        parts = list(partitions)
        spec = OffsetSpec.for_timestamp(int(when * 1000))
        request = {KafkaTopicPartition(tp.topic, tp.partition): spec for tp in parts}
        if not request:
            return {}
        timeout = self.config.timeout
        heads = self.offsets(parts, "latest")
        out: dict[TopicPartition, int] = {}
        with self.reaching():
            futures = self.client.list_offsets(request, request_timeout=timeout)
            for ktp, fut in futures.items():
                tp = TopicPartition(ktp.topic, ktp.partition)
                try:
                    offset = int(_wait(fut, timeout).offset)
                except KafkaException as exc:
                    if _code(exc) in _UNREACHABLE:
                        raise
                    raise _rejected(f"offsets for time of {tp}", exc) from None
                out[tp] = heads.get(tp, 0) if offset < 0 else offset
        return out

    def offsets(
        self, partitions: Iterable[TopicPartition], which: str
    ) -> dict[TopicPartition, int]:
        """``which`` is ``earliest`` or ``latest`` (the high watermark: the next offset)."""
        spec = OffsetSpec.earliest() if which == "earliest" else OffsetSpec.latest()
        request = {KafkaTopicPartition(tp.topic, tp.partition): spec for tp in partitions}
        if not request:
            return {}
        timeout = self.config.timeout
        out: dict[TopicPartition, int] = {}
        with self.reaching():
            futures = self.client.list_offsets(request, request_timeout=timeout)
            for ktp, fut in futures.items():
                try:
                    out[TopicPartition(ktp.topic, ktp.partition)] = int(_wait(fut, timeout).offset)
                except KafkaException as exc:
                    if _code(exc) != KafkaError.UNKNOWN_TOPIC_OR_PART:
                        raise
        return out


class KafkaTopicAdmin(TopicAdmin):
    """Create, list, describe and grow topics."""

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.metadata = KafkaMetadata(config)

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        config: Mapping[str, str] | None = None,
        replication_factor: int | None = None,
    ) -> CreatedTopic:
        """Create a topic; an existing one with fewer partitions is grown to ``partitions``
        (partitions are never removed); says which happened."""
        topic_name(name)
        partition_count(partitions)
        new = NewTopic(
            name,
            num_partitions=partitions,
            replication_factor=replication_factor
            if replication_factor is not None
            else self.config.replication_factor,
            config=dict(config or {}),
        )
        timeout = self.config.timeout
        try:
            with self.metadata.reaching():
                futures = self.metadata.client.create_topics([new], request_timeout=timeout)
                _wait(futures[name], timeout)
        except KafkaException as exc:
            code = _code(exc)
            if code in _REJECTED:
                raise _rejected(f"topic {name!r}", exc) from None
            if code != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            existing = self.metadata.partition_counts([name]).get(name, partitions)
            if existing < partitions:
                self.add_partitions(name, partitions)
                return CreatedTopic(name, partitions, existed=True, previous=existing)
            return CreatedTopic(name, existing, existed=True, previous=existing)
        return CreatedTopic(name, partitions)

    def list_topics(self) -> list[TopicInfo]:
        counts = self.metadata.partition_counts()
        return [TopicInfo(name, counts[name]) for name in sorted(counts)]

    def partition_count(self, name: str) -> int:
        count = self.metadata.partition_counts([name]).get(name)
        if count is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        return count

    def add_partitions(self, name: str, total: int) -> None:
        partition_count(total, "total partitions")
        current = self.partition_count(name)
        if total < current:
            raise ValueError(f"topic {name!r} has {current} partitions; cannot shrink to {total}")
        if total == current:
            return
        timeout = self.config.timeout
        try:
            with self.metadata.reaching():
                futures = self.metadata.client.create_partitions(
                    [NewPartitions(name, total)], request_timeout=timeout
                )
                _wait(futures[name], timeout)
        except KafkaException as exc:
            if _code(exc) in _REJECTED:
                raise _rejected(f"{total} partitions for topic {name!r}", exc) from None
            raise

    def delete_records(self, before: Mapping[TopicPartition, int]) -> None:
        """Remove every record below the given offset per partition (Kafka's DeleteRecords),
        as retention would: feeds then see these offsets as removed."""
        if not before:
            return
        timeout = self.config.timeout
        request = [KafkaTopicPartition(tp.topic, tp.partition, off) for tp, off in before.items()]
        with self.metadata.reaching():
            for future in self.metadata.client.delete_records(
                request, request_timeout=timeout
            ).values():
                _wait(future, timeout)

    def describe_topic(self, name: str) -> TopicDescription:
        count = self.partition_count(name)
        tps = [TopicPartition(name, p) for p in range(count)]
        earliest = self.metadata.offsets(tps, "earliest")
        latest = self.metadata.offsets(tps, "latest")
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        timeout = self.config.timeout
        with self.metadata.reaching():
            entries = _wait(
                self.metadata.client.describe_configs([resource], request_timeout=timeout)[
                    resource
                ],
                timeout,
            )
        config = {
            key: str(entry.value)
            for key, entry in entries.items()
            if entry.value is not None
            and not entry.is_sensitive
            and (not entry.is_default or key in _ALWAYS_SHOWN)
        }
        return TopicDescription(
            name,
            count,
            {tp.partition: off for tp, off in earliest.items()},
            {tp.partition: off for tp, off in latest.items()},
            config,
        )
