"""Reading changes from Kafka: `KafkaChangeFeed`.

The reading loop only: ``consume()`` results become `ChangeList`s (`messages`), each saying
where the feed stands after it and whether the read caught up with the log. Which partitions
are read from which offsets (static or consumer-group assignment, rebalances, retention,
offsets mirrored to Kafka) is `consumer.KafkaConsumerFeed`, which this class extends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from itertools import compress
from operator import not_
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from changefeed.backends.base import ChangeList
from changefeed.backends.kafka.config import KafkaConfig
from changefeed.backends.kafka.consumer import CONSUMER_DEFAULTS, KafkaConsumerFeed
from changefeed.backends.kafka.messages import (
    EOF,
    OUT_OF_RANGE,
    RESET,
    change_of,
    fast_changes,
    message_error,
    partitions_of,
)
from changefeed.change import Change, TopicPartition
from changefeed.identifiers import topic_name

log = logging.getLogger("changefeed.kafka")

__all__ = ["CONSUMER_DEFAULTS", "KafkaChangeFeed"]


class KafkaChangeFeed(KafkaConsumerFeed):
    """Changes of one or more Kafka topics, consumed in batches.

    ``batch_rows`` is how many messages one ``consume()`` call may return: large batches keep
    the per-change cost in C. ``consumer_config`` adds or overrides librdkafka properties.
    """

    def __init__(
        self,
        config: KafkaConfig,
        topics: Sequence[str],
        *,
        client_id: str = "changefeed",
        idle_timeout: float = 1.0,
        strict: bool = False,
        group_id: str | None = None,
        commit_offsets: bool = True,
        batch_rows: int = 5000,
        commit_interval: float = 1.0,
        consumer_config: Mapping[str, Any] | None = None,
    ) -> None:
        if not topics:
            raise ValueError("a change feed needs at least one topic")
        if batch_rows < 1:
            raise ValueError("batch_rows must be at least 1")
        super().__init__(
            config,
            tuple(topic_name(t) for t in topics),
            client_id=client_id,
            strict=strict,
            group_id=group_id,
            commit_offsets=commit_offsets,
            commit_interval=commit_interval,
            consumer_config=consumer_config,
        )
        self.idle_timeout = idle_timeout
        self.batch_rows = batch_rows

    # -- metadata ------------------------------------------------------------------------

    def topic_partitions(self) -> list[TopicPartition]:
        return self._metadata.topic_partitions(self.topics)

    def latest_offsets(self) -> dict[TopicPartition, int]:
        return self._metadata.offsets(self.topic_partitions(), "latest")

    def earliest_offsets(self) -> dict[TopicPartition, int]:
        return self._metadata.offsets(self.topic_partitions(), "earliest")

    def offsets_for_time(self, when: float) -> dict[TopicPartition, int]:
        """The broker's time index (`KafkaMetadata.offsets_for_time`)."""
        return self._metadata.offsets_for_time(self.topic_partitions(), when)

    # -- reading -------------------------------------------------------------------------

    def _handle_error(self, msg: Message) -> None:
        err = msg.error()
        assert err is not None
        code = err.code()
        topic, partition = msg.topic(), msg.partition()
        if code == EOF and topic is not None and partition is not None:
            self._eof.add(TopicPartition(topic, partition))
        elif code in (RESET, OUT_OF_RANGE) and topic is not None and partition is not None:
            self._reset_partition(TopicPartition(topic, partition), msg.offset() or 0)
        elif err.fatal():
            raise KafkaException(err)
        else:
            log.warning("kafka consumer: %s", err.str())

    def _note_ends(self, msgs: list[Message], flags: list[KafkaError | None]) -> None:
        """End-of-partition events and data, in the order consumed: a partition is at its
        end when its last event in the batch was the end."""
        eof = self._eof
        for msg, err in zip(msgs, flags, strict=True):
            tp = TopicPartition(msg.topic(), msg.partition())  # type: ignore[arg-type]
            if err is None:
                eof.discard(tp)
            else:
                eof.add(tp)

    def _at_end(self) -> bool:
        """Every partition we read is at its end (its last event was end-of-partition), so
        the list just read is all the log holds for now (`ChangeList.caught_up`)."""
        assigned = self._assigned
        eof = self._eof
        return bool(assigned) and len(eof) >= len(assigned) and all(tp in eof for tp in assigned)

    def _caught_up(self, heads: dict[TopicPartition, int]) -> bool:
        """Every assigned partition read to the head it had when the read began (or to an
        end-of-partition event, which also covers non-data records at the end)."""
        if self.uses_consumer_group and not self._assigned:
            return False
        positions = self._positions()
        for tp, pos in positions.items():
            if tp in self._eof:
                continue
            head = heads.get(tp)
            if head is None:
                heads.update(self._metadata.offsets([tp], "latest"))
                head = heads.get(tp, 0)
            if pos < head:
                return False
        return True

    def iter_change_batches(
        self, since: Mapping[TopicPartition, int], forever: bool = False
    ) -> Iterator[ChangeList | None]:
        """`iter_changes`, one non-empty list per ``consume()`` call (``None`` when idle): the
        pillow then does its bookkeeping per list instead of per change. The next
        ``consume()`` (where rebalance callbacks run) happens only after the list was taken."""
        self._reading = True
        try:
            self._start(since)
            heads: dict[TopicPartition, int] = {}
            if not forever and self._assigned:
                heads = self._metadata.offsets(self._assigned, "latest")
            consume = self.consumer.consume
            batch_rows = self.batch_rows
            idle_timeout = self.idle_timeout
            monotonic = time.monotonic
            # One topic (the usual case): every change shares its name, no str per message.
            only_topic = self.topics[0] if len(self.topics) == 1 else None
            last_activity = monotonic()
            owed = False  # a list went out with caught_up=False and no catch-up told since
            while True:
                if not forever and not self.uses_consumer_group and not self._assigned:
                    return
                # What is queued, without waiting; if nothing, wait for the first message
                # only (``consume(n, t)`` waits for all n or the whole timeout, which at low
                # load would hold changes back for up to a second), then take what came
                # with it.
                msgs = consume(batch_rows, 0)
                if not msgs:
                    wait = idle_timeout - (monotonic() - last_activity)
                    msgs = consume(1, max(0.005, min(wait, 1.0)))
                    if msgs and batch_rows > 1:
                        msgs += consume(batch_rows - 1, 0)
                if self._rebalanced:
                    self._rebalanced = False
                    assigned = self._assigned
                    msgs = [m for m in msgs if (m.topic(), m.partition()) in assigned]
                    rebalanced = True
                else:
                    rebalanced = False
                got = False
                changes: ChangeList | None = None
                if msgs:
                    flags: list[KafkaError | None] = []
                    if any(map(message_error, msgs)):
                        flags = list(map(message_error, msgs))
                        events = list(compress(msgs, flags))
                        if all(m.error().code() == EOF for m in events):  # type: ignore[union-attr]
                            # End-of-partition events only (the usual error-event): noted
                            # here, and the data messages go the fast way.
                            self._note_ends(msgs, flags)
                            msgs = list(compress(msgs, map(not_, flags)))
                            flags = []
                    elif self._eof:
                        self._eof.difference_update(partitions_of(msgs, only_topic))
                    if not any(flags):
                        # After a rebalance the consumer's positions may be of partitions
                        # just assigned: the list then says where its own changes end.
                        changes = fast_changes(
                            msgs, only_topic, None if rebalanced else self._positions
                        )
                if changes is None and msgs:
                    # Each list's end is worked out from its changes (`ChangeList`): the
                    # consumer may already stand past an error not handled yet.
                    pending: list[Change] = []
                    eof = self._eof
                    for msg in msgs:
                        if msg.error() is not None:
                            if pending and msg.error().code() != EOF:  # type: ignore[union-attr]
                                # What came before an error is handed over before it is
                                # handled (it may raise, or reset a partition).
                                yield ChangeList(pending)
                                got = owed = True
                                pending = []
                            self._handle_error(msg)
                            continue
                        if eof:
                            eof.discard(TopicPartition(msg.topic(), msg.partition()))  # type: ignore[arg-type]
                        pending.append(change_of(msg))
                    changes = ChangeList(pending)
                at_end = self._at_end()
                if changes:
                    changes.caught_up = at_end
                    yield changes
                    got = True
                    owed = not at_end
                elif at_end and owed:
                    # The end-of-partition events came after the last list: say so now.
                    owed = False
                    yield ChangeList((), {}, caught_up=True)
                now = monotonic()
                if got:
                    last_activity = now
                if not forever:
                    if self._caught_up(heads):
                        return
                    continue
                if not got and now - last_activity >= idle_timeout:
                    last_activity = now
                    if self._uncommitted:
                        self._send_commits()
                    yield None
        finally:
            self._reading = False

    def leave_group(self) -> None:
        """In a consumer group: commit what is pending, leave the group and disconnect
        (`close`); the next read makes a new consumer, which joins again."""
        if self.uses_consumer_group:
            self.close()

    def close(self) -> None:
        """Leave the group (revoking partitions through the listener) and disconnect; a
        later read makes a new consumer."""
        if self._uncommitted:
            self._send_commits(synchronous=True)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.debug("kafka: closing consumer: %s", exc)
        self._subscribed = False
        self._assigned = {}
