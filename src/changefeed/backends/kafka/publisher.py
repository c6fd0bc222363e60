"""Publishing stubs to Kafka: key = document id, ``acks=all``, idempotent producer.

Synchronous by default, because a caller that saved a document must know its stub is in the
log: `KafkaPublisher.publish` waits for the broker's acknowledgement and raises
`PublishError` otherwise. The asynchronous mode queues and returns at once; every delivery
report is checked and failures are raised from the next `publish` or `flush`, never dropped.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from changefeed import gctune
from changefeed.backends.base import Publisher, PublishError
from changefeed.backends.kafka.admin import KafkaTopicAdmin
from changefeed.backends.kafka.config import KafkaConfig
from changefeed.change import ChangeMeta
from changefeed.identifiers import topic_name

log = logging.getLogger("changefeed.kafka")

PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "batch.num.messages": 10000,
    "queue.buffering.max.messages": 500000,
    "message.timeout.ms": 30000,
}
"""Durable by default; URL options override all but ``acks`` and idempotence."""


class KafkaPublisher(Publisher):
    """Puts stubs into Kafka topics.

    ``asynchronous=False``: `publish` and `publish_many` return once every stub is
    acknowledged by all in-sync replicas, or raise `PublishError`. ``asynchronous=True``:
    they return at once; call `flush` to wait, which raises if any delivery failed.
    ``delivery_timeout`` bounds how long a stub may wait for the broker (message.timeout.ms).
    """

    def __init__(
        self,
        config: KafkaConfig,
        *,
        asynchronous: bool = False,
        delivery_timeout: float | None = None,
        client_id: str = "changefeed-publisher",
    ) -> None:
        self.config = config
        self.asynchronous = asynchronous
        conf = dict(PRODUCER_DEFAULTS)
        conf.update(config.common(client_id, "producer"))
        if delivery_timeout is not None:
            conf["message.timeout.ms"] = int(delivery_timeout * 1000)
        conf["acks"] = "all"
        conf["enable.idempotence"] = True
        conf["error_cb"] = self._on_client_error
        if asynchronous:
            # Reports only for failed deliveries (librdkafka drops the successful ones before
            # Python sees them): a report per stub would cost more than producing it. The
            # producer holds the callback, so it reaches us through a weak reference.
            conf["delivery.report.only.error"] = True
            ref = weakref.ref(self)

            def on_delivery(err: KafkaError | None, msg: Message) -> None:
                publisher = ref()
                if publisher is not None:
                    publisher._on_delivery(err, msg)

            conf["on_delivery"] = on_delivery
        self.delivery_timeout = float(conf["message.timeout.ms"]) / 1000.0
        self._producer = Producer(conf)
        self._lock = threading.Lock()
        self._failures: list[tuple[str, str, str]] = []
        self._failed_total = 0
        self._known_topics: set[str] = set()
        self._admin: KafkaTopicAdmin | None = None
        self._closed = False

    # -- delivery reports ------------------------------------------------------------------

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            key = msg.key()
            doc = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            log.error(
                "kafka: stub for %r to topic %s not delivered: %s", doc, msg.topic(), err.str()
            )
            with self._lock:
                self._failures.append((str(msg.topic()), doc, err.str()))
                self._failed_total += 1

    @staticmethod
    def _on_client_error(err: KafkaError) -> None:
        if err.fatal():
            log.error("kafka producer: fatal error: %s", err.str())
        else:
            log.warning("kafka producer: %s", err.str())

    def _raise_failures(self) -> None:
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            topic, doc, reason = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise PublishError(
                f"could not publish stub for {doc!r} to topic {topic!r}: {reason}{more}"
            )

    # -- topics ------------------------------------------------------------------------

    def _ensure_topics(self, topics: Iterable[str]) -> None:
        """Create topics on first use with the URL's ``partitions``, like the embedded log."""
        missing = [t for t in set(topics) if t not in self._known_topics]
        if not missing:
            return
        for topic in missing:
            topic_name(topic)
        if self.config.auto_create_topics:
            if self._admin is None:
                self._admin = KafkaTopicAdmin(self.config)
            try:
                existing = self._admin.metadata.partition_counts(missing)
                for topic in missing:
                    if topic not in existing:
                        self._admin.create_topic(topic, self.config.partitions)
            except KafkaException as exc:
                raise PublishError(
                    f"cannot reach Kafka at {self.config.bootstrap_servers} to check topics "
                    f"{', '.join(sorted(missing))}: {exc}"
                ) from None
        self._known_topics.update(missing)

    # -- publishing --------------------------------------------------------------------

    def _produce(self, topic: str, key: str, value: bytes, callback: Any) -> None:
        """Produce, waiting while the local queue is full. ``callback``: a delivery report
        callback for this stub (None: the producer's own, asynchronous mode)."""
        produce = self._producer.produce
        while True:
            try:
                if callback is None:
                    produce(topic, value, key)
                else:
                    produce(topic, value, key, on_delivery=callback)
                return
            except BufferError:
                # The local queue is full: serve delivery reports to make room.
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise PublishError(
                    f"could not publish stub for {key!r} to {topic!r}: {exc}"
                ) from None

    def publish(self, topic: str, meta: ChangeMeta) -> None:
        if self._closed:
            raise PublishError("publisher is closed")
        if topic not in self._known_topics:
            self._ensure_topics((topic,))
        meta.stamp_unset(time.time())
        if self.asynchronous:
            self._produce(topic, meta.document_id, meta.encode(), None)
            self._producer.poll(0)
            if self._failures:
                self._raise_failures()
            return
        result: list[KafkaError | None] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            result.append(err)
            if err is not None:
                log.error(
                    "kafka: stub for %r to topic %s not delivered: %s",
                    meta.document_id,
                    topic,
                    err.str(),
                )

        self._produce(topic, meta.document_id, meta.encode(), delivered)
        self._wait(lambda: bool(result))
        if not result:
            raise PublishError(
                f"could not publish stub for {meta.document_id!r} to topic {topic!r}: "
                f"no acknowledgement from {self.config.bootstrap_servers} "
                f"within {self.delivery_timeout:.0f}s"
            )
        err = result[0]
        if err is not None:
            raise PublishError(
                f"could not publish stub for {meta.document_id!r} to topic {topic!r}: {err.str()}"
            )

    def publish_many(self, items: Iterable[tuple[str, ChangeMeta]]) -> None:
        """Queue the whole batch, then (synchronous mode) wait and raise if any failed."""
        if self._closed:
            raise PublishError("publisher is closed")
        now = time.time()
        with gctune.paused():  # many small acyclic objects: no collector passes over them
            records = []
            for topic, meta in items:
                meta.stamp_unset(now)
                records.append((topic, meta.document_id, meta.encode()))
        self._ensure_topics({topic for topic, _, _ in records})
        callback = None if self.asynchronous else self._on_delivery
        produce = self._producer.produce
        poll = self._producer.poll
        for n, (topic, key, value) in enumerate(records, 1):
            try:
                if callback is None:
                    produce(topic, value, key)
                else:
                    produce(topic, value, key, on_delivery=callback)
            except BufferError:
                poll(0.05)
                self._produce(topic, key, value, callback)
            except KafkaException as exc:
                raise PublishError(
                    f"could not publish stub for {key!r} to {topic!r}: {exc}"
                ) from None
            if not n % 10000:
                poll(0)  # serve delivery reports as we go
        if self.asynchronous:
            poll(0)
            if self._failures:
                self._raise_failures()
        else:
            self.flush()

    def _wait(self, done: Any) -> int:
        """Serve delivery reports until ``done()`` or the delivery timeout (plus a margin)."""
        deadline = time.monotonic() + self.delivery_timeout + 5.0
        remaining = len(self._producer)
        while not done() and time.monotonic() < deadline:
            remaining = self._producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        return remaining

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued stub is acknowledged; raise `PublishError` if any failed."""
        if timeout is None:
            remaining = self._wait(lambda: len(self._producer) == 0)
        else:
            remaining = self._producer.flush(timeout)
        self._raise_failures()
        if remaining:
            raise PublishError(
                f"{remaining} stub(s) not yet acknowledged by {self.config.bootstrap_servers}"
            )

    @property
    def failed_total(self) -> int:
        """Stubs whose delivery failed since this publisher was made (for metrics)."""
        return self._failed_total

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            close = getattr(self._producer, "close", None)  # confluent-kafka >= 2.13
            if close is not None:
                close()
