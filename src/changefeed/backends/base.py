"""The log interfaces every backend implements: publisher, change feed and topic admin.

The embedded SQLite log and Kafka implement exactly these and pass the same conformance
suite (tests/backends/conformance.py); nothing above this layer knows which one it runs on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from changefeed.change import Change, ChangeMeta, TopicPartition


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


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    partitions: int


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


class ChangeFeed(ABC):
    """Reads changes from topics, from given positions.

    A feed may also offer ``iter_change_batches(since, forever)`` (see `BatchedChangeFeed`):
    the same changes as lists, one per read from the log. Pillows prefer it when present,
    which saves per-change bookkeeping; both built-in backends have it.
    """

    topics: tuple[str, ...]

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

    @abstractmethod
    def latest_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset the next published change will get (the head)."""

    @abstractmethod
    def earliest_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the first offset still in the log."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class ChangeList(list[Change]):
    """A feed's list of changes that also says where the feed stands after them: the next
    offset to read in each of its partitions. A pillow that takes the whole list writes
    that as its checkpoint instead of looking at every change for it."""

    __slots__ = ("next_offsets",)

    def __init__(
        self,
        changes: Iterable[Change] = (),
        next_offsets: Mapping[TopicPartition, int] | None = None,
    ) -> None:
        super().__init__(changes)
        self.next_offsets = next_offsets


class BatchedChangeFeed(ChangeFeed):
    """A feed that reads the log in lists: implement `iter_change_batches`; `iter_changes`
    is the same changes one by one."""

    @abstractmethod
    def iter_change_batches(
        self, since: Mapping[TopicPartition, int], forever: bool = False
    ) -> Iterator[list[Change] | None]:
        """`iter_changes` as lists (one per read from the log), ``None`` when idle."""

    def iter_changes(
        self, since: Mapping[TopicPartition, int], forever: bool = False
    ) -> Iterator[Change | None]:
        for changes in self.iter_change_batches(since, forever):
            if changes is None:
                yield None
            else:
                yield from changes


class RebalanceListener(Protocol):
    """Implemented by pillows for feeds whose partitions move between processes."""

    def on_assign(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        """Partitions gained: return the offsets to start from (our checkpoints)."""
        ...

    def on_revoke(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions about to be lost: finish and checkpoint the work in hand."""
        ...


class TopicAdmin(ABC):
    @abstractmethod
    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create a topic (no-op if it exists with at least that many partitions)."""

    @abstractmethod
    def list_topics(self) -> list[TopicInfo]: ...

    @abstractmethod
    def add_partitions(self, name: str, total: int) -> None:
        """Grow a topic to ``total`` partitions."""


class Backend(ABC):
    """One log: makes publishers, change feeds and gives topic admin."""

    url: str

    @abstractmethod
    def publisher(self) -> Publisher: ...

    @abstractmethod
    def change_feed(
        self, topics: Sequence[str], *, client_id: str = "changefeed", idle_timeout: float = 1.0
    ) -> ChangeFeed: ...

    @abstractmethod
    def admin(self) -> TopicAdmin: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
