"""The consumer side of the Kafka feed: which partitions it reads, from which offsets.

Two ways to own partitions, one source of truth for positions (our checkpoint store):

* static (no ``group_id``): the caller passes ``since`` (striding decides which partitions a
  process reads) and the feed assigns exactly those, at exactly those offsets;
* consumer group (``group_id``): Kafka decides which process reads which partition. On
  assignment the feed asks its `RebalanceListener` (the pillow) for the checkpoints and seeks
  there; before partitions are taken away it lets the listener finish and checkpoint the
  batch in hand, so a batch is neither lost nor processed twice when processes come and go.

Offsets are also committed to Kafka (`commit_offsets`, after our checkpoint is written) so
standard lag tools see them, but they are never read back as a starting point. Those commits
are batched (at most one per ``commit_interval``, plus before partitions are revoked, when
the feed is idle and on close): each costs librdkafka more CPU than a batch of no-op work.

Offsets removed by retention are detected before reading (checkpoint below the earliest
offset) and while reading (``auto.offset.reset=error``): ``strict`` raises
`OffsetOutOfRangeError`, otherwise the feed reports the jump to the handler set with
`set_offset_reset_handler` and reads on from the earliest offset.

Kept apart from the reading loop (`feed`) because this state changes inside librdkafka's
callbacks, between two ``consume()`` calls: `PartitionConsumer` owns it, and the loop asks
it through a few methods (which partitions are at their end, where the consumer stands,
whether a rebalance happened since the last look).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaTopicPartition

from changefeed.backends.base import (
    OffsetOutOfRangeError,
    OffsetResetHandler,
    RebalanceListener,
)
from changefeed.backends.kafka.admin import KafkaMetadata
from changefeed.backends.kafka.config import KafkaConfig
from changefeed.backends.kafka.messages import EOF, OUT_OF_RANGE, RESET
from changefeed.change import TopicPartition

log = logging.getLogger("changefeed.kafka")

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "error",
    "enable.partition.eof": True,
    "fetch.wait.max.ms": 100,
    "session.timeout.ms": 10000,
    "heartbeat.interval.ms": 1000,
    "partition.assignment.strategy": "roundrobin",
    "queued.min.messages": 5000,
    "fetch.queue.backoff.ms": 10,
}
"""We seek explicitly, so auto-reset is an error we handle; EOF events end catch-up reads.
librdkafka prefetches while a partition's local queue holds fewer than
``queued.min.messages`` (100,000 by default): 5,000 stubs keep several batches in hand
while a pipelined pillow works, and a consumer holding them stops fetching instead of
sending fetch after fetch to the partition's head, which cost a pillow up to half a core
on our test broker (and memory for 100,000 stubs per partition everywhere). With a bound
this low, librdkafka's pause after the queue was full (``fetch.queue.backoff.ms``, 1 s by
default) must be short, or a drained queue waits for the broker: 10 ms.
The eager ``roundrobin`` assignor is the default because it works on every broker we test
with; ``cooperative-sticky`` (URL option ``partition_assignment_strategy``) is supported too
and moves fewer partitions on real Kafka."""


class PartitionConsumer:
    """A feed's Kafka consumer and the partitions it holds: assignment (static or by the
    consumer group), the partitions read to their end, offsets removed by retention, and
    offsets mirrored to Kafka. `KafkaChangeFeed` holds one and reads through it."""

    def __init__(
        self,
        config: KafkaConfig,
        topics: tuple[str, ...],
        *,
        client_id: str,
        strict: bool,
        group_id: str | None,
        commit_offsets: bool,
        commit_interval: float,
        consumer_config: Mapping[str, Any] | None,
        on_offset_reset: OffsetResetHandler,
    ) -> None:
        self.config = config
        self.topics = topics
        self.client_id = client_id
        self.strict = strict
        self.group_id = group_id
        self.commit_interval = commit_interval
        self.metadata = KafkaMetadata(config, client_id)
        self._on_offset_reset = on_offset_reset
        self._commit_enabled = commit_offsets
        self._uncommitted: dict[TopicPartition, int] = {}
        self._last_commit = 0.0
        self._reading = False
        """Inside a read (`reading`): commits outside one are sent at once."""
        self._consumer_config = dict(consumer_config or {})
        self._consumer: Consumer | None = None
        self._listener: RebalanceListener | None = None
        self._subscribed = False
        self.assigned: dict[TopicPartition, int] = {}
        """Partitions we read, each with the offset it was (re)assigned at."""
        self.eof: set[TopicPartition] = set()
        """Assigned partitions whose last event was end-of-partition."""
        self._rebalanced = False
        self._revoking = False
        self._cooperative = False

    @property
    def uses_consumer_group(self) -> bool:
        """True with a ``group_id``: Kafka's consumer group decides which partitions we read."""
        return self.group_id is not None

    @property
    def assignment(self) -> list[TopicPartition]:
        """The partitions read now (changes on rebalance in group mode)."""
        return sorted(self.assigned)

    # -- the consumer --------------------------------------------------------------------

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            conf = dict(CONSUMER_DEFAULTS)
            conf.update(self.config.common(self.client_id, "consumer"))
            conf["group.id"] = self.group_id or self.client_id
            conf.update(self._consumer_config)
            conf["enable.auto.commit"] = False
            conf["error_cb"] = self._on_client_error
            conf["on_commit"] = self._on_commit
            self._cooperative = "cooperative" in str(conf.get("partition.assignment.strategy"))
            self._consumer = Consumer(conf)
        return self._consumer

    @staticmethod
    def _on_client_error(err: KafkaError) -> None:
        if err.fatal():
            log.error("kafka consumer: fatal error: %s", err.str())
        else:
            log.warning("kafka consumer: %s", err.str())

    @staticmethod
    def _on_commit(err: KafkaError | None, partitions: list[KafkaTopicPartition]) -> None:
        if err is not None:
            log.debug("kafka: offset commit not accepted (our checkpoint still holds): %s", err)

    def set_rebalance_listener(self, listener: RebalanceListener | None) -> None:
        """The pillow that decides starting offsets and finishes work on revocation."""
        self._listener = listener

    # -- offsets removed by retention ----------------------------------------------------

    def _out_of_range(self, tp: TopicPartition, needed: int, earliest: int) -> int:
        if self.strict:
            raise OffsetOutOfRangeError(tp, needed, earliest)
        log.warning(
            "kafka: offset %d of %s is no longer in the log; reading on from %d",
            needed,
            tp,
            earliest,
        )
        self._on_offset_reset(tp, needed, earliest)
        return earliest

    def _checked(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Offsets to read from, with those removed by retention moved to the earliest."""
        out = dict(offsets)
        if not out:
            return out
        earliest = self.metadata.offsets(out, "earliest")
        for tp, offset in sorted(out.items()):
            first = earliest.get(tp)
            if first is not None and first >= 0 and offset < first:
                out[tp] = self._out_of_range(tp, offset, first)
        return out

    def _reset_partition(self, tp: TopicPartition, needed: int) -> None:
        """A fetch hit an offset that is gone (read while retention ran): move on."""
        earliest = self.metadata.offsets([tp], "earliest").get(tp, 0)
        self._reassign({tp: self._out_of_range(tp, needed, earliest)})

    def _reassign(self, offsets: Mapping[TopicPartition, int]) -> None:
        consumer = self.consumer
        ktps = [KafkaTopicPartition(tp.topic, tp.partition, off) for tp, off in offsets.items()]
        try:
            consumer.incremental_unassign([KafkaTopicPartition(t.topic, t.partition) for t in ktps])
            consumer.incremental_assign(ktps)
        except KafkaException:
            # Eager group protocol: only a full assign() is allowed.
            current = self.positions()
            current.update(offsets)
            consumer.assign(
                [KafkaTopicPartition(tp.topic, tp.partition, off) for tp, off in current.items()]
            )
        self.assigned.update(offsets)
        self.eof.difference_update(offsets)

    def positions(self) -> dict[TopicPartition, int]:
        """Next offset to read per assigned partition (where nothing was read yet: the
        offset it was assigned at)."""
        assigned = self.assigned
        if not assigned:
            return {}
        out = dict(assigned)
        for ktp in self.consumer.position(
            [KafkaTopicPartition(tp.topic, tp.partition) for tp in assigned]
        ):
            if ktp.offset >= 0:
                out[TopicPartition(ktp.topic, ktp.partition)] = ktp.offset
        return out

    # -- consumer group callbacks ----------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        if self._listener is not None:
            wanted = dict(self._listener.on_assign(tps))
        else:
            wanted = self._committed(tps)
        offsets = self._checked({tp: wanted.get(tp, 0) for tp in tps})
        ktps = [KafkaTopicPartition(tp.topic, tp.partition, offsets[tp]) for tp in tps]
        if self._cooperative:
            consumer.incremental_assign(ktps)
        else:
            consumer.assign(ktps)
            self.assigned.clear()
        self.assigned.update(offsets)
        self.eof.difference_update(tps)
        self._rebalanced = True
        log.info("kafka: %s assigned %s", self.group_id, ", ".join(map(str, sorted(tps))) or "-")

    def _on_revoke(self, consumer: Consumer, partitions: list[KafkaTopicPartition]) -> None:
        tps = [TopicPartition(p.topic, p.partition) for p in partitions]
        log.info("kafka: %s revoking %s", self.group_id, ", ".join(map(str, sorted(tps))) or "-")
        if self._listener is not None and tps:
            self._revoking = True
            try:
                self._listener.on_revoke(tps)
                self.send_commits(synchronous=True)
            finally:
                self._revoking = False
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        for tp in tps:
            self.assigned.pop(tp, None)
            self.eof.discard(tp)
        self._rebalanced = True

    def _committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Without a listener: Kafka's committed offsets, else the beginning."""
        with self.metadata.reaching():
            found = self.consumer.committed(
                [KafkaTopicPartition(tp.topic, tp.partition) for tp in tps],
                timeout=self.config.timeout,
            )
        return {
            TopicPartition(k.topic, k.partition): (k.offset if k.offset >= 0 else 0) for k in found
        }

    def take_rebalanced(self) -> bool:
        """Whether partitions were assigned or revoked since the last call."""
        rebalanced, self._rebalanced = self._rebalanced, False
        return rebalanced

    # -- committing to Kafka ---------------------------------------------------------------

    def commit_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Mirror a checkpoint just written to our store into Kafka, for standard lag tools
        (sent at most once per ``commit_interval``; the rest is merged into the next one)."""
        if not self._commit_enabled or self._consumer is None or not offsets:
            return
        self._uncommitted.update(offsets)
        if (
            self._revoking
            or not self._reading  # e.g. the last batch after a catch-up read ended
            or time.monotonic() - self._last_commit >= self.commit_interval
        ):
            self.send_commits(synchronous=self._revoking)

    def send_commits(self, synchronous: bool = False) -> None:
        """Send the mirrored offsets not yet committed (synchronously when the partitions
        leave right after, so it lands)."""
        offsets, self._uncommitted = self._uncommitted, {}
        if not offsets or self._consumer is None:
            return
        self._last_commit = time.monotonic()
        ktps = [KafkaTopicPartition(tp.topic, tp.partition, off) for tp, off in offsets.items()]
        try:
            if synchronous:
                self._consumer.commit(offsets=ktps, asynchronous=False)
            else:
                self._consumer.commit(offsets=ktps, asynchronous=True)
        except KafkaException as exc:
            log.debug("kafka: offset commit not accepted (our checkpoint still holds): %s", exc)

    # -- reading ---------------------------------------------------------------------------

    @contextmanager
    def reading(self, since: Mapping[TopicPartition, int]) -> Iterator[None]:
        """One read: partitions taken (`since` when static; the group's otherwise), and
        commits batched until it ends."""
        self._reading = True
        try:
            self._start(since)
            yield
        finally:
            self._reading = False

    def _start(self, since: Mapping[TopicPartition, int]) -> None:
        self.eof.clear()
        if self.uses_consumer_group:
            if not self._subscribed:
                # Joining a group asks nothing of the broker that could fail: one metadata
                # request first, so an unreachable log is an error now rather than a
                # member that waits for ever (`LogUnavailableError`).
                self.metadata.partition_counts(self.topics)
                self.consumer.subscribe(
                    list(self.topics),
                    on_assign=self._on_assign,
                    on_revoke=self._on_revoke,
                    on_lost=self._on_revoke,
                )
                self._subscribed = True
            return
        offsets = self._checked(since)
        self.consumer.assign(
            [KafkaTopicPartition(tp.topic, tp.partition, off) for tp, off in offsets.items()]
        )
        self.assigned = offsets

    def idle(self) -> None:
        """Nothing came for a while: send the mirrored offsets held back."""
        if self._uncommitted:
            self.send_commits()

    def handle_error(self, msg: Message) -> None:
        """An error event: the end of a partition is noted, an offset removed by retention
        moves the partition on (or raises when strict), a fatal error raises."""
        err = msg.error()
        assert err is not None
        code = err.code()
        topic, partition = msg.topic(), msg.partition()
        if code == EOF and topic is not None and partition is not None:
            self.eof.add(TopicPartition(topic, partition))
        elif code in (RESET, OUT_OF_RANGE) and topic is not None and partition is not None:
            self._reset_partition(TopicPartition(topic, partition), msg.offset() or 0)
        elif err.fatal():
            raise KafkaException(err)
        else:
            log.warning("kafka consumer: %s", err.str())

    def note_ends(self, msgs: Iterable[Message], flags: Iterable[KafkaError | None]) -> None:
        """End-of-partition events and data, in the order consumed: a partition is at its
        end when its last event in the batch was the end."""
        eof = self.eof
        for msg, err in zip(msgs, flags, strict=True):
            tp = TopicPartition(msg.topic(), msg.partition())  # type: ignore[arg-type]
            if err is None:
                eof.discard(tp)
            else:
                eof.add(tp)

    def at_end(self) -> bool:
        """Every partition we read is at its end (its last event was end-of-partition), so
        the list just read is all the log holds for now (`ChangeList.caught_up`)."""
        assigned = self.assigned
        eof = self.eof
        return bool(assigned) and len(eof) >= len(assigned) and all(tp in eof for tp in assigned)

    def caught_up(self, heads: dict[TopicPartition, int]) -> bool:
        """Every assigned partition read to the head it had when the read began (or to an
        end-of-partition event, which also covers non-data records at the end)."""
        if self.uses_consumer_group and not self.assigned:
            return False
        for tp, pos in self.positions().items():
            if tp in self.eof:
                continue
            head = heads.get(tp)
            if head is None:
                heads.update(self.metadata.offsets([tp], "latest"))
                head = heads.get(tp, 0)
            if pos < head:
                return False
        return True

    def close(self) -> None:
        """Leave the group (revoking partitions through the listener) and disconnect; a
        later read makes a new consumer."""
        if self._uncommitted:
            self.send_commits(synchronous=True)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.debug("kafka: closing consumer: %s", exc)
        self._subscribed = False
        self.assigned = {}
