"""`ScriptedFeed`: a change feed that plays a script, for tests that need exact control over
when changes, lists of changes, idle sentinels, pauses and feed errors reach a pillow."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from changefeed.backends.base import ChangeFeed, ChangeList
from changefeed.change import Change, ChangeMeta, TopicPartition
from changefeed.testing.clock import FakeClock

TOPIC = "events"


@dataclass(frozen=True)
class OffsetReset:
    """A script item: the feed reports a jump past retention (it needed ``needed`` of the
    first partition, the log starts at ``earliest``), as a real feed does while reading."""

    needed: int
    earliest: int


ScriptItem = Change | Sequence[Change] | None | float | BaseException | OffsetReset
"""A change; a list of changes handed over together (a `ChangeList` as it is, when none of
it is before ``since``); ``None``, an idle sentinel; a float, a
pause in seconds (it advances the feed's clock, so nobody sleeps); an exception, raised; an
`OffsetReset`."""


def stub_change(offset: int, doc_id: str | None = None, partition: int = 0) -> Change:
    """A change of `TOPIC` for a ``memory``/``docs`` document (``d<offset>`` by default)."""
    meta = ChangeMeta(doc_id or f"d{offset}", "memory", "docs")
    return Change.decoded(TOPIC, partition, offset, meta)


class ScriptedFeed(ChangeFeed):
    """Plays ``script`` from ``since`` on (changes before a partition's ``since`` are left
    out, as a real feed would), then ends. ``batched=False`` offers only `iter_changes` and
    the contract's one list per change; ``lists_taken`` counts the script items a batched
    read handed over. ``grouped`` makes it claim a consumer group."""

    def __init__(
        self,
        script: Sequence[ScriptItem],
        *,
        partitions: int = 1,
        batched: bool = True,
        grouped: bool = False,
        clock: FakeClock | None = None,
    ) -> None:
        self.topics = (TOPIC,)
        self.script = script
        self.partitions = partitions
        self.batched = batched
        self.grouped = grouped
        self.clock = clock or FakeClock()
        self.lists_taken = 0

    @property
    def uses_consumer_group(self) -> bool:
        return self.grouped

    def topic_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, p) for p in range(self.partitions)]

    def iter_change_batches(
        self, since: Mapping[TopicPartition, int], forever: bool = False
    ) -> Iterator[ChangeList | None]:
        if not self.batched:
            yield from super().iter_change_batches(since, forever)
            return
        for item in self.script:
            self.lists_taken += 1
            changes = self._play(item, since)
            if changes is None:
                yield None
            elif isinstance(item, ChangeList) and len(changes) == len(item):
                yield item  # as given: where the feed stands, caught up, even empty
            elif changes:
                yield ChangeList(changes)

    def iter_changes(
        self, since: Mapping[TopicPartition, int], forever: bool = False
    ) -> Iterator[Change | None]:
        for item in self.script:
            changes = self._play(item, since)
            if changes is None:
                yield None
            else:
                yield from changes

    def _play(self, item: ScriptItem, since: Mapping[TopicPartition, int]) -> list[Change] | None:
        """The changes `item` hands over from ``since`` on (``None`` for an idle sentinel);
        a pause, an error or a reset is played and hands over nothing."""
        if item is None:
            return None
        if isinstance(item, float):
            self.clock.advance(item)
        elif isinstance(item, BaseException):
            raise item
        elif isinstance(item, OffsetReset):
            self._offset_reset(TopicPartition(TOPIC, 0), item.needed, item.earliest)
        else:
            changes = [item] if isinstance(item, Change) else item
            return [c for c in changes if c.offset >= since.get(c.topic_partition, 0)]
        return []

    def latest_offsets(self) -> dict[TopicPartition, int]:
        return {}

    def earliest_offsets(self) -> dict[TopicPartition, int]:
        return {}
