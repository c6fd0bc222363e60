"""The batch in hand: what a pillow has read since its last checkpoint, and when to flush it.

`BatchBuffer` owns the changes read, the checkpoint they lead to, their count, when the
batch was started and the retention jumps seen while it was read; `BatchPolicy` says when it
is due (full, ``max_wait`` passed, or the read caught up with the log). The pillow's
sequential run and its pipelined reader both fill one buffer and `cut` it into a `Cut`,
the unit that is fetched, applied and checkpointed. The buffer works per list the feed
hands over, never per change: that keeps batching off the hot path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from changefeed.backends.base import ChangeList, next_offsets_of
from changefeed.batch import PreparedBatch, latest_per_document
from changefeed.change import Change, TopicPartition
from changefeed.clock import Clock
from changefeed.lifecycle import StopFlag

__all__ = ["DEFAULT_BATCHING", "BatchBuffer", "BatchPolicy", "Cut", "OffsetReset"]

OffsetReset = tuple[TopicPartition, int, int]
"""A retention jump: (partition, the offset needed, the earliest the log still holds)."""


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """When the batch in hand is due.

    Batching is adaptive: while the feed has a backlog, batches fill up to ``batch_size``;
    once a read reaches the end of the log, what is in hand is processed at once, so a
    change at low load waits milliseconds, not ``max_wait`` (which stays an upper bound).
    ``adaptive=False`` waits for a full batch, ``max_wait`` or an idle feed (for comparison).
    """

    batch_size: int = 1000
    max_wait: float = 1.0
    adaptive: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.max_wait < 0:
            raise ValueError("max_wait must be at least 0")


DEFAULT_BATCHING = BatchPolicy()


@dataclass(slots=True)
class Cut:
    """A batch cut from the feed: its changes (deduplicated), how many were read, and the
    checkpoint once it is done; pipelined, also its fetch and the retention jumps the feed
    made while it was read (done by the main thread, in order)."""

    changes: list[Change]
    seen: int
    offsets: dict[TopicPartition, int]
    prepared: PreparedBatch | None = None
    resets: list[OffsetReset] = field(default_factory=list)
    done: threading.Event | None = None
    """Set once applied, when the reader waits for it (its fetch failed: see
    `Pillow._hand_over`)."""


class BatchBuffer:
    """The batch in hand and its flush policy. Not thread-safe: one thread fills it (the
    pillow's, or its pipelined reader)."""

    __slots__ = ("policy", "clock", "changes", "offsets", "count", "started", "resets")

    def __init__(self, policy: BatchPolicy, clock: Clock) -> None:
        self.policy = policy
        self.clock = clock
        self.changes: list[Change] = []
        """Read since the last checkpoint, in log order (deduplicated by `cut`)."""
        self.offsets: dict[TopicPartition, int] = {}
        """The checkpoint once the batch is done."""
        self.count = 0
        """Changes read into this batch (before dedupe)."""
        self.started = 0.0
        """When its first change was added (`Clock.monotonic`)."""
        self.resets: list[OffsetReset] = []
        """Retention jumps seen by a pipelined reader, for the main thread to record."""

    def add(
        self, changes: ChangeList, flush: Callable[[], bool], stop: StopFlag
    ) -> tuple[int, bool]:
        """Add a feed's list, calling ``flush`` whenever the batch is full, ``max_wait``
        passed, the feed caught up with the log, or ``stop`` is set. Returns (changes
        added, whether to stop reading: ``flush`` said False, or stopping); what is not
        added is replayed later. Dedupe waits for `cut`, once per batch."""
        policy = self.policy
        batch_size = policy.batch_size
        now = self.clock.monotonic
        n = len(changes)
        caught_up = policy.adaptive and changes.caught_up
        if not n:
            # A feed may tell of a catch-up without changes (Kafka's end-of-partition events
            # can come after the last messages): process what is in hand now.
            if caught_up and self.count and (not flush() or stop.is_set()):
                return 0, True
            return 0, False
        i = 0
        while i < n:
            # Re-read per slice: a flush (here, or on a rebalance inside the feed) starts a
            # new batch.
            batch = self.changes
            seen = self.count
            if not seen:
                self.started = now()
            room = batch_size - seen
            part = changes if i == 0 and room >= n else changes[i : i + room]
            batch += part
            taken = len(part)
            i += taken
            # Where the checkpoint goes after this part: where the feed says it stands once
            # the whole list is in, else worked out from the changes of the part.
            self.offsets.update(changes.next_offsets if i == n else next_offsets_of(part))
            self.count = seen = seen + taken
            if (
                seen < batch_size
                and not (i == n and caught_up)
                and now() - self.started < policy.max_wait
                and not stop.is_set()
            ):
                continue
            if not flush() or stop.is_set():
                return i, True
        return n, False

    def cut(self) -> Cut:
        """Take the batch in hand (deduplicated, with the retention jumps seen while it was
        read) and start a new one."""
        cut = Cut(latest_per_document(self.changes), self.count, self.offsets, resets=self.resets)
        self.changes = []
        self.offsets = {}
        self.count = 0
        self.resets = []
        return cut

    def clear(self) -> None:
        """Drop the changes in hand (a stopped run: no checkpoint covers them, so they are
        read again). Retention jumps are kept: they are written even so."""
        self.changes = []
        self.offsets = {}
        self.count = 0

    def take_resets(self) -> list[OffsetReset]:
        """The retention jumps not yet cut with a batch; forgotten here."""
        resets, self.resets = self.resets, []
        return resets
