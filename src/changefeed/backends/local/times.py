"""Finding offsets by publish time on the embedded log, without reading it from the start.

Every stored batch carries the time it was written (``batches.ts``), and a partition's
batches are written in offset order, so their times rise with ``base_offset`` (up to clock
steps backwards). A binary search over the primary key ``(topic_id, partition,
base_offset)`` finds the first batch written at or after a time in about log2(batches)
indexed lookups: no extra index to maintain on every append.
"""

from __future__ import annotations

import sqlite3

_NEXT_BATCH = (
    "SELECT base_offset, count, ts FROM batches WHERE topic_id=? AND partition=? "
    "AND base_offset >= ? ORDER BY base_offset LIMIT 1"
)


def first_offset_at(
    conn: sqlite3.Connection, topic_id: int, partition: int, when: float, head: int
) -> int:
    """The base offset of the first batch of the partition written at or after ``when``;
    ``head`` when every batch is older (or the partition is empty)."""
    lo, hi = 0, head  # offsets: the answer's batch starts in [lo, hi]
    found = head
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute(_NEXT_BATCH, (topic_id, partition, mid)).fetchone()
        if row is None:  # no batch starts at or after mid
            hi = mid
            continue
        base, count, ts = int(row[0]), int(row[1]), float(row[2])
        if ts >= when:
            found = min(found, base)
            hi = mid
        else:
            lo = base + count
    return found
