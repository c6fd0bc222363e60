"""The log interfaces every backend implements: publisher, change feed and topic admin.

The embedded SQLite log and Kafka implement exactly these and pass the same conformance
suite (tests/backends/conformance.py); nothing above this layer knows which one it runs on.
"""

from __future__ import annotations

import inspect
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, Protocol

from changefeed.change import Change, ChangeMeta, TopicPartition
from changefeed.wire import WireFormat

MAX_PARTITIONS = 10_000
"""The most partitions a topic may have on any backend: far beyond what one pillow group
uses, and low enough that a typo (``-p 2000000000``) is refused instead of exhausting
memory in the log or the broker."""


def partition_count(value: object, what: str = "partitions") -> int:
    """A partition count, 1..`MAX_PARTITIONS`; ValueError with a one-line reason."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    if not 1 <= value <= MAX_PARTITIONS:
        raise ValueError(f"{what} must be at least 1 and at most {MAX_PARTITIONS}, got {value}")
    return value


def key_partition(key: str, partitions: int) -> int:
    """The partition a stub keyed ``key`` goes to in a topic of ``partitions`` partitions:
    CRC32 of the UTF-8 key modulo the count. The embedded log places keys so, and so does
    librdkafka's default partitioner, so both logs keep a document in the same partition."""
    return zlib.crc32(key.encode()) % partitions if partitions > 1 else 0


class PublishError(RuntimeError):
    """A stub could not be durably written to the log."""


class OffsetOutOfRangeError(RuntimeError):
    """A checkpoint points before the first offset still in the log (removed by retention)."""

    def __init__(self, tp: TopicPartition, needed: int, earliest: int) -> None:
        super().__init__(
            f"offset {needed} of {tp.topic}[{tp.partition}] was removed by retention; "
            f"first available offset is {earliest}"
        )
        self.tp = tp
        self.needed = needed
        self.earliest = earliest


class UnknownTopicError(LookupError):
    """A topic that does not exist in the log."""


class LogUnavailableError(ConnectionError):
    """The log cannot be reached: its servers are down or unreachable, or did not answer
    within the configured timeout. A dependency's failure, never the data's; the message is
    one line naming the address, which the CLI prints as it is (exit code 2)."""


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    partitions: int


@dataclass(frozen=True, slots=True)
class TopicDescription:
    """A topic's partitions and its configuration (`TopicAdmin.describe_topic`)."""

    name: str
    partitions: int
    earliest: dict[int, int] = field(default_factory=dict)
    """Per partition, the earliest offset, when the admin reads offsets (Kafka's does);
    empty otherwise: a change feed's `earliest_offsets` always has them."""
    latest: dict[int, int] = field(default_factory=dict)
    """Per partition, the head, under the same condition as ``earliest``."""
    config: dict[str, str] = field(default_factory=dict)
    """The topic's settings that differ from the log's defaults, plus retention; empty for a
    log whose topics have no settings (the embedded log)."""


@dataclass(frozen=True, slots=True)
class CreatedTopic:
    """What `TopicAdmin.create_topic` did, so a caller can say it instead of assuming."""

    name: str
    partitions: int
    """Partitions the topic has now."""
    existed: bool = False
    """The topic was there before the call."""
    previous: int | None = None
    """Its partitions before the call, when it existed."""

    @property
    def grown(self) -> bool:
        return self.previous is not None and self.previous < self.partitions

    def describe(self) -> str:
        """One line for people: created, grown, or already there with its partitions."""
        if not self.existed:
            return f"created {self.name} ({self.partitions} partitions)"
        if self.grown:
            return f"topic {self.name} existed with {self.previous} partitions; grown to {self.partitions}"
        return f"topic {self.name} exists ({self.partitions} partitions)"


class Publisher(ABC):
    """Puts stubs into topics. Messages are keyed by document id (same id, same partition)."""

    @abstractmethod
    def publish(self, topic: str, meta: ChangeMeta) -> None:
        """Publish one stub; on return it is durable (synchronous publishers)."""

    def publish_many(self, items: Iterable[tuple[str, ChangeMeta]]) -> None:
        """Publish a batch of (topic, stub); backends override with one round trip."""
        for topic, meta in items:
            self.publish(topic, meta)

    def flush(self, timeout: float | None = None) -> None:  # noqa: B027 - optional hook
        """Wait until every stub published so far is durable."""

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_partition_of = attrgetter("topic", "partition")
_offset_of = attrgetter("offset")

OffsetResetHandler = Callable[[TopicPartition, int, int], None]
"""``handler(partition, needed, earliest)``: a position was removed by retention and the feed
reads on from ``earliest``."""


def next_offsets_of(changes: Iterable[Change]) -> dict[TopicPartition, int]:
    """Where a reader stands after ``changes``: per partition, the offset after the last one
    (offsets rise within a partition, so the last seen is the highest)."""
    changes = changes if isinstance(changes, list) else list(changes)
    last = dict(zip(map(_partition_of, changes), map(_offset_of, changes), strict=True))
    return {TopicPartition(topic, part): offset + 1 for (topic, part), offset in last.items()}


class ChangeList(list[Change]):
    """A list of changes handed over by a feed, with where the feed stands after them: the
    next offset to read in each partition the list touches (or, for a feed that knows its
    consumer's position, every partition it reads). A pillow that takes the whole list
    writes that as its checkpoint. Worked out from the changes when the feed gives none.

    ``caught_up`` says the read that produced the list reached the end of what the log held
    (it returned less than asked, or every partition is at its head): a pillow then
    processes what it has at once instead of waiting to fill a batch, which keeps latency
    low at low load without costing throughput under a backlog."""

    __slots__ = ("next_offsets", "caught_up")

    def __init__(
        self,
        changes: Iterable[Change] = (),
        next_offsets: Mapping[TopicPartition, int] | None = None,
        caught_up: bool = False,
    ) -> None:
        super().__init__(changes)
        self.caught_up = caught_up
        self.next_offsets: Mapping[TopicPartition, int] = (
            next_offsets if next_offsets is not None else next_offsets_of(self)
        )


class RebalanceListener(Protocol):
    """Implemented by pillows for feeds whose partitions move between processes."""

    def on_assign(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        """Partitions gained: return the offsets to start from (our checkpoints)."""
        ...

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions about to be lost: finish and checkpoint the work in hand."""
        ...


class ChangeFeed(ABC):
    """Reads changes from topics, from given positions.

    This class is the whole contract between a feed and a pillow: the pillow uses nothing
    that is not declared here, and every optional capability has a default that is correct
    for a simple feed (one reader, positions given by the caller, no broker-side state).
    """

    topics: tuple[str, ...]

    _offset_reset_handler: OffsetResetHandler | None = None

    @abstractmethod
    def topic_partitions(self) -> list[TopicPartition]:
        """All partitions of this feed's topics, sorted."""

    @abstractmethod
    def iter_changes(
        self, since: Mapping[TopicPartition, int], forever: bool = False
    ) -> Iterator[Change | None]:
        """Changes of the partitions in ``since``, each from its offset.

        With ``forever`` the iterator never ends: when no change arrives for ``idle_timeout``
        it yields ``None`` (the idle sentinel) so a pillow can flush a partial batch.
        Without it, iteration ends once every partition is read up to its head.
        """

    def iter_change_batches(
        self, since: Mapping[TopicPartition, int], forever: bool = False
    ) -> Iterator[ChangeList | None]:
        """`iter_changes` as lists, ``None`` when idle; what pillows read.

        Every list says where the feed stands after it (`ChangeList.next_offsets`). A feed
        that reads the log in blocks hands over one list per read, which keeps per-change
        bookkeeping out of the pillow; this default hands over one list per change.
        """
        for change in self.iter_changes(since, forever):
            if change is None:
                yield None
            else:
                yield ChangeList(
                    (change,),
                    {TopicPartition(change.topic, change.partition): change.offset + 1},
                )

    @abstractmethod
    def latest_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset the next published change will get (the head)."""

    @abstractmethod
    def earliest_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the first offset still in the log."""

    @property
    def uses_consumer_group(self) -> bool:
        """True when the feed, not the caller, decides which partitions it reads (a Kafka
        consumer group). The caller then passes an empty ``since``, and learns of partitions
        gained and lost through `set_rebalance_listener`. False by default: the caller
        assigns partitions (static striding)."""
        return False

    def set_rebalance_listener(self, listener: RebalanceListener | None) -> None:  # noqa: B027
        """Who decides starting offsets and finishes work in hand when partitions move.
        Only called when `uses_consumer_group` is true; a feed without groups never
        rebalances, so the default ignores it."""

    def leave_group(self) -> None:  # noqa: B027 - optional hook
        """Called by a reader that stopped reading (it returned, was stopped, or failed): a
        feed in a consumer group leaves it now, so the group hands its partitions to the
        other members at once instead of after the session timeout (on Kafka a graceful
        restart would otherwise stall them). The feed can be read again afterwards: it
        joins again. The default, for a feed without a group, does nothing."""

    def set_offset_reset_handler(self, handler: OffsetResetHandler | None) -> None:
        """Who to tell when a position was removed by retention and the feed reads on from
        the earliest offset still in the log (the caller records the jump in its checkpoint
        history). A feed in strict mode raises `OffsetOutOfRangeError` instead."""
        self._offset_reset_handler = handler

    def _offset_reset(self, tp: TopicPartition, needed: int, earliest: int) -> None:
        """For implementations: report a jump past retention to the handler, if any."""
        if self._offset_reset_handler is not None:
            self._offset_reset_handler(tp, needed, earliest)

    def offsets_for_time(self, when: float) -> dict[TopicPartition, int]:
        """Per partition, the first offset published at or after ``when`` (Unix seconds), or
        the head when nothing was: where a search by time starts without reading the log
        from its start (Kafka's ``offsets_for_times``). The default, the earliest offsets,
        is correct for any feed, only slower: callers still filter by publish time."""
        return self.earliest_offsets()

    def commit_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:  # noqa: B027
        """Called after the caller durably wrote ``offsets`` as its checkpoint: a feed may
        mirror them to the broker for standard lag tools. Our checkpoint store stays the
        source of truth, so the default does nothing."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class BatchedChangeFeed(ChangeFeed):
    """A feed that reads the log in lists: implement `iter_change_batches`; `iter_changes`
    is the same changes one by one."""

    @abstractmethod
    def iter_change_batches(
        self, since: Mapping[TopicPartition, int], forever: bool = False
    ) -> Iterator[ChangeList | None]:
        """One `ChangeList` per read from the log, ``None`` when idle."""

    def iter_changes(
        self, since: Mapping[TopicPartition, int], forever: bool = False
    ) -> Iterator[Change | None]:
        for changes in self.iter_change_batches(since, forever):
            if changes is None:
                yield None
            else:
                yield from changes


class TopicAdmin(ABC):
    @abstractmethod
    def create_topic(self, name: str, partitions: int = 1) -> CreatedTopic:
        """Create a topic (an existing one with fewer partitions is grown, one with as many
        or more is left alone); says which happened. ``partitions`` is checked with
        `partition_count`."""

    @abstractmethod
    def list_topics(self) -> list[TopicInfo]: ...

    @abstractmethod
    def add_partitions(self, name: str, total: int) -> None:
        """Grow a topic to ``total`` partitions."""

    def describe_topic(self, name: str) -> TopicDescription:
        """A topic's partitions and settings (``changefeed topics describe``);
        `UnknownTopicError` when the log has no such topic. The default, right for a log
        whose topics have no settings: the partition count `list_topics` gives, no offsets,
        no settings."""
        for info in self.list_topics():
            if info.name == name:
                return TopicDescription(name, info.partitions)
        raise UnknownTopicError(f"unknown topic {name!r}")


class FeedOptionError(ValueError):
    """A feed option that no log has, or that this log does not have; one line."""


@dataclass(frozen=True, slots=True)
class FeedOptions:
    """How a change feed reads: one typed value from ``App.constructed_pillow``'s
    ``feed_options`` (a dict for users) to the backend (`Backend.open_feed`). Every log
    reads the first three; the others belong to one log, None meaning that log's default,
    and a log refuses one it does not have."""

    client_id: str = "changefeed"
    """Names the reader to the log (a pillow's name)."""
    idle_timeout: float = 1.0
    """Seconds without a change after which the feed yields None, so a partial batch
    flushes."""
    strict: bool = False
    """Raise `OffsetOutOfRangeError` when retention removed a position, instead of
    jumping to the earliest offset."""
    poll_interval: float | None = None
    """Embedded log: seconds between polls of an idle log."""
    read_batches: int | None = None
    """Embedded log: batches read ahead per query."""
    group_id: str | None = None
    """Kafka: a consumer group assigns the partitions (the feed's, not the caller's)."""
    commit_offsets: bool | None = None
    """Kafka: mirror checkpoints to the group's committed offsets."""
    batch_rows: int | None = None
    """Kafka: the most messages one poll returns."""
    consumer_config: Mapping[str, Any] | None = None
    """Kafka: librdkafka settings of the consumer."""

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> FeedOptions:
        """Options given as a dict (``feed_options={"group_id": ...}``); an unknown key is
        a `FeedOptionError` naming the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = [key for key in options if key not in known]
        if unknown:
            raise FeedOptionError(
                f"unknown feed option {', '.join(map(repr, unknown))} (known: {', '.join(known)})"
            )
        return cls(**options)

    def keywords(self) -> dict[str, Any]:
        """The options as `Backend.change_feed` takes them: the reader's name and idle
        timeout, and every other one that is set (not its default)."""
        out: dict[str, Any] = {"client_id": self.client_id, "idle_timeout": self.idle_timeout}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in out and value != f.default:
                out[f.name] = value
        return out


class Backend(ABC):
    """One log: makes publishers, change feeds and gives topic admin."""

    url: str

    @abstractmethod
    def publisher(self, *, wire: WireFormat | str | None = None) -> Publisher:
        """A publisher writing the ``wire`` format (``changefeed`` or ``hq``); None: the
        backend's own (its URL's ``wire=`` option, else ``changefeed``)."""

    @abstractmethod
    def change_feed(
        self, topics: Sequence[str], *, client_id: str = "changefeed", idle_timeout: float = 1.0
    ) -> ChangeFeed: ...

    def open_feed(self, topics: Sequence[str], options: FeedOptions) -> ChangeFeed:
        """A feed on ``topics`` read as ``options`` say: `change_feed` with the options
        set as its keywords. One this log's `change_feed` does not take (a Kafka consumer
        group on the embedded log) is a `FeedOptionError`, not a TypeError."""
        keywords = options.keywords()
        taken = inspect.signature(self.change_feed).parameters.values()
        names = {p.name for p in taken if p.kind is not p.VAR_KEYWORD}
        takes_any = len(names) < len(taken)
        missing = [key for key in keywords if key not in names and not takes_any]
        if missing:
            raise FeedOptionError(
                f"feed option {', '.join(map(repr, missing))}: not an option of this log "
                f"({type(self).__name__})"
            )
        return self.change_feed(topics, **keywords)

    @abstractmethod
    def admin(self) -> TopicAdmin: ...

    def partition_for(self, key: str, partitions: int) -> int | None:
        """The partition this log's publishers put a stub keyed ``key`` in, in a topic of
        ``partitions`` partitions; None when it cannot say (a Kafka URL naming another
        partitioner), and a search by key then reads every partition. Default:
        `key_partition`, the rule of both logs."""
        return key_partition(key, partitions)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
