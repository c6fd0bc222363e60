"""Publishing stubs to Kafka: key = document id, ``acks=all``, idempotent producer.

Synchronous by default, because a caller that saved a document must know its stub is in the
log: `KafkaPublisher.publish` waits for the broker's acknowledgement and raises
`PublishError` otherwise. The asynchronous mode queues and returns at once; every delivery
report is checked and failures are raised from the next `publish` or `flush`, never dropped.

A fatal producer error (librdkafka's word for "this producer can never send again", e.g.
the broker answering ``OUT_OF_ORDER_SEQUENCE_NUMBER`` to an idempotent producer after a
restart) is raised as `PublishError` like any other failure, and the next call runs on a new
producer: a publisher kept for life by a relay recovers without a restart. Stubs the failed
producer had not confirmed are reported as failed, never as sent, so their source publishes
them again (at least once).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from changefeed import gctune
from changefeed.backends.base import LogUnavailableError, Publisher, PublishError
from changefeed.backends.kafka.admin import KafkaTopicAdmin
from changefeed.backends.kafka.config import KafkaConfig
from changefeed.change import ChangeMeta
from changefeed.identifiers import topic_name
from changefeed.wire import WireFormat, encoder_for, wire_format

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


class UnreachableLogPublishError(PublishError, LogUnavailableError):
    """No broker answered when the publisher needed one: a `PublishError` like every
    publisher failure, and a `LogUnavailableError` (naming the address) for whoever tells
    an unreachable log apart, such as the CLI."""


def is_fatal(err: KafkaError | None) -> bool:
    """Whether ``err`` leaves the producer unusable, so it must be replaced: librdkafka flags
    the causing error ``fatal`` and fails everything after it with ``_FATAL``."""
    return err is not None and (bool(err.fatal()) or err.code() == KafkaError._FATAL)


CLIENT_ERRORS = (KafkaException, SystemError)
"""What a producer call may raise. After a fatal error confluent-kafka's ``flush()`` (and
``poll()``) can raise ``SystemError`` ("returned a result with an exception set") whose
cause is the fatal `KafkaException`: both are client failures, never the caller's."""


def _kafka_exception(exc: BaseException) -> KafkaException | None:
    """The `KafkaException` ``exc`` is or wraps (a ``SystemError``'s cause or context)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KafkaException):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _error_of(exc: BaseException) -> KafkaError | None:
    kafka = _kafka_exception(exc)
    err = kafka.args[0] if kafka is not None and kafka.args else None
    return err if isinstance(err, KafkaError) else None


def _reason(exc: BaseException) -> str:
    err = _error_of(exc)
    if err is not None:
        return str(err.str())
    return str(exc) or type(exc).__name__


class KafkaPublisher(Publisher):
    """Puts stubs into Kafka topics.

    ``asynchronous=False``: `publish` and `publish_many` return once every stub is
    acknowledged by all in-sync replicas, or raise `PublishError`. ``asynchronous=True``:
    they return at once; call `flush` to wait, which raises if any delivery failed.
    ``delivery_timeout`` bounds how long a stub may wait for the broker (message.timeout.ms).
    ``wire`` is the stub format (None: the URL's ``wire=``); the key is always the document id.
    After a fatal producer error the next call replaces the producer (`replaced_total`).
    """

    def __init__(
        self,
        config: KafkaConfig,
        *,
        asynchronous: bool = False,
        delivery_timeout: float | None = None,
        client_id: str = "changefeed-publisher",
        wire: WireFormat | str | None = None,
    ) -> None:
        self.config = config
        self.asynchronous = asynchronous
        self.wire = config.wire if wire is None else wire_format(wire)
        self._encode = encoder_for(self.wire)
        conf = dict(PRODUCER_DEFAULTS)
        conf.update(config.common(client_id, "producer"))
        if delivery_timeout is not None:
            conf["message.timeout.ms"] = int(delivery_timeout * 1000)
        conf["acks"] = "all"
        conf["enable.idempotence"] = True
        # The producer holds its callbacks, so they reach us through a weak reference.
        ref = weakref.ref(self)

        def on_error(err: KafkaError) -> None:
            publisher = ref()
            if publisher is not None:
                publisher._on_client_error(err)

        conf["error_cb"] = on_error
        if asynchronous:
            # Reports only for failed deliveries (librdkafka drops the successful ones before
            # Python sees them): a report per stub would cost more than producing it.
            conf["delivery.report.only.error"] = True

            def on_delivery(err: KafkaError | None, msg: Message) -> None:
                publisher = ref()
                if publisher is not None:
                    publisher._on_delivery(err, msg)

            conf["on_delivery"] = on_delivery
        self.delivery_timeout = float(conf["message.timeout.ms"]) / 1000.0
        self._conf = conf
        self._producer = Producer(conf)
        self._lock = threading.Lock()
        self._replace_lock = threading.Lock()
        self._fatal: str | None = None
        self._replaced_total = 0
        self._failures: list[tuple[str, str, str]] = []
        self._failed_total = 0
        self._known_topics: set[str] = set()
        self._admin: KafkaTopicAdmin | None = None
        self._closed = False

    # -- delivery reports ------------------------------------------------------------------

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            if is_fatal(err):
                self._fatal = err.str()
            key = msg.key()
            doc = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            log.error(
                "kafka: stub for %r to topic %s not delivered: %s", doc, msg.topic(), err.str()
            )
            with self._lock:
                self._failures.append((str(msg.topic()), doc, err.str()))
                self._failed_total += 1

    def _on_client_error(self, err: KafkaError) -> None:
        if is_fatal(err):
            log.error("kafka producer: fatal error: %s", err.str())
            self._fatal = err.str()
        else:
            log.warning("kafka producer: %s", err.str())

    # -- fatal errors ----------------------------------------------------------------------

    def _failed(self, exc: BaseException, what: str) -> PublishError:
        """The `PublishError` for a client call that raised (one of `CLIENT_ERRORS`); a fatal
        error marks the producer for replacement by the next call. A ``SystemError`` counts
        as fatal whatever it wraps: the client's state is unknown after one, and a new
        producer costs little."""
        err = _error_of(exc)
        reason = _reason(exc)
        if is_fatal(err) or isinstance(exc, SystemError):
            self._fatal = reason
            return PublishError(
                f"{what}: the Kafka producer failed for good ({reason}); unconfirmed stubs are "
                "not sent, and the next publish uses a new producer"
            )
        return PublishError(f"{what}: {reason}")

    def _recover(self) -> None:
        """Replace a producer that failed fatally (no-op otherwise).

        What the old producer still holds is purged, and its delivery reports are served: a
        purged stub's report is a failure, raised by the asynchronous mode's next check.
        Stubs it holds whose reports never come are counted as failed too, so nothing
        unconfirmed is reported as sent. (A synchronous call already raised for all of its
        stubs, so their late reports are dropped.)"""
        if self._fatal is None:
            return
        with self._replace_lock:
            if self._fatal is None:
                return
            reason, old = self._fatal, self._producer
            # A failed producer may raise its fatal error again: expected, not news.
            with contextlib.suppress(*CLIENT_ERRORS):
                old.purge(True, True, False)
            with contextlib.suppress(*CLIENT_ERRORS):
                old.poll(0)
            unreported = len(old)
            with self._lock:
                if not self.asynchronous:
                    self._failures.clear()
                elif unreported:
                    self._failures.append(
                        ("(any)", f"{unreported} queued stub(s)", f"producer failed: {reason}")
                    )
                    self._failed_total += unreported
            self._producer = Producer(self._conf)
            self._fatal = None
            self._replaced_total += 1
        log.warning("kafka producer: replaced after a fatal error (%s)", reason)

    @property
    def replaced_total(self) -> int:
        """Producers replaced after a fatal error since this publisher was made."""
        return self._replaced_total

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
            except LogUnavailableError as exc:
                raise UnreachableLogPublishError(
                    f"could not check topics {', '.join(sorted(missing))}: {exc}"
                ) from None
            except KafkaException as exc:
                raise PublishError(
                    f"could not check topics {', '.join(sorted(missing))} at "
                    f"{self.config.bootstrap_servers}: {_reason(exc)}"
                ) from None
        self._known_topics.update(missing)

    # -- publishing --------------------------------------------------------------------

    def _produce(self, topic: str, key: str, value: bytes, callback: Any) -> None:
        """Produce, waiting while the local queue is full. ``callback``: a delivery report
        callback for this stub (None: the producer's own, asynchronous mode)."""
        producer = self._producer
        while True:
            try:
                try:
                    if callback is None:
                        producer.produce(topic, value, key)
                    else:
                        producer.produce(topic, value, key, on_delivery=callback)
                    return
                except BufferError:
                    # The local queue is full: serve delivery reports to make room.
                    producer.poll(0.05)
            except CLIENT_ERRORS as exc:
                raise self._failed(
                    exc, f"could not publish stub for {key!r} to {topic!r}"
                ) from None

    def _poll(self) -> None:
        """Serve delivery reports without waiting."""
        try:
            self._producer.poll(0)
        except CLIENT_ERRORS as exc:
            raise self._failed(exc, "could not publish") from None

    def publish(self, topic: str, meta: ChangeMeta) -> None:
        if self._closed:
            raise PublishError("publisher is closed")
        self._recover()
        if topic not in self._known_topics:
            self._ensure_topics((topic,))
        meta.stamp_unset(time.time())
        if self.asynchronous:
            self._produce(topic, meta.document_id, self._encode(meta), None)
            self._poll()
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

        self._produce(topic, meta.document_id, self._encode(meta), delivered)
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
        self._recover()
        now = time.time()
        encode = self._encode
        with gctune.paused():  # many small acyclic objects: no collector passes over them
            records = []
            for topic, meta in items:
                meta.stamp_unset(now)
                records.append((topic, meta.document_id, encode(meta)))
        self._ensure_topics({topic for topic, _, _ in records})
        callback = None if self.asynchronous else self._on_delivery
        produce = self._producer.produce
        poll = self._producer.poll
        key = topic = ""
        try:
            for n, (topic, key, value) in enumerate(records, 1):
                try:
                    if callback is None:
                        produce(topic, value, key)
                    else:
                        produce(topic, value, key, on_delivery=callback)
                except BufferError:
                    poll(0.05)
                    self._produce(topic, key, value, callback)
                if not n % 10000:
                    poll(0)  # serve delivery reports as we go
            if self.asynchronous:
                poll(0)
        except CLIENT_ERRORS as exc:
            raise self._failed(exc, f"could not publish stub for {key!r} to {topic!r}") from None
        if self.asynchronous:
            if self._failures:
                self._raise_failures()
        else:
            self.flush()

    def _wait(self, done: Any) -> int:
        """Serve delivery reports until ``done()`` or the delivery timeout (plus a margin)."""
        deadline = time.monotonic() + self.delivery_timeout + 5.0
        producer = self._producer
        remaining = len(producer)
        try:
            while not done() and time.monotonic() < deadline:
                remaining = producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        except CLIENT_ERRORS as exc:
            raise self._failed(exc, "could not publish") from None
        return remaining

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued stub is acknowledged; raise `PublishError` if any failed."""
        self._recover()
        if timeout is None:
            remaining = self._wait(lambda: len(self._producer) == 0)
        else:
            try:
                remaining = self._producer.flush(timeout)
            except CLIENT_ERRORS as exc:
                raise self._failed(exc, "could not publish") from None
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
