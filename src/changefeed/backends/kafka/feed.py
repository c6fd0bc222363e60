"""Reading changes from Kafka: `KafkaChangeFeed`.

The reading loop only, in named steps: take what ``consume()`` has (`_poll`), keep what is
still assigned after a rebalance, turn the messages into `ChangeList`s (`messages`: the fast
path in C loops, or one by one around error events), each saying where the feed stands
after it and whether the read caught up with the log. Which partitions are read from which
offsets (static or consumer-group assignment, rebalances, retention, offsets mirrored to
Kafka) is `consumer.PartitionConsumer`, which the feed holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from itertools import compress
from operator import not_
from typing import Any

from confluent_kafka import Consumer, Message

from changefeed.backends.base import BatchedChangeFeed, ChangeList, RebalanceListener
from changefeed.backends.kafka.config import KafkaConfig
from changefeed.backends.kafka.consumer import CONSUMER_DEFAULTS, PartitionConsumer
from changefeed.backends.kafka.messages import (
    EOF,
    change_of,
    fast_changes,
    message_error,
    partitions_of,
)
from changefeed.change import Change, TopicPartition
from changefeed.identifiers import topic_name

log = logging.getLogger("changefeed.kafka")

__all__ = ["CONSUMER_DEFAULTS", "KafkaChangeFeed"]


class KafkaChangeFeed(BatchedChangeFeed):
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
        self.topics = tuple(topic_name(t) for t in topics)
        self.idle_timeout = idle_timeout
        self.batch_rows = batch_rows
        self._partitions = PartitionConsumer(
            config,
            self.topics,
            client_id=client_id,
            strict=strict,
            group_id=group_id,
            commit_offsets=commit_offsets,
            commit_interval=commit_interval,
            consumer_config=consumer_config,
            on_offset_reset=self._offset_reset,
        )
        self._only_topic = self.topics[0] if len(self.topics) == 1 else None
        """One topic (the usual case): every change shares its name, no str per message."""

    # -- the consumer (`PartitionConsumer`) ------------------------------------------------

    @property
    def consumer(self) -> Consumer:
        """The confluent-kafka consumer (made on first use)."""
        return self._partitions.consumer

    @property
    def uses_consumer_group(self) -> bool:
        return self._partitions.uses_consumer_group

    @property
    def assignment(self) -> list[TopicPartition]:
        """The partitions this feed reads now (changes on rebalance in group mode)."""
        return self._partitions.assignment

    def set_rebalance_listener(self, listener: RebalanceListener | None) -> None:
        self._partitions.set_rebalance_listener(listener)

    def commit_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._partitions.commit_offsets(offsets)

    # -- metadata ------------------------------------------------------------------------

    def topic_partitions(self) -> list[TopicPartition]:
        return self._partitions.metadata.topic_partitions(self.topics)

    def latest_offsets(self) -> dict[TopicPartition, int]:
        return self._partitions.metadata.offsets(self.topic_partitions(), "latest")

    def earliest_offsets(self) -> dict[TopicPartition, int]:
        return self._partitions.metadata.offsets(self.topic_partitions(), "earliest")

    def offsets_for_time(self, when: float) -> dict[TopicPartition, int]:
        """The broker's time index (`KafkaMetadata.offsets_for_time`)."""
        return self._partitions.metadata.offsets_for_time(self.topic_partitions(), when)

    # -- reading -------------------------------------------------------------------------

    def iter_change_batches(
        self, since: Mapping[TopicPartition, int], forever: bool = False
    ) -> Iterator[ChangeList | None]:
        """`iter_changes`, one non-empty list per ``consume()`` call (``None`` when idle): the
        pillow then does its bookkeeping per list instead of per change. The next
        ``consume()`` (where rebalance callbacks run) happens only after the list was taken."""
        partitions = self._partitions
        idle_timeout = self.idle_timeout
        monotonic = time.monotonic
        with partitions.reading(since):
            heads: dict[TopicPartition, int] = {}
            if not forever and partitions.assigned:
                heads = partitions.metadata.offsets(partitions.assigned, "latest")
            consume = partitions.consumer.consume  # this read's consumer, closed or not
            last_activity = monotonic()
            owed = False  # a list went out with caught_up=False and no catch-up told since
            # A static catch-up read ends when nothing is assigned; a group may assign later.
            unbounded = forever or partitions.uses_consumer_group
            while unbounded or partitions.assigned:
                wait = idle_timeout - (monotonic() - last_activity)
                msgs, rebalanced = self._poll(consume, wait)
                changes, got = yield from self._lists_of(msgs, rebalanced)
                owed = owed or got
                at_end = partitions.at_end()
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
                    if partitions.caught_up(heads):
                        return
                elif not got and now - last_activity >= idle_timeout:
                    last_activity = now
                    partitions.idle()
                    yield None

    def _poll(
        self, consume: Callable[[int, float], list[Message]], wait: float
    ) -> tuple[list[Message], bool]:
        """What is queued, without waiting; if nothing, wait (up to ``wait``) for the first
        message only (``consume(n, t)`` waits for all n or the whole timeout, which at low
        load would hold changes back for up to a second), then take what came with it.
        After a rebalance (True), only messages of partitions still assigned."""
        partitions = self._partitions
        batch_rows = self.batch_rows
        msgs = consume(batch_rows, 0)
        if not msgs:
            msgs = consume(1, max(0.005, min(wait, 1.0)))
            if msgs and batch_rows > 1:
                msgs += consume(batch_rows - 1, 0)
        if partitions.take_rebalanced():
            assigned = partitions.assigned
            return [m for m in msgs if (m.topic(), m.partition()) in assigned], True
        return msgs, False

    def _lists_of(
        self, msgs: list[Message], rebalanced: bool
    ) -> Generator[ChangeList, None, tuple[ChangeList | None, bool]]:
        """The changes of one ``consume()`` result: returned as one list when built in C
        loops (`fast_changes`); one by one otherwise, where what came before an error event
        is handed over (yielded) before the event is handled. Returns the list still to
        hand over and whether a list was yielded already."""
        if not msgs:
            return None, False
        data = self._data_only(msgs)
        if data is not None:
            # After a rebalance the consumer's positions may be of partitions just
            # assigned: the list then says where its own changes end.
            positions = None if rebalanced else self._partitions.positions
            changes = fast_changes(data, self._only_topic, positions)
            if changes is not None:
                return changes, False
            msgs = data
        return (yield from self._one_by_one(msgs))

    def _data_only(self, msgs: list[Message]) -> list[Message] | None:
        """The data messages, with ends of partitions (the usual error event) noted; None
        when another error event is among them, for `_one_by_one` to handle in order."""
        eof = self._partitions.eof
        if not any(map(message_error, msgs)):
            if eof:
                eof.difference_update(partitions_of(msgs, self._only_topic))
            return msgs
        flags = list(map(message_error, msgs))
        if not all(err.code() == EOF for err in flags if err is not None):
            return None
        self._partitions.note_ends(msgs, flags)
        return list(compress(msgs, map(not_, flags)))

    def _one_by_one(
        self, msgs: list[Message]
    ) -> Generator[ChangeList, None, tuple[ChangeList, bool]]:
        """Messages with an invalid stub or an error event, in order. Each list's end is
        worked out from its changes (`ChangeList`): the consumer may already stand past an
        error not handled yet."""
        partitions = self._partitions
        eof = partitions.eof
        pending: list[Change] = []
        handed = False
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if pending and err.code() != EOF:
                    # What came before an error is handed over before it is handled (it
                    # may raise, or reset a partition).
                    yield ChangeList(pending)
                    handed = True
                    pending = []
                partitions.handle_error(msg)
                continue
            if eof:
                eof.discard(TopicPartition(msg.topic(), msg.partition()))  # type: ignore[arg-type]
            pending.append(change_of(msg))
        return ChangeList(pending), handed

    def leave_group(self) -> None:
        """In a consumer group: commit what is pending, leave the group and disconnect
        (`close`); the next read makes a new consumer, which joins again."""
        if self.uses_consumer_group:
            self.close()

    def close(self) -> None:
        """Leave the group (revoking partitions through the listener) and disconnect; a
        later read makes a new consumer."""
        self._partitions.close()
