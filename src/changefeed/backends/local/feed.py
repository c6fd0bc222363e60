"""`SQLiteChangeFeed`: reads the embedded log from given positions (static striding; the
embedded log has no consumer groups), one `ChangeList` per stored batch.

The reading loop in named steps: a round reads every partition once (`_round`, each
partition through `_read_from`, which also steps over offsets removed by retention), its
batches become lists (`_lists_of`), and an idle feed waits for another connection's commit
(`_idle`), yielding the sentinel regularly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass

from changefeed.backends.base import BatchedChangeFeed, ChangeList, OffsetOutOfRangeError
from changefeed.backends.local.connection import Connector
from changefeed.backends.local.records import decode_batch
from changefeed.backends.local.times import first_offset_at
from changefeed.change import TopicPartition
from changefeed.identifiers import topic_name

StoredBatch = tuple[int, int, bytes]
"""A stored batch as read: (base offset, record count, payload)."""


@dataclass(slots=True)
class _PartitionRead:
    """The batches a round read from one partition, the first holding offset ``pos``."""

    tp: TopicPartition
    pos: int
    batches: list[StoredBatch]


class SQLiteChangeFeed(BatchedChangeFeed):
    """Reads partitions round-robin in chunks; wakes on commits by other processes.

    ``PRAGMA data_version`` changes whenever another connection commits, so an idle feed
    polls that (cheap) instead of re-running queries on every partition.
    """

    def __init__(
        self,
        log: Connector,
        topics: Sequence[str],
        *,
        idle_timeout: float = 1.0,
        strict: bool = False,
        poll_interval: float = 0.01,
        read_batches: int = 4,
    ) -> None:
        if not topics:
            raise ValueError("a change feed needs at least one topic")
        self.log = log
        self.topics = tuple(topic_name(t) for t in topics)
        self.idle_timeout = idle_timeout
        self.strict = strict
        self.poll_interval = poll_interval
        self.read_batches = read_batches
        self._conn = log.connect()
        self._lock = threading.Lock()

    def _topic_ids(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for topic in self.topics:
            row = self._conn.execute(
                "SELECT id, partitions FROM topics WHERE name=?", (topic,)
            ).fetchone()
            if row is not None:
                out[topic] = (int(row[0]), int(row[1]))
        return out

    def topic_partitions(self) -> list[TopicPartition]:
        with self._lock:
            ids = self._topic_ids()
        return sorted(TopicPartition(t, p) for t, (_, n) in ids.items() for p in range(n))

    def latest_offsets(self) -> dict[TopicPartition, int]:
        with self._lock:
            ids = self._topic_ids()
            out: dict[TopicPartition, int] = {}
            for topic, (tid, _) in ids.items():
                for part, head in self._conn.execute(
                    "SELECT partition, next_offset FROM heads WHERE topic_id=?", (tid,)
                ):
                    out[TopicPartition(topic, part)] = head
        return out

    def earliest_offsets(self) -> dict[TopicPartition, int]:
        heads = self.latest_offsets()
        with self._lock:
            ids = self._topic_ids()
            out: dict[TopicPartition, int] = {}
            for tp, head in heads.items():
                row = self._conn.execute(
                    "SELECT MIN(base_offset) FROM batches WHERE topic_id=? AND partition=?",
                    (ids[tp.topic][0], tp.partition),
                ).fetchone()
                out[tp] = head if row is None or row[0] is None else int(row[0])
        return out

    def offsets_for_time(self, when: float) -> dict[TopicPartition, int]:
        """A binary search of the stored batches by publish time (`times.first_offset_at`)."""
        heads = self.latest_offsets()
        with self._lock:
            ids = self._topic_ids()
            return {
                tp: first_offset_at(self._conn, ids[tp.topic][0], tp.partition, when, head)
                for tp, head in heads.items()
            }

    def _out_of_range(self, tp: TopicPartition, needed: int, earliest: int) -> int:
        """Where to read on when ``needed`` was removed by retention (strict: raise)."""
        if self.strict:
            raise OffsetOutOfRangeError(tp, needed, earliest)
        self._offset_reset(tp, needed, earliest)
        return earliest

    def _read(self, tid: int, partition: int, pos: int) -> tuple[list[StoredBatch], int]:
        """Batches holding offsets from ``pos`` on (the first may start before it) and the
        head, read in one snapshot: a head read separately could run ahead of the batches
        and make a fresh append look like a gap."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                rows = conn.execute(
                    "SELECT base_offset, count, payload FROM batches "
                    "WHERE topic_id=?1 AND partition=?2 AND base_offset >= ("
                    "  SELECT COALESCE(MAX(base_offset), 0) FROM batches"
                    "  WHERE topic_id=?1 AND partition=?2 AND base_offset <= ?3"
                    ") ORDER BY base_offset LIMIT ?4",
                    (tid, partition, pos, self.read_batches),
                ).fetchall()
                head = conn.execute(
                    "SELECT next_offset FROM heads WHERE topic_id=? AND partition=?",
                    (tid, partition),
                ).fetchone()
            finally:
                conn.execute("COMMIT")
        return rows, int(head[0]) if head else 0

    def iter_change_batches(
        self, since: Mapping[TopicPartition, int], forever: bool = False
    ) -> Iterator[ChangeList | None]:
        """One list per stored record batch, each ending where that batch ends.

        A round reads every partition before handing anything over, so the last list of a
        round can say whether the round reached every head (`ChangeList.caught_up`): a
        pillow then processes at once instead of waiting for a full batch."""
        positions = dict(since)
        last_activity = time.monotonic()
        ids: dict[str, tuple[int, int]] = {}
        while True:
            if len(ids) < len({tp.topic for tp in positions}):
                with self._lock:
                    ids = self._topic_ids()
            seen_version = self._data_version()
            reads, at_head = self._round(positions, ids)
            if reads:
                yield from self._lists_of(reads, at_head)
                last_activity = time.monotonic()
                continue
            if not forever:
                return
            last_activity = yield from self._idle(seen_version, last_activity)
            ids = {}

    def _data_version(self) -> int:
        """Changes whenever another connection commits (``PRAGMA data_version``)."""
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def _round(
        self, positions: dict[TopicPartition, int], ids: Mapping[str, tuple[int, int]]
    ) -> tuple[list[_PartitionRead], bool]:
        """Read every partition once from its position, moving ``positions`` past what was
        read; returns the reads and whether every partition was read to its head."""
        reads: list[_PartitionRead] = []
        at_head = True
        for tp in sorted(positions):
            info = ids.get(tp.topic)
            if info is None:
                continue
            read, head = self._read_from(info[0], tp, positions)
            if read is None:
                continue
            reads.append(read)
            end = read.batches[-1][0] + read.batches[-1][1]
            positions[tp] = end
            if end < head:
                at_head = False
        return reads, at_head

    def _read_from(
        self, tid: int, tp: TopicPartition, positions: dict[TopicPartition, int]
    ) -> tuple[_PartitionRead | None, int]:
        """The batches of one partition from its position, and its head. A position in
        front of the first stored batch was removed by retention: reading goes on from
        there (`_out_of_range`), and ``positions`` says so."""
        pos = positions[tp]
        batches, head = self._read(tid, tp.partition, pos)
        # Skip batches wholly before pos (the one holding pos-1 when pos is a boundary).
        while batches and batches[0][0] + batches[0][1] <= pos:
            batches.pop(0)
        if not batches:
            if pos < head:
                # Everything from pos to the head is gone; read on from the head.
                positions[tp] = self._out_of_range(tp, pos, head)
            return None, head
        if batches[0][0] > pos:
            pos = positions[tp] = self._out_of_range(tp, pos, batches[0][0])
        return _PartitionRead(tp, pos, batches), head

    @staticmethod
    def _lists_of(reads: list[_PartitionRead], at_head: bool) -> Iterator[ChangeList]:
        """One list per batch; the round's last list says whether it reached every head."""
        last = len(reads) - 1
        for i, read in enumerate(reads):
            tp, pos = read.tp, read.pos
            topic, part = tp.topic, tp.partition
            final = len(read.batches) - 1
            for j, (base, count, payload) in enumerate(read.batches):
                skip = pos - base if pos > base else 0
                changes = decode_batch(topic, part, base, payload, skip, {tp: base + count})
                changes.caught_up = at_head and i == last and j == final
                yield changes

    def _idle(self, seen_version: int, last_activity: float) -> Generator[None, None, float]:
        """Wait for another connection to commit (checked before each sleep, so a commit
        during the round just read is seen at once), or yield the sentinel once the feed was
        idle for ``idle_timeout``. Returns the new time of the last activity."""
        while self._data_version() == seen_version:
            now = time.monotonic()
            if now - last_activity >= self.idle_timeout:
                yield None
                return now
            time.sleep(self.poll_interval)
        return last_activity

    def close(self) -> None:
        with self._lock:
            self._conn.close()
